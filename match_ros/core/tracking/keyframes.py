"""Keyframe selection: when does the current frame become the new reference?

The main rule compares a frame's geometric inliers with the keyframe's *reference support*: the most inliers any
frame has had against this keyframe (the first frames after it, seeing nearly the same view). That is what the
keyframe's own view keeps of its keypoints; the keypoints no frame can ever confirm (no depth, sky, clutter,
points on moving objects, the strict PnP threshold on real images) do not count against it. A ratio to the
keyframe's keypoint count instead fires on every frame of real RGB-D sequences, where PnP keeps about a third of
1024 keypoints even between adjacent frames (ViSP's castel: 23 keyframes in 30 frames, 0.6-0.9 s per frame).
"""
from __future__ import annotations

from dataclasses import dataclass

from match_ros.core.config import Param, defaults, make_conf

keyframe_spec = {
    "min_tracked_share": Param(0.7, "New keyframe when the inliers fall below this share of the keyframe's "
                               "reference support (the most inliers a frame has had against it)", min=0.0, max=1.0),
    "min_tracked_ratio": Param(0.1, "... or when inliers / keyframe keypoints falls below this", min=0.0,
                               max=1.0),
    # frames far apart (dropped frames): the first frame after a keyframe sets the reference support, so the share
    # rule never makes it a keyframe, and the next one may match nothing. Rendered room, orb_teblid, every 3rd
    # frame (6 deg apart): 10 of 14 frames lost without this rule, none with it; castel (still camera) unaffected
    "max_rotation_deg": Param(4.0, "... or when the camera has turned more than this from the keyframe (0 "
                              "disables)", "deg", 0.0, 180.0),
    "min_inliers": Param(40, "... or when the inliers fall below this count", min=0, max=100000),
    "max_parallax_deg": Param(8.0, "... or when the median parallax exceeds this (0 disables)", "deg", 0.0, 180.0),
    "max_interval_s": Param(0.0, "... or when the keyframe is older than this (0 disables)", "s", 0.0, 86400.0),
    "min_interval_s": Param(0.0, "Never switch sooner than this after the last keyframe", "s", 0.0, 86400.0),
    "max_depth_scale_change": Param(0.15, "With depth: a frame becomes a keyframe (its depth anchors what follows) "
                                    "only when its depth at the inliers agrees with the keyframe's points seen from "
                                    "the frame's pose within this share (median ratio); else the old keyframe is "
                                    "kept (a depth scaled x20 sent odometry 5 m off); 0 disables", min=0.0, max=10.0),
}
default_keyframe_conf = defaults(keyframe_spec)


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
        self.conf = make_conf(keyframe_spec, conf, "keyframe selection")

    def decide(self, num_inliers: int, num_keyframe_keypoints: int, parallax_deg: float,
               age_s: float, reference_support: int | None = None,
               rotation_deg: float = 0.0) -> KeyframeDecision:
        """num_inliers: this frame's geometric inliers against the keyframe; num_keyframe_keypoints: the keyframe's
        keypoints; parallax_deg: median parallax [deg]; age_s: time since the keyframe [s]; reference_support: the
        most inliers a frame has had against the keyframe, this one included (None: the share rule is skipped);
        rotation_deg: the frame's rotation from the keyframe [deg] (0 when unknown)."""
        c = self.conf
        if min(num_inliers, num_keyframe_keypoints) < 0 or (reference_support is not None and reference_support < 0):
            raise ValueError(f"negative counts: {num_inliers} inliers, {num_keyframe_keypoints} keypoints, "
                             f"reference {reference_support}")
        if age_s < c["min_interval_s"]:
            return KeyframeDecision(False, "min_interval")
        if reference_support is not None:
            share = num_inliers / max(reference_support, num_inliers, 1)
            if share < c["min_tracked_share"]:
                return KeyframeDecision(True, f"tracked share {share:.2f} < {c['min_tracked_share']:.2f} "
                                              f"({num_inliers} of the keyframe's {reference_support} inliers)")
        ratio = num_inliers / max(num_keyframe_keypoints, 1)
        if ratio < c["min_tracked_ratio"]:
            return KeyframeDecision(True, f"tracked ratio {ratio:.2f} < {c['min_tracked_ratio']:.2f}")
        if num_inliers < c["min_inliers"]:
            return KeyframeDecision(True, f"{num_inliers} inliers < {c['min_inliers']}")
        if c["max_rotation_deg"] > 0 and rotation_deg > c["max_rotation_deg"]:
            return KeyframeDecision(True, f"rotation {rotation_deg:.1f} deg > {c['max_rotation_deg']}")
        if c["max_parallax_deg"] > 0 and parallax_deg > c["max_parallax_deg"]:
            return KeyframeDecision(True, f"parallax {parallax_deg:.1f} deg > {c['max_parallax_deg']}")
        if c["max_interval_s"] > 0 and age_s > c["max_interval_s"]:
            return KeyframeDecision(True, f"age {age_s:.1f} s > {c['max_interval_s']}")
        return KeyframeDecision(False, "tracking")
