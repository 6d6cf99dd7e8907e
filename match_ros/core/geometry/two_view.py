"""Two-view geometry: relative pose of a query camera in a reference camera from matched pixels.

Frames follow REP 103: camera frames are optical frames (z forward, x right,
y down). ``T_a_b`` is a 4x4 float64 transform mapping points in frame b into
frame a (the pose of b expressed in a).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from match_ros.core.config import Param, defaults, make_conf
from match_ros.core.geometry.camera import backproject, check_K, depth_at, normalize_points
from match_ros.core.geometry.transforms import invert


@dataclass
class RelativePose:
    """Result of two-view estimation between a reference and a query camera.

    T_ref_query:  [4 x 4] pose of the query camera in the reference camera frame
    inliers:      [M] bool, per input match
    scale_known:  True when the translation is metric (from reference depth)
    parallax_deg: median angle between inlier bearing rays after rotation
    """

    valid: bool
    T_ref_query: np.ndarray = field(default_factory=lambda: np.eye(4))
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    num_inliers: int = 0
    scale_known: bool = False
    parallax_deg: float = 0.0
    reason: str = ""


pose_spec = {
    "ransac_threshold_px": Param(1.0, "Largest epipolar / reprojection error of an inlier", "px", 0.01, 100.0),
    "confidence": Param(0.999, "RANSAC confidence", min=0.5, max=0.999999),
    "max_iterations": Param(2000, "RANSAC iteration cap", min=1, max=1000000),
    "min_inliers": Param(15, "Fewer inliers give no pose", min=5, max=100000),
    "min_depth_m": Param(0.05, "Reference depths below this are invalid", "m", 0.0, 1000.0),
}
default_pose_conf = defaults(pose_spec)


def estimate_relative_pose(pts_ref: np.ndarray, pts_query: np.ndarray, K_ref: np.ndarray,
                           K_query: np.ndarray, depth_ref: np.ndarray | None = None,
                           conf: dict | None = None) -> RelativePose:
    """Relative pose T_ref_query from matched pixels.

    pts_ref, pts_query: [M x 2] pixel coordinates of the same points
    K_ref, K_query:     [3 x 3] camera matrices
    depth_ref:          optional [H x W] float depth of the reference image in metres;
                        when given, PnP on back-projected reference points gives a
                        metric pose (scale_known=True), else the essential matrix
                        gives a unit-length translation.
    """
    c = make_conf(pose_spec, conf, "two-view geometry")
    pts_ref = np.asarray(pts_ref, np.float64).reshape(-1, 2)
    pts_query = np.asarray(pts_query, np.float64).reshape(-1, 2)
    if pts_ref.shape != pts_query.shape:
        raise ValueError(f"point arrays differ in shape: {pts_ref.shape} vs {pts_query.shape}")
    K_ref, K_query = check_K(K_ref), check_K(K_query)
    m = len(pts_ref)
    if m < max(5, c["min_inliers"]):
        return RelativePose(False, inliers=np.zeros(m, bool), reason=f"only {m} matches")
    if depth_ref is not None:
        result = _pose_pnp(pts_ref, pts_query, K_ref, K_query, depth_ref, c)
    else:
        result = _pose_essential(pts_ref, pts_query, K_ref, K_query, c)
    if result.valid:
        R = result.T_ref_query[:3, :3]
        result.parallax_deg = _median_parallax(pts_ref[result.inliers], pts_query[result.inliers],
                                               K_ref, K_query, R)
    return result


def _pose_essential(pts_ref, pts_query, K_ref, K_query, c) -> RelativePose:
    n_ref, n_query = normalize_points(pts_ref, K_ref), normalize_points(pts_query, K_query)
    focal = 0.25 * (K_ref[0, 0] + K_ref[1, 1] + K_query[0, 0] + K_query[1, 1])
    E, mask = cv2.findEssentialMat(n_ref, n_query, np.eye(3), method=cv2.USAC_MAGSAC,
                                   prob=c["confidence"], threshold=c["ransac_threshold_px"] / focal,
                                   maxIters=c["max_iterations"])
    m = len(pts_ref)
    if E is None or E.shape != (3, 3) or mask is None:
        return RelativePose(False, inliers=np.zeros(m, bool), reason="essential matrix failed")
    mask = mask.ravel().astype(np.uint8)
    # recoverPose: x_query = R x_ref + t; of the four decompositions keep the one with most
    # points in front of both cameras. Its default distance cut (50 baselines) would reject
    # distant points at the small baselines between video frames, so set it far away.
    _, R, t, pose_mask, _ = cv2.recoverPose(E, n_ref, n_query, np.eye(3), distanceThresh=1e7,
                                            mask=mask.copy())
    inliers = (pose_mask.ravel() > 0)
    n_good = int(inliers.sum())
    if n_good < c["min_inliers"]:
        return RelativePose(False, inliers=inliers, num_inliers=n_good,
                            reason=f"{n_good} inliers < min_inliers {c['min_inliers']}")
    T_query_ref = np.eye(4)
    T_query_ref[:3, :3], T_query_ref[:3, 3] = R, t.ravel() / max(np.linalg.norm(t), 1e-12)
    return RelativePose(True, invert(T_query_ref), inliers, int(inliers.sum()), scale_known=False)


def _pose_pnp(pts_ref, pts_query, K_ref, K_query, depth_ref, c) -> RelativePose:
    m = len(pts_ref)
    z = depth_at(depth_ref, pts_ref, min_depth=c["min_depth_m"])
    has_depth = np.isfinite(z)
    if has_depth.sum() < max(6, c["min_inliers"]):
        return RelativePose(False, inliers=np.zeros(m, bool),
                            reason=f"only {int(has_depth.sum())} matches with valid depth")
    X_ref = backproject(pts_ref[has_depth], z[has_depth], K_ref)
    ok, rvec, tvec, idx = cv2.solvePnPRansac(X_ref, pts_query[has_depth], K_query, None,
                                             iterationsCount=c["max_iterations"],
                                             reprojectionError=c["ransac_threshold_px"] * 2.0,
                                             confidence=c["confidence"], flags=cv2.SOLVEPNP_SQPNP)
    inliers = np.zeros(m, bool)
    if not ok or idx is None or len(idx) < c["min_inliers"]:
        n = 0 if idx is None else len(idx)
        return RelativePose(False, inliers=inliers, num_inliers=n, reason=f"PnP found {n} inliers")
    sel = idx.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(X_ref[sel], pts_query[has_depth][sel], K_query, None, rvec, tvec)
    inliers[np.flatnonzero(has_depth)[sel]] = True
    T_query_ref = np.eye(4)
    T_query_ref[:3, :3], T_query_ref[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    return RelativePose(True, invert(T_query_ref), inliers, int(inliers.sum()), scale_known=True)


def _median_parallax(p_ref, p_query, K_ref, K_query, R_ref_query) -> float:
    """Median angle [deg] between reference rays and rotation-compensated query rays."""
    if len(p_ref) == 0:
        return 0.0
    b_ref = np.column_stack([normalize_points(p_ref, K_ref), np.ones(len(p_ref))])
    b_q = np.column_stack([normalize_points(p_query, K_query), np.ones(len(p_query))]) @ R_ref_query.T
    b_ref /= np.linalg.norm(b_ref, axis=1, keepdims=True)
    b_q /= np.linalg.norm(b_q, axis=1, keepdims=True)
    cos = np.clip(np.sum(b_ref * b_q, axis=1), -1.0, 1.0)
    return float(np.degrees(np.median(np.arccos(cos))))
