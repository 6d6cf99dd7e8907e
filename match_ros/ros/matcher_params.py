"""The matcher parameters every node declares (``matcher_spec``) and the matcher they build, warmed up
(``warm_matcher``)."""
from __future__ import annotations

import numpy as np

from match_ros.core.config import Param


def matcher_spec(matcher_text: str = "Matching backend", keypoints_text: str = "Keypoints extracted per image",
                 cpu_bf16: str = "auto", depth_confidence: float = -1.0) -> dict:
    """The matcher, device, max_keypoints and cpu_bf16 parameters every node declares (read-only: they build the
    model). ``cpu_bf16``: "auto" (measured at start, ``core.precision``) only where its effect on the results was
    measured as nil (keyframe_matcher's two-view poses); "false" for visual odometry (drift 0.24-0.53 -> 0.32-0.58 %)
    and mapping / relocalization (1 wrong pose in 500 changed-day queries against a float32 map, none without).
    ``depth_confidence``: LightGlue's early exit likewise, on only where it was measured (docs/speed.md)."""
    from match_ros.core.device import DEVICE_CHOICES
    from match_ros.core.features.matcher import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS, available_matchers

    return {
        "matcher": Param(DEFAULT_MATCHER, matcher_text, choices=tuple(available_matchers()), read_only=True),
        "device": Param("auto", "Inference device: auto (CUDA when present), cpu, cuda", choices=DEVICE_CHOICES,
                        read_only=True),
        "max_keypoints": Param(DEFAULT_MAX_KEYPOINTS, keypoints_text + " (not for nemf_dense, whose grid is fixed)",
                               min=16, max=16384, read_only=True),
        "torch_threads": Param(0, "Intra-op threads of torch (0: torch's default, one per core); where several "
                               "match_ros nodes share the cores give each its share (two nodes on 2 cores: 1 each)",
                               min=0, max=256, read_only=True),
        "cpu_bf16": Param(cpu_bf16, "XFeat backbone and LighterGlue in bfloat16 on a CPU with native bf16 (AMX / "
                          "AVX512-BF16; no effect elsewhere): auto times float32 against bf16 at start (once per CPU "
                          "model, cached) and uses bf16 only when it is >= 1.1x faster and keeps >= 90 % of the "
                          "matches (1.4-1.5x on a Xeon with AMX, nothing gained on an EPYC); true / false force it",
                          choices=("auto", "true", "false"), read_only=True),
        "depth_confidence": Param(depth_confidence, "xfeat_lighterglue: LightGlue's early exit, matching stops after "
                                  "the first layer at which this share of the points is confident (-1: every layer). "
                                  "0.95 in visual_odometry (RGB-D): matching ~35 % faster, the same drift; off "
                                  "elsewhere (without depth the two-view directions were less accurate)",
                                  min=-1.0, max=1.0, read_only=True),
    }


def warm_matcher(p: dict):
    """The matcher the ``matcher_spec`` parameters name, warmed up (the first real frame is not slower), and the
    features of the warm-up image. Run it in the node's worker thread: ``worker.call(warm_matcher, p)``."""
    import torch

    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf

    from match_ros.core.precision import choose_cpu_bf16

    if p["torch_threads"] > 0:
        torch.set_num_threads(int(p["torch_threads"]))
    device = resolve_device(p["device"])
    conf = shared_conf(p["matcher"], max_keypoints=p["max_keypoints"], depth_confidence=p["depth_confidence"])
    if p["cpu_bf16"] == "auto":
        bf16, precision = choose_cpu_bf16(p["matcher"], conf, device, p["torch_threads"])
    else:
        bf16 = p["cpu_bf16"] == "true"
        precision = f"{'bf16' if bf16 else 'float32'} (cpu_bf16: {p['cpu_bf16']})"
    conf = {**conf, **shared_conf(p["matcher"], cpu_bf16=bf16, cpu_bf16_glue=bf16)}
    matcher = build_matcher(p["matcher"], conf, device)
    matcher.precision = precision  # logged and in /diagnostics
    probe = matcher.extract(np.random.default_rng(0).integers(0, 255, (480, 640), np.uint8))
    matcher.match(probe, probe)
    return matcher, probe
