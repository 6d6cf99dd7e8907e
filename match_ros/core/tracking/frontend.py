"""Keyframe matching front end: match each frame against the current keyframe.

Pure core: the node converts messages into ``Frame`` objects, calls
``KeyframeTracker.process`` and publishes the ``TrackResult``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from match_ros.core.config import make_conf
from match_ros.core.geometry.camera import (Distortion, backproject, depth_at_undistorted, distort_points,
                                            transform_points)
from match_ros.core.geometry.transforms import invert, rotation_error_deg
from match_ros.core.geometry.two_view import RelativePose, estimate_relative_pose, pose_spec
from match_ros.core.tracking.keyframes import KeyframeSelector, keyframe_spec
from match_ros.core.features.matcher import Matcher, check_distortion, undistort
from match_ros.core.features.types import Features, Matches, check_image
from match_ros.core.memory import LargeFrameTrim


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
    # its depth agreed with another frame's: checked when it became the keyframe, or confirmed by a frame matched to
    # it (the first keyframe and one made when tracking was lost are unconfirmed until then)
    depth_confirmed: bool = False
    depth_disagreements: int = 0  # frames in a row whose depth disagreed with this unconfirmed keyframe's


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
    depth_refused: str = ""  # why the frame, due to become a keyframe, was not (its depth disagrees), or ""


DEPTH_DISAGREEMENTS_TO_REPLACE = 3  # frames in a row disagreeing with an unconfirmed keyframe's depth replace it


def depth_scale_problem(pts_ref: np.ndarray, pts_query: np.ndarray, ref: "Keyframe", frame: "Frame",
                        T_ref_query: np.ndarray, tol: float, max_depth: float = np.inf) -> str:
    """How ``frame``'s depth disagrees with the keyframe's, or "": the keyframe's depth points at the matches
    (pts_ref / pts_query, e.g. the pose's inliers), seen from the frame's pose ``T_ref_query``, against the frame's
    own depth there (median ratio within ``tol``), or the frame has no usable depth where the points predict one.
    A depth image scaled x20 (a driver bug, a wrong unit) that became a keyframe sent visual odometry 5 m off and
    made keyframe_matcher publish 0.3-0.96 m steps for 12 mm of motion."""
    if tol <= 0 or ref.depth is None or ref.K is None or frame.depth is None or frame.K is None or len(pts_ref) < 10:
        return ""
    z_ref = depth_at_undistorted(ref.depth, pts_ref, ref.K, ref.distortion, max_depth=max_depth)
    z_new = depth_at_undistorted(frame.depth, pts_query, frame.K, frame.distortion, max_depth=max_depth)
    X = backproject(pts_ref, z_ref, ref.K)
    predicted = transform_points(invert(T_ref_query), X)[:, 2]
    expected = np.isfinite(predicted) & (predicted > 1e-3) & (predicted < max_depth)
    ok = expected & np.isfinite(z_new) & (z_new > 0)
    if expected.sum() >= 10 and ok.sum() < 0.5 * expected.sum():
        return (f"no usable depth at {expected.sum() - ok.sum()} of {expected.sum()} inliers where the keyframe's "
                f"points predict {np.median(predicted[expected]):.2f} m")
    if ok.sum() < 10:
        return ""
    ratio = float(np.median(z_new[ok] / predicted[ok]))
    if abs(ratio - 1.0) <= tol:
        return ""
    return (f"depth x{ratio:.2f} of what the keyframe's points predict (> {100 * tol:.0f} % off, "
            f"max_depth_scale_change)")


def carried_depth(ref: "Keyframe", pts_ref: np.ndarray, pts_query: np.ndarray, T_ref_query: np.ndarray,
                  frame: "Frame") -> np.ndarray:
    """A sparse depth image for ``frame``: the keyframe's depth at the matches (pts_ref -> pts_query), moved into the
    frame by its pose, written at the query keypoints' raw pixels (2 x 2 blocks, so bilinear reads give it back);
    0 elsewhere. A frame whose own depth disagrees becomes a keyframe with this: the chain's scale stays on the
    depth that was confirmed, and a run of wrong depth images never anchors a pose."""
    out = np.zeros(frame.depth.shape[:2], np.float32)
    z_ref = depth_at_undistorted(ref.depth, pts_ref, ref.K, ref.distortion)
    z = transform_points(invert(T_ref_query), backproject(pts_ref, z_ref, ref.K))[:, 2]
    raw = distort_points(pts_query, frame.K, frame.distortion)
    h, w = out.shape
    ok = np.isfinite(z) & (z > 0) & (raw[:, 0] >= 0) & (raw[:, 0] < w - 1) & (raw[:, 1] >= 0) & (raw[:, 1] < h - 1)
    x0, y0 = np.floor(raw[ok]).astype(int).T
    for dy in (0, 1):
        for dx in (0, 1):
            out[y0 + dy, x0 + dx] = z[ok]
    return out


def without_scale(pose: RelativePose, reason: str) -> RelativePose:
    """The pose as depth-free two-view geometry gives it: unit translation (its covariance with it), not metric."""
    n = float(np.linalg.norm(pose.T_ref_query[:3, 3]))
    if n < 1e-9:
        return replace(pose, scale_known=False, reason=reason)
    T, cov = pose.T_ref_query.copy(), pose.covariance.copy()
    T[:3, 3] /= n
    cov[:3, :] /= n
    cov[:, :3] /= n
    return replace(pose, T_ref_query=T, covariance=cov, scale_known=False, reason=reason)


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
        self._trim = LargeFrameTrim()  # the heap back to the OS after an unusually large frame (issue #20)

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
        self._trim.frame(image.shape[0] * image.shape[1])
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
        tol = self.selector.conf["max_depth_scale_change"]
        depth_check = tol > 0 and pose.valid and pose.scale_known and frame.depth is not None
        problem = ""
        if depth_check:  # metric: the keyframe's depth gave it; the frame's own depth checks that depth
            inl = np.asarray(pose.inliers, bool)
            problem = depth_scale_problem(pts_ref[inl], pts_query[inl], kf, frame, pose.T_ref_query, tol)
            if not kf.depth_confirmed:
                kf.depth_confirmed, kf.depth_disagreements = not problem, kf.depth_disagreements + bool(problem)
                if problem:  # which of the two depths is wrong is not known: no metric pose from it
                    pose = without_scale(pose, f"scale not confirmed: the keyframe's {problem}")
        turned = rotation_error_deg(pose.T_ref_query[:3, :3], np.eye(3)) if pose.valid else 0.0
        decision = self.selector.decide(n_support, len(kf.features), pose.parallax_deg,
                                        (frame.stamp_ns - kf.stamp_ns) * 1e-9, kf.reference_support, turned)
        new_keyframe, reason = decision.new_keyframe, decision.reason
        if kf.depth_disagreements >= DEPTH_DISAGREEMENTS_TO_REPLACE:
            new_keyframe, reason = True, f"{kf.depth_disagreements} frames in a row disagree with its depth"
        result = TrackResult(query_id, kf, len(feats), matches, pts_ref, pts_query, pose, new_keyframe, reason,
                             timings, feats)
        if new_keyframe and depth_check and kf.depth_confirmed and problem:
            # its own depth disagrees with the confirmed one: the keyframe carries that depth over instead
            result.depth_refused = f"{problem}: not made a keyframe with its own depth (the keyframe's carried over)"
            inl = np.asarray(pose.inliers, bool)  # (at every match, wrong matches bias the carried depth: x1.2)
            frame = replace(frame, depth=carried_depth(kf, pts_ref[inl], pts_query[inl], pose.T_ref_query, frame))
            self._make_keyframe(frame, feats).depth_confirmed = True
        elif result.is_keyframe:
            self._make_keyframe(frame, feats).depth_confirmed = depth_check and kf.depth_confirmed and not problem
        return result

    def _make_keyframe(self, frame: Frame, feats: Features) -> Keyframe:
        calibrated = frame.K is not None
        self.keyframe = Keyframe(self._next_keyframe_id, frame.stamp_ns, frame.frame_id, feats,
                                 np.asarray(frame.K, np.float64) if calibrated else None, frame.depth,
                                 distortion=frame.distortion if calibrated else None)
        self._next_keyframe_id += 1
        return self.keyframe
