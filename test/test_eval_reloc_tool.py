"""match_ros_eval_reloc as a user relies on it (issue #21): a map is reused only for the same bag content and
options, every output is named by the options that change it, every localizer setting can be given."""
import argparse

import pytest

from match_ros.evaluation.eval_reloc import localizer_options, map_cache_key, output_name
from match_ros.sim import make_sequence
from match_ros.tools.bag_write import write_sequence_bag


def test_map_cache_key_follows_the_bag_content_and_the_build_options(tmp_path, monkeypatch):
    # two datasets named "map" (the usual name) in different folders: before, they shared one cached map
    a, b = tmp_path / "scene_a" / "map", tmp_path / "scene_b" / "map"
    write_sequence_bag(a, make_sequence("room", n_frames=3, seed=0))
    write_sequence_bag(b, make_sequence("office", n_frames=3, seed=0))
    key_a = map_cache_key(a, "orb_teblid", "auto", None)
    assert key_a == map_cache_key(a, "orb_teblid", "auto", None)  # stable
    assert key_a != map_cache_key(b, "orb_teblid", "auto", None)
    assert key_a != map_cache_key(a, "sift", "auto", None)
    assert key_a != map_cache_key(a, "orb_teblid", "/camera/depth", None)
    assert key_a != map_cache_key(a, "orb_teblid", "auto", {"min_overlap": 1.0})
    # a changed default of the backend (a new extraction step) builds the map again
    from match_ros.core.features.classical import OrbTeblidMatcher

    monkeypatch.setitem(OrbTeblidMatcher.default_conf, "clahe_clip", 3.0)
    assert map_cache_key(a, "orb_teblid", "auto", None) != key_a
    monkeypatch.undo()
    # the bag regenerated with other content under the same name
    import shutil

    shutil.rmtree(a)
    write_sequence_bag(a, make_sequence("room", n_frames=3, seed=1))
    assert map_cache_key(a, "orb_teblid", "auto", None) != key_a


def test_output_names_carry_every_option_that_changes_the_figures():
    args = argparse.Namespace(mode="continuous", odometry="none", stride=2)
    name = output_name("room_changed_day_sift_continuous", args, {"top_k": 5, "retrieval": "global",
                                                                  "max_keyframes_matched": 3})
    assert name == ("room_changed_day_sift_continuous_odom-none_stride2_max_keyframes_matched-3_retrieval-global_"
                    "top_k-5")
    plain = argparse.Namespace(mode="global", odometry="drift", stride=1)
    assert output_name("room_changed_day_sift_global", plain, {}) == "room_changed_day_sift_global"
    assert output_name("x", plain, {"top_k": 5}) != output_name("x", plain, {"top_k": 10})


def test_every_localizer_setting_can_be_given_and_is_checked():
    assert localizer_options(["max_keyframes_matched=5", "top_k=3"]) == {"max_keyframes_matched": 5, "top_k": 3}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        localizer_options(["no_such_setting=1"])
    with pytest.raises(ValueError):
        localizer_options(["top_k=0"])  # out of range


def test_bench_integrity_refuses_a_backend_setting_no_backend_has(capsys):
    """``--matcher-conf`` reaches the maps and the queries; a misspelt key is an error, not a silent default."""
    from match_ros.evaluation.bench_integrity import main

    with pytest.raises(SystemExit) as e:
        main(["--seeds", "100", "--matchers", "sift", "--matcher-conf", "clahe_clp=2"])
    assert e.value.code == 2 and "clahe_clp" in capsys.readouterr().err
