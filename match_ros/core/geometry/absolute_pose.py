"""Absolute camera pose from 2D-3D correspondences: robust PnP, refinement,
plausibility checks and a covariance from the solution (not a constant).

Frames: ``T_map_cam`` is the pose of the camera optical frame in the map frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from match_ros.core.config import Param, defaults, make_conf
from match_ros.core.geometry.camera import project, transform_points
from match_ros.core.geometry.transforms import invert, make_T, perturb_pose, skew

pnp_spec = {
    "ransac_threshold_px": Param(3.0, "Reprojection error of a PnP inlier", "px", 0.1, 100.0),
    "confidence": Param(0.9999, "RANSAC confidence", min=0.5, max=0.999999),
    "max_iterations": Param(5000, "RANSAC iteration cap", min=1, max=1000000),
    "min_inliers": Param(40, "Fewer inliers: rejected", min=6, max=100000),
    "min_inlier_ratio": Param(0.15, "Inliers / 2D-3D correspondences below this: rejected", min=0.0, max=1.0),
    "max_rmse_px": Param(2.5, "Inlier reprojection RMSE above this: rejected", "px", 0.1, 100.0),
    "min_coverage": Param(0.04, "Inliers' bounding box / image area below this: rejected", min=0.0, max=1.0),
    "pixel_sigma_px": Param(1.0, "Floor of the pixel noise the covariance assumes", "px", 0.01, 100.0),
}
default_pnp_conf = defaults(pnp_spec)


@dataclass
class PnPResult:
    """valid: passed every check; T_map_cam [4 x 4]; inliers [N] bool; covariance [6 x 6]
    over (x, y, z, rot_x, rot_y, rot_z) of the camera in the map frame (m^2, rad^2)."""

    valid: bool
    T_map_cam: np.ndarray = field(default_factory=lambda: np.eye(4))
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    num_inliers: int = 0
    rmse_px: float = float("nan")
    covariance: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))
    reason: str = ""


def solve_pnp(X_map: np.ndarray, x_img: np.ndarray, K: np.ndarray, image_size: tuple[int, int],
              conf: dict | None = None) -> PnPResult:
    """Robust camera pose from [N x 3] map points and their [N x 2] pixels in an image of
    image_size (width, height): USAC PnP, Levenberg-Marquardt refinement on the inliers, checks."""
    c = make_conf(pnp_spec, conf, "PnP")
    X_map = np.ascontiguousarray(X_map, np.float64).reshape(-1, 3)
    x_img = np.ascontiguousarray(x_img, np.float64).reshape(-1, 2)
    if len(X_map) != len(x_img):
        raise ValueError(f"{len(X_map)} 3D points but {len(x_img)} pixels")
    n = len(X_map)
    if n < max(c["min_inliers"], 6):
        return PnPResult(False, inliers=np.zeros(n, bool), reason=f"only {n} 2D-3D correspondences")
    params = cv2.UsacParams()
    params.threshold = c["ransac_threshold_px"]
    params.confidence = c["confidence"]
    params.maxIterations = c["max_iterations"]
    params.sampler = cv2.SAMPLING_UNIFORM
    params.score = cv2.SCORE_METHOD_MAGSAC
    params.loMethod = cv2.LOCAL_OPTIM_SIGMA
    params.loIterations = 10
    params.loSampleSize = 20
    try:
        ok, _, rvec, tvec, idx = cv2.solvePnPRansac(X_map, x_img, K.copy(), None, params=params)
    except cv2.error as e:
        return PnPResult(False, inliers=np.zeros(n, bool), reason=f"PnP failed: {e.msg.strip()}")
    if not ok or idx is None or len(idx) < c["min_inliers"]:
        k = 0 if idx is None else len(idx)
        return PnPResult(False, inliers=np.zeros(n, bool), num_inliers=k, reason=f"{k} PnP inliers")
    sel = idx.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(X_map[sel], x_img[sel], K, None, rvec, tvec)
    T_cam_map = make_T(cv2.Rodrigues(rvec)[0], tvec)
    err = reprojection_errors(X_map, x_img, K, T_cam_map)
    inliers = err < c["ransac_threshold_px"]
    k = int(inliers.sum())
    rmse = float(np.sqrt(np.mean(err[inliers] ** 2))) if k else float("nan")
    result = PnPResult(False, invert(T_cam_map), inliers, k, rmse)
    w, h = image_size
    if k < c["min_inliers"]:
        result.reason = f"{k} inliers after refinement < {c['min_inliers']}"
    elif k / n < c["min_inlier_ratio"]:
        result.reason = f"inlier ratio {k / n:.2f} < {c['min_inlier_ratio']}"
    elif rmse > c["max_rmse_px"]:
        result.reason = f"inlier RMSE {rmse:.2f} px > {c['max_rmse_px']}"
    elif coverage(x_img[inliers], w, h) < c["min_coverage"]:
        result.reason = f"inliers cover {coverage(x_img[inliers], w, h):.3f} of the image < {c['min_coverage']}"
    else:
        result.valid = True
        sigma = max(rmse, c["pixel_sigma_px"])
        result.covariance = pose_covariance(result.T_map_cam, X_map[inliers], x_img[inliers], K, sigma)
    return result


def reprojection_errors(X_map: np.ndarray, x_img: np.ndarray, K: np.ndarray, T_cam_map: np.ndarray) -> np.ndarray:
    """[N] pixel distance between observed pixels and projected map points (inf behind the camera)."""
    proj, z = project(transform_points(T_cam_map, X_map), K)
    with np.errstate(invalid="ignore"):
        err = np.linalg.norm(proj - x_img, axis=1)
    err[~(z > 1e-6)] = np.inf
    return err


def coverage(pts: np.ndarray, width: int, height: int) -> float:
    if len(pts) < 3:
        return 0.0
    span = pts.max(axis=0) - pts.min(axis=0)
    return float(span[0] * span[1] / (width * height))


def pose_covariance(T_map_frame: np.ndarray, X_map: np.ndarray, x_img: np.ndarray, K: np.ndarray,
                    sigma_px: float, T_frame_cam: np.ndarray | None = None,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """First-order covariance [6 x 6] of a frame's pose in the map frame from reprojection residuals.

    Parameters are (x, y, z, rot_x, rot_y, rot_z): translation of the frame in the map frame and a
    small rotation about the map axes at the frame's origin (the convention of
    geometry_msgs/PoseWithCovariance). cov = sigma^2 (J^T J)^-1 with J the numeric Jacobian of the
    stacked pixel residuals. T_frame_cam: camera pose in the frame (identity: the camera itself).
    weights: [N] information weight of each correspondence (``cell_weights``: correlated neighbours share one
    observation's worth); then cov = sigma^2 (J^T W J)^-1.
    """
    T_frame_cam = np.eye(4) if T_frame_cam is None else T_frame_cam

    def residuals(delta):
        T = perturb_pose(T_map_frame, delta)
        return project(transform_points(invert(T @ T_frame_cam), X_map), K)[0].ravel()

    r0 = residuals(np.zeros(6))
    J = np.empty((r0.size, 6))
    for i, step in enumerate([1e-4] * 3 + [1e-5] * 3):
        d = np.zeros(6)
        d[i] = step
        J[:, i] = (residuals(d) - residuals(-d)) / (2 * step)
    if weights is not None:
        w = np.repeat(np.asarray(weights, np.float64), 2)  # both pixel coordinates of a correspondence
        info = (J * w[:, None]).T @ J
    else:
        info = J.T @ J
    try:
        return sigma_px ** 2 * np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return np.full((6, 6), np.nan)


def pose_difference(T_a: np.ndarray, T_b: np.ndarray) -> np.ndarray:
    """[6] T_a - T_b in the parameters of ``pose_covariance`` (geometry_msgs/PoseWithCovariance): the translation
    difference in the parent frame, then the rotation vector of R_a R_b^T (about the parent's axes)."""
    dR = T_a[:3, :3] @ T_b[:3, :3].T
    return np.r_[T_a[:3, 3] - T_b[:3, 3], cv2.Rodrigues(dR)[0].ravel()]


def least_certain_shift(T_map_cam: np.ndarray, cov: np.ndarray, X_map: np.ndarray, K: np.ndarray,
                        shift_px: float) -> np.ndarray:
    """[6] pose change (``perturb_pose``'s parameters) along the least certain direction of ``cov`` that moves the
    projections of ``X_map`` [N x 3] by ``shift_px`` (root mean square). Rotations are weighed as the translations
    they cause at the points' median depth, so the direction is the one that moves the scene least per metre:
    on a facade seen head-on, sliding sideways while turning back. Zeros when cov is not finite or the points do
    not move."""
    if not np.all(np.isfinite(cov)) or len(X_map) == 0:
        return np.zeros(6)
    X_cam = transform_points(invert(T_map_cam), X_map)
    at_pose = project(X_cam, K)[0]
    scale = np.diag([1.0, 1.0, 1.0] + [max(float(np.median(X_cam[:, 2])), 1e-3)] * 3)
    direction = np.linalg.solve(scale, np.linalg.eigh(scale @ cov @ scale)[1][:, -1])

    def rms(step):  # inf once a point is behind the moved camera
        err = reprojection_errors(X_map, at_pose, K, invert(perturb_pose(T_map_cam, step)))
        return float(np.sqrt(np.mean(err ** 2)))

    small = rms(1e-3 * direction)  # linear there: the first guess
    if not np.isfinite(small) or small < 1e-12:
        return np.zeros(6)
    lo = hi = 1e-3 * shift_px / small
    while rms(lo * direction) > shift_px and lo > 1e-9:  # bracket (perspective makes it nonlinear far out)
        lo /= 2.0
    while rms(hi * direction) < shift_px and hi < 1e3:
        hi *= 2.0
    for _ in range(30):
        mid = np.sqrt(lo * hi)
        if rms(mid * direction) < shift_px:
            lo = mid
        else:
            hi = mid
    return np.sqrt(lo * hi) * direction


def pose_mahalanobis(T_a: np.ndarray, T_b: np.ndarray, cov: np.ndarray) -> float:
    """Squared Mahalanobis distance of ``pose_difference(T_a, T_b)`` under ``cov`` [6 x 6] (the two poses'
    covariances summed, for independent estimates); nan when cov is not finite or singular."""
    if not np.all(np.isfinite(cov)):
        return float("nan")
    d = pose_difference(T_a, T_b)
    try:
        return float(d @ np.linalg.solve(cov, d))
    except np.linalg.LinAlgError:
        return float("nan")


def moved_covariance(cov: np.ndarray, T_from: np.ndarray, T_to: np.ndarray) -> np.ndarray:
    """Covariance [6 x 6] of pose T_to = T_from M for an exactly known motion M, when T_from has ``cov`` (the
    parameters of ``pose_covariance``): a rotation error of T_from swings the moved position about T_from's origin,
    dp = dt - [T_to.t - T_from.t]x dtheta; the rotation error is carried as it is."""
    J = np.eye(6)
    J[:3, 3:] = -skew(T_to[:3, 3] - T_from[:3, 3])
    return J @ cov @ J.T


def covariance_cover(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A covariance at least as large as both ``a`` and ``b`` in every direction (C - a and C - b positive
    semi-definite), equal to the larger where one contains the other: in the coordinates that whiten ``a``, each
    eigenvalue of ``b`` below 1 is raised to 1. For two estimates of one error of which either may be the honest one
    (a generic drift model and what the odometry reports). A singular ``a`` is floored at 1e-12 on its diagonal."""
    a = 0.5 * (a + a.T) + 1e-12 * np.eye(len(a))
    w, v = np.linalg.eigh(a)
    half = v @ np.diag(np.sqrt(w)) @ v.T  # a^(1/2)
    inv_half = v @ np.diag(1.0 / np.sqrt(w)) @ v.T
    lam, u = np.linalg.eigh(inv_half @ (0.5 * (b + b.T)) @ inv_half)
    out = half @ u @ np.diag(np.maximum(lam, 1.0)) @ u.T @ half
    return 0.5 * (out + out.T)


def fuse_poses(T_a: np.ndarray, cov_a: np.ndarray, T_b: np.ndarray, cov_b: np.ndarray) -> tuple:
    """(T, cov): two estimates of one pose whose errors may be correlated combined by covariance intersection, in
    the parameters of ``pose_covariance``: cov^-1 = w cov_a^-1 + (1 - w) cov_b^-1 with w in [0, 1] minimising
    det(cov). Consistent whatever the correlation: a relocalization and the odometry's prediction from the previous
    one share the map's error and the view's bias, and a Kalman update, which assumes them independent, shrank the
    covariance frame after frame (35 % of errors within 3 sigma in a graph test). The fused pose leans on the more
    certain estimate in each direction; two equal ones meet half-way with that same covariance. ValueError when a
    covariance is not finite or singular."""
    if not (np.all(np.isfinite(cov_a)) and np.all(np.isfinite(cov_b))):
        raise ValueError("fuse_poses needs finite covariances")
    info_a, info_b = np.linalg.inv(cov_a), np.linalg.inv(cov_b)
    d = pose_difference(T_b, T_a)  # b in the parameters around a (a at 0)
    best = None
    for w in sorted(np.linspace(0.0, 1.0, 41), key=lambda w: abs(w - 0.5)):  # ties: the even weighting
        info = w * info_a + (1.0 - w) * info_b
        sign, logdet = np.linalg.slogdet(info)
        if sign > 0 and (best is None or logdet > best[0] + 1e-12):  # the largest information: the smallest det(cov)
            best = (logdet, w, info)
    if best is None:
        raise ValueError("fuse_poses: no positive definite combination")
    _, w, info = best
    cov = np.linalg.inv(info)
    T = perturb_pose(T_a, cov @ ((1.0 - w) * info_b @ d))
    return T, (cov + cov.T) / 2.0


def pose_sigmas(cov: np.ndarray) -> tuple[float, float]:
    """(largest 1-sigma position [m], largest 1-sigma rotation [deg]) of a [6 x 6] pose covariance."""
    return (float(np.sqrt(max(np.max(np.linalg.eigvalsh(cov[:3, :3])), 0.0))),
            float(np.degrees(np.sqrt(max(np.max(np.linalg.eigvalsh(cov[3:, 3:])), 0.0)))))


def cell_weights(x_img: np.ndarray, cell_px: float) -> np.ndarray:
    """[N] weights 1 / (correspondences in the same ``cell_px`` square of the image): the pixel errors of
    neighbouring matches are correlated (blur, the same texture patch, one map point's error seen by several
    keyframes; dense matchers give thousands of them), so each occupied cell counts as one observation instead
    of as many as it holds. cell_px 0: weights 1."""
    inverse, counts = _cells(x_img, cell_px)
    return 1.0 / counts[inverse]


def occupied_cells(x_img: np.ndarray, cell_px: float) -> int:
    """Number of ``cell_px`` squares of the image holding at least one of the points x_img [N x 2]: the
    independent observations among correlated matches (``cell_weights`` sums to the same). cell_px 0: N."""
    return len(_cells(x_img, cell_px)[1])


def exclusive_cells(x_own: np.ndarray, x_other: np.ndarray, cell_px: float) -> int:
    """Number of ``cell_px`` squares holding points of x_other [M x 2] and none of x_own [N x 2] (cells counted as
    in ``occupied_cells``)."""
    x_own, x_other = np.asarray(x_own, np.float64).reshape(-1, 2), np.asarray(x_other, np.float64).reshape(-1, 2)
    cell = _cells(np.vstack([x_own, x_other]), cell_px)[0]
    return len(set(cell[len(x_own):].tolist()) - set(cell[:len(x_own)].tolist()))


def evidence_where_both_predict(x_a: np.ndarray, x_b: np.ndarray, predicted_a: np.ndarray,
                                predicted_b: np.ndarray, cell_px: float) -> tuple[int, int]:
    """(cells of x_a, cells of x_b) among the ``cell_px`` squares into which both predicted_a and predicted_b fall:
    two poses' evidence (inlier pixels) counted only where each one's map says something should match (the
    projected map points). A pose that wins only in cells the other's map does not cover wins on how well its
    place was mapped, not on where the camera is."""
    parts = [np.asarray(v, np.float64).reshape(-1, 2) for v in (x_a, x_b, predicted_a, predicted_b)]
    cell = _cells(np.vstack(parts), cell_px)[0]
    ends = np.cumsum([len(v) for v in parts])
    a, b, pa, pb = (set(c.tolist()) for c in np.split(cell, ends[:-1]))
    both = pa & pb
    return len(a & both), len(b & both)


def _cells(x_img: np.ndarray, cell_px: float) -> tuple:
    """(cell index of each point [N], points per occupied cell [C]); cell_px 0 or no points: a cell per point."""
    x_img = np.asarray(x_img, np.float64).reshape(-1, 2)
    if cell_px <= 0 or not len(x_img):
        return np.arange(len(x_img)), np.ones(len(x_img), np.int64)
    cell = np.floor(x_img / cell_px).astype(np.int64)
    if np.all(np.isfinite(x_img)):
        cell -= cell.min(axis=0)
        span = cell.max(axis=0) + 1
        if float(span[0]) * float(span[1]) < 2.0 ** 62:
            # one integer per cell, in the order of (column, row): np.unique on rows (axis=0) sorts the same way
            # but takes ~8x as long, and this runs at every verification
            _, inverse, counts = np.unique(cell[:, 0] * span[1] + cell[:, 1], return_inverse=True,
                                           return_counts=True)
            return inverse.ravel(), counts
    _, inverse, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
    return inverse.ravel(), counts


def covariance_of_attached_frame(cov_cam: np.ndarray, T_map_cam: np.ndarray, T_map_frame: np.ndarray) -> np.ndarray:
    """Covariance [6 x 6] of a frame rigidly attached to the camera, from the camera's.

    Same parametrization as pose_covariance: a small rotation dr about the map axes moves
    the attached frame's origin by dr x a, with a the camera-to-frame offset in the map frame.
    """
    a = T_map_frame[:3, 3] - T_map_cam[:3, 3]
    J = np.eye(6)
    J[:3, 3:] = -skew(a)
    return J @ cov_cam @ J.T
