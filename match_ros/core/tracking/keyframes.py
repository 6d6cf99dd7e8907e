"""Keyframe selection: when does the current frame become the new reference?"""
from __future__ import annotations

from dataclasses import dataclass

default_keyframe_conf = {
    "min_tracked_ratio": 0.35,   # new keyframe when inliers / keyframe keypoints falls below this
    "min_inliers": 40,           # ... or when inliers fall below this count
    "max_parallax_deg": 8.0,     # ... or when the median parallax exceeds this [deg] (0 disables)
    "max_interval_s": 0.0,       # ... or when the keyframe is older than this [s] (0 disables)
    "min_interval_s": 0.0,       # never switch sooner than this after the last keyframe [s]
}


@dataclass
class KeyframeDecision:
    new_keyframe: bool
    reason: str


class KeyframeSelector:
    """Decides from tracking statistics whether to start a new keyframe.

    The checks are cheap and use only what matching already produced, so the
    keyframe's own features are extracted once and reused for every frame.
    """

    def __init__(self, conf: dict | None = None):
        unknown = set(conf or {}) - set(default_keyframe_conf)
        if unknown:
            raise ValueError(f"unknown keyframe configuration keys {sorted(unknown)}")
        self.conf = {**default_keyframe_conf, **(conf or {})}
        if not 0.0 <= self.conf["min_tracked_ratio"] <= 1.0:
            raise ValueError("min_tracked_ratio must be in [0, 1]")

    def decide(self, num_inliers: int, num_keyframe_keypoints: int, parallax_deg: float,
               age_s: float) -> KeyframeDecision:
        c = self.conf
        if age_s < c["min_interval_s"]:
            return KeyframeDecision(False, "min_interval")
        ratio = num_inliers / max(num_keyframe_keypoints, 1)
        if ratio < c["min_tracked_ratio"]:
            return KeyframeDecision(True, f"tracked ratio {ratio:.2f} < {c['min_tracked_ratio']:.2f}")
        if num_inliers < c["min_inliers"]:
            return KeyframeDecision(True, f"{num_inliers} inliers < {c['min_inliers']}")
        if c["max_parallax_deg"] > 0 and parallax_deg > c["max_parallax_deg"]:
            return KeyframeDecision(True, f"parallax {parallax_deg:.1f} deg > {c['max_parallax_deg']}")
        if c["max_interval_s"] > 0 and age_s > c["max_interval_s"]:
            return KeyframeDecision(True, f"age {age_s:.1f} s > {c['max_interval_s']}")
        return KeyframeDecision(False, "tracking")
