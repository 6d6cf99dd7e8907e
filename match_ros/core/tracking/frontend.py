"""Keyframe matching front end: match each frame against the current keyframe.

Pure core: the node converts messages into ``Frame`` objects, calls
``KeyframeTracker.process`` and publishes the ``TrackResult``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from match_ros.core.config import make_conf
from match_ros.core.geometry.camera import Distortion
from match_ros.core.geometry.transforms import rotation_error_deg
from match_ros.core.geometry.two_view import RelativePose, estimate_relative_pose, pose_spec
from match_ros.core.tracking.keyframes import KeyframeSelector, keyframe_spec
from match_ros.core.features.matcher import Matcher, check_distortion, undistort
from match_ros.core.features.types import Features, Matches, check_image


@dataclass
class Frame:
    """One camera image with what is known about it.

    image:    [H x W] or [H x W x 3] uint8 (RGB)
    stamp_ns: acquisition time [ns]
    K:        [3 x 3] camera matrix, or None when no camera_info was received
    depth:    optional [H x W] float32 depth [m] aligned with image
    distortion: the lens distortion of the (raw, unrectified) image, or None; with K, the keypoints are
              undistorted right after extraction (``Matcher.undistort``): matches, poses and the published
              pixels are those of the ideal pinhole camera with K; depth is read at the raw pixels
    """

    image: np.ndarray
    stamp_ns: int
    frame_id: str = ""
    K: Optional[np.ndarray] = None
    depth: Optional[np.ndarray] = None
    distortion: Optional[Distortion] = None


@dataclass
class Keyframe:
    """A frame the following ones are matched against; reference_support: the most geometric inliers a frame
    has had against it so far (the keyframe selector's reference, 0 before the first match)."""

    id: int
    stamp_ns: int
    frame_id: str
    features: Features
    K: Optional[np.ndarray]
    depth: Optional[np.ndarray]
    reference_support: int = 0
    distortion: Optional[Distortion] = None  # of the raw image its depth is registered to (features: undistorted)


@dataclass
class TrackResult:
    """Matching result of one frame against the keyframe it was matched to.

    pts_ref, pts_query: [M x 2] float64 matched pixels; pose.inliers [M] flags them.
    timings_ms: extract / match / pose, in milliseconds.
    query_features: the frame's features (extracted once; for matching it against other keyframes).
    """

    query_id: int
    keyframe: Keyframe
    num_query_keypoints: int
    matches: Matches
    pts_ref: np.ndarray
    pts_query: np.ndarray
    pose: RelativePose
    is_keyframe: bool
    keyframe_reason: str
    timings_ms: dict = field(default_factory=dict)
    query_features: Optional[Features] = None


class KeyframeTracker:
    """Matches frames against the current keyframe and decides when to switch.

    The first frame becomes keyframe 0 (its result has no matches). When the
    selector asks for a new keyframe, the current frame's already extracted
    features become the keyframe: no image is processed twice.
    """

    def __init__(self, matcher: Matcher, selector: KeyframeSelector | None = None,
                 pose_conf: dict | None = None):
        self.matcher = matcher
        self.selector = selector or KeyframeSelector()
        self.pose_conf = pose_conf or {}
        self.keyframe: Keyframe | None = None
        self._next_keyframe_id = 0
        self._next_query_id = 0

    def reset(self) -> None:
        self.keyframe = None

    def update_conf(self, keyframe: dict | None = None, geometry: dict | None = None) -> None:
        """Apply changed keyframe-selection and two-view settings (checked against their specs; ValueError)."""
        if keyframe:
            self.selector.conf = make_conf(keyframe_spec, {**self.selector.conf, **keyframe}, "keyframe selection")
        if geometry:
            self.pose_conf = make_conf(pose_spec, {**self.pose_conf, **geometry}, "two-view geometry")

    def process(self, frame: Frame) -> TrackResult:
        image = check_image(frame.image)
        if frame.depth is not None and frame.depth.shape[:2] != image.shape[:2]:
            raise ValueError(f"depth {frame.depth.shape[:2]} does not match image {image.shape[:2]}")
        if frame.K is not None:
            check_distortion(self.matcher, frame.distortion)
        query_id = self._next_query_id
        self._next_query_id += 1
        t0 = time.perf_counter()
        feats = self.matcher.extract(image)
        if frame.K is not None:
            feats = undistort(self.matcher, feats, frame.K, frame.distortion)
        t1 = time.perf_counter()
        timings = {"extract": 1e3 * (t1 - t0)}
        kf = self.keyframe
        if kf is None or kf.features.image_size != feats.image_size:
            new_kf = self._make_keyframe(frame, feats)
            empty = np.zeros((0, 2))
            return TrackResult(query_id, new_kf, len(feats), Matches.empty(), empty, empty,
                               RelativePose(False, reason="first frame"), True, "first frame", timings, feats)

        if kf.K is None and frame.K is not None:  # same camera; calibration arrived after the keyframe
            kf.K, kf.distortion = np.asarray(frame.K, np.float64), frame.distortion
            kf.features = undistort(self.matcher, kf.features, kf.K, kf.distortion)
        matches = self.matcher.match(kf.features, feats)
        t2 = time.perf_counter()
        pts_ref, pts_query = matches.points(kf.features, feats)
        calibrated = kf.K is not None and frame.K is not None
        if calibrated:
            pose = estimate_relative_pose(pts_ref, pts_query, kf.K, frame.K, kf.depth, self.pose_conf,
                                          depth_distortion=kf.distortion)
        else:
            pose = RelativePose(False, inliers=np.zeros(len(matches), bool), reason="no camera_info")
        t3 = time.perf_counter()
        timings.update(match=1e3 * (t2 - t1), pose=1e3 * (t3 - t2))
        # tracking support: geometric inliers, or raw matches when there is no calibration
        n_support = pose.num_inliers if calibrated else len(matches)
        kf.reference_support = max(kf.reference_support, n_support)
        turned = rotation_error_deg(pose.T_ref_query[:3, :3], np.eye(3)) if pose.valid else 0.0
        decision = self.selector.decide(n_support, len(kf.features), pose.parallax_deg,
                                        (frame.stamp_ns - kf.stamp_ns) * 1e-9, kf.reference_support, turned)
        result = TrackResult(query_id, kf, len(feats), matches, pts_ref, pts_query, pose,
                             decision.new_keyframe, decision.reason, timings, feats)
        if decision.new_keyframe:
            self._make_keyframe(frame, feats)
        return result

    def _make_keyframe(self, frame: Frame, feats: Features) -> Keyframe:
        calibrated = frame.K is not None
        self.keyframe = Keyframe(self._next_keyframe_id, frame.stamp_ns, frame.frame_id, feats,
                                 np.asarray(frame.K, np.float64) if calibrated else None, frame.depth,
                                 distortion=frame.distortion if calibrated else None)
        self._next_keyframe_id += 1
        return self.keyframe
