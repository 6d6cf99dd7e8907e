"""Two-view geometry: relative pose from matches, pose algebra, error metrics.

Frames follow REP 103: camera frames are optical frames (z forward, x right,
y down). ``T_a_b`` is a 4x4 float64 transform mapping points in frame b into
frame a (the pose of b expressed in a).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


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


default_pose_conf = {
    "ransac_threshold_px": 1.0,   # max epipolar / reprojection error of an inlier [px]
    "confidence": 0.999,          # RANSAC confidence
    "max_iterations": 2000,       # RANSAC iteration cap
    "min_inliers": 15,            # fewer inliers -> no pose
    "min_depth_m": 0.05,          # reference depths below this are treated as invalid [m]
}


def check_K(K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"invalid camera matrix K: {K.tolist()}")
    return K


def normalize_points(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[M x 2] pixels -> [M x 2] normalized image coordinates (x/z, y/z)."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return (pts - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])


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
    c = {**default_pose_conf, **(conf or {})}
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
    depth_ref = np.asarray(depth_ref, np.float32)
    h, w = depth_ref.shape[:2]
    m = len(pts_ref)
    col = np.clip(np.round(pts_ref[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.round(pts_ref[:, 1]).astype(int), 0, h - 1)
    z = depth_ref[row, col].astype(np.float64)
    has_depth = np.isfinite(z) & (z > c["min_depth_m"])
    if has_depth.sum() < max(6, c["min_inliers"]):
        return RelativePose(False, inliers=np.zeros(m, bool),
                            reason=f"only {int(has_depth.sum())} matches with valid depth")
    X_ref = np.column_stack([normalize_points(pts_ref[has_depth], K_ref) * z[has_depth, None], z[has_depth]])
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


# ---------------------------------------------------------------- pose algebra

def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, np.asarray(t, np.float64).ravel()
    return T


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """[3 x 3] rotation -> unit quaternion (x, y, z, w), w >= 0."""
    R = np.asarray(R, np.float64)
    q = np.empty(4)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q[:] = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def matrix_from_quaternion(q) -> np.ndarray:
    """Quaternion (x, y, z, w) -> [3 x 3] rotation. Raises ValueError on a zero quaternion."""
    x, y, z, w = np.asarray(q, np.float64)
    n = x * x + y * y + z * z + w * w
    if n < 1e-12:
        raise ValueError("zero quaternion")
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of R_a^T R_b in degrees."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_angle_deg(t_a: np.ndarray, t_b: np.ndarray) -> float:
    """Angle between two translation directions in degrees (scale-free error)."""
    na, nb = np.linalg.norm(t_a), np.linalg.norm(t_b)
    if na < 1e-12 or nb < 1e-12:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(np.dot(t_a, t_b) / (na * nb), -1.0, 1.0))))


def homography_corner_error(H_est: np.ndarray, H_gt: np.ndarray, width: int, height: int) -> float:
    """Mean distance [px] between the image corners mapped by two homographies."""
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    a = cv2.perspectiveTransform(corners[None], H_est)[0]
    b = cv2.perspectiveTransform(corners[None], H_gt)[0]
    return float(np.linalg.norm(a - b, axis=1).mean())
