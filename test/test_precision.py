"""cpu_bf16: auto (core.precision): the decision rule, the agreement measure and the per-CPU cache, without
depending on the CPU the tests run on (the measurement itself is timed by the nodes at start)."""
import json

import numpy as np
import pytest

from match_ros.core import precision
from match_ros.core.config import Param


def test_bf16_only_when_faster_by_a_margin_and_it_keeps_the_matches():
    assert precision.decide({"float32_ms": 100.0, "bf16_ms": 70.0, "agreement": 0.95})[0]  # 1.43x, Xeon with AMX
    use, why = precision.decide({"float32_ms": 50.0, "bf16_ms": 48.0, "agreement": 0.94})  # EPYC: nothing gained
    assert not use and "1.04x" in why and "94 %" in why
    assert not precision.decide({"float32_ms": 100.0, "bf16_ms": 50.0, "agreement": 0.7})[0]  # fast but different


def test_agreement_counts_float32_matches_found_again_within_a_pixel():
    ref = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [9, 9, 30, 30], [1, 2, 3, 4]], float)
    other = np.array([[0.5, 0, 10, 10.8], [5, 5, 21.5, 20], [9, 9, 30, 30]], float)
    assert precision.agreement(ref, other) == 0.5
    assert precision.agreement(ref, np.zeros((0, 4))) == 0.0 and precision.agreement(np.zeros((0, 4)), ref) == 0.0


def test_the_decision_is_measured_once_per_cpu_and_cached(tmp_path, monkeypatch):
    import match_ros.core.device as device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    built = []

    def build(bf16):
        built.append(bf16)
        raise RuntimeError("stop after counting")  # the measurement runs real backends; here: only that it would

    cache = tmp_path / "precision.json"
    with pytest.raises(RuntimeError):
        precision.choose_cpu_bf16("xfeat_lighterglue", {"max_keypoints": 512}, "cpu", 2, cache, build)
    assert built == [False]
    key = "|".join([precision.cpu_model(), __import__("torch").__version__, "xfeat_lighterglue", "512", "2"])
    cache.write_text(json.dumps({key: {"float32_ms": 60.0, "bf16_ms": 40.0, "agreement": 0.95, "matches": 500}}))
    use, why = precision.choose_cpu_bf16("xfeat_lighterglue", {"max_keypoints": 512}, "cpu", 2, cache, build)
    assert use and why.startswith("bf16") and why.endswith("(cached)") and built == [False]
    # no bf16 mode, or no native bf16: float32 without measuring
    assert precision.choose_cpu_bf16("orb_teblid", {}, "cpu", 2, cache, build)[0] is False
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    use, why = precision.choose_cpu_bf16("xfeat_lighterglue", {"max_keypoints": 512}, "cpu", 2, cache, build)
    assert not use and "no native bfloat16" in why and built == [False]


def test_a_yaml_boolean_is_accepted_for_auto_true_false():
    p = Param("auto", "precision", choices=("auto", "true", "false"))
    assert p.bool_text and p.check("cpu_bf16", True) == "true" and p.check("cpu_bf16", "auto") == "auto"
    with pytest.raises(ValueError):
        p.check("cpu_bf16", "maybe")
    assert not Param("a", "mode", choices=("a", "b")).bool_text


def test_a_parameter_file_written_for_the_old_boolean_still_starts_the_node():
    """cpu_bf16 was a boolean: `cpu_bf16: true` in a user's YAML must still declare (as "true")."""
    import rclpy
    from rclpy.parameter import Parameter

    from match_ros.ros.params import declare
    from match_ros.ros.matcher_params import matcher_spec

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        for given, expected in ((True, "true"), (False, "false"), ("auto", "auto")):
            n = rclpy.create_node("precision_test", context=ctx,
                                  parameter_overrides=[Parameter("cpu_bf16", value=given)])
            assert declare(n, matcher_spec())["cpu_bf16"] == expected
            n.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_figures_are_labelled_with_the_commit_they_were_measured_with(tmp_path, monkeypatch):
    """Benchmarks print the checkout's commit (match_ros_bench_integrity, training records): git's HEAD, "+dirty"
    when tracked files differ; "unknown" without a git history (an installed copy)."""
    import subprocess
    from pathlib import Path

    import match_ros.core.device as device

    repo = Path(device.__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    label = device.git_commit()
    if head:
        assert label in (head, head + "+dirty")
    else:
        assert label == "unknown"
    monkeypatch.setattr(device, "__file__", str(tmp_path / "a" / "b" / "device.py"))  # outside any checkout
    assert device.git_commit() == "unknown"
