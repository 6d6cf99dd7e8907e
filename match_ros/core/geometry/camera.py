"""Pinhole camera: calibration checks, normalised coordinates, projection, depth at sub-pixel positions.

Pixels follow OpenCV: (x = column, y = row), (0, 0) the centre of the top-left pixel; camera frames are
optical frames (z forward, x right, y down, REP 103).
"""
from __future__ import annotations

import numpy as np


def check_K(K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"invalid camera matrix K: {K.tolist()}")
    return K


def normalize_points(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[M x 2] pixels -> [M x 2] normalized image coordinates (x/z, y/z)."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return (pts - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])


def project(X_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N x 3] points in the optical frame -> ([N x 2] pixels, [N] depth z). Pixels of points with z <= 0 are
    meaningless (the caller checks z)."""
    X = np.asarray(X_cam, np.float64).reshape(-1, 3)
    z = X[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (X @ np.asarray(K, np.float64).T)[:, :2] / z[:, None]
    return uv, z


def transform_points(T_a_b: np.ndarray, X_b: np.ndarray) -> np.ndarray:
    """[N x 3] points in frame b -> [N x 3] in frame a."""
    X_b = np.asarray(X_b, np.float64).reshape(-1, 3)
    return X_b @ T_a_b[:3, :3].T + T_a_b[:3, 3]


def backproject(pts: np.ndarray, z: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[N x 2] pixels with depths z [N] -> [N x 3] points in the optical frame."""
    z = np.asarray(z, np.float64).reshape(-1)
    return np.column_stack([normalize_points(pts, K) * z[:, None], z])


def depth_at(depth: np.ndarray, pts: np.ndarray, min_depth: float = 0.05, max_depth: float = 1e4,
             max_step: float = 0.05) -> np.ndarray:
    """Depth [m] at sub-pixel positions of a depth image; NaN where unknown.

    depth: [H x W] metres (0 / NaN / inf = none); pts: [N x 2] pixels. Inverse depth is interpolated
    bilinearly over the 4 pixels around each position (exact on planar surfaces); a position is NaN when one
    of them is invalid or out of [min_depth, max_depth], or when they differ by more than ``max_step``
    (relative): a depth edge, where any interpolation would invent a surface.
    """
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    depth = np.asarray(depth, np.float32)
    h, w = depth.shape[:2]
    out = np.full(len(pts), np.nan)
    if not len(pts):
        return out
    x0 = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 2)
    ax = np.clip(pts[:, 0] - x0, 0.0, 1.0)
    ay = np.clip(pts[:, 1] - y0, 0.0, 1.0)
    d = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]], 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.all(np.isfinite(d) & (d >= min_depth) & (d <= max_depth), axis=1)
        ok &= d.max(1) <= d.min(1) * (1.0 + max_step)
        wts = np.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], 1)
        z = 1.0 / np.sum(wts / d, axis=1)
    out[ok] = z[ok]
    return out


CALIBRATION_NAMES = ("fx", "fy", "cx", "cy")


def calibration_per_width(K: np.ndarray, width: float) -> np.ndarray:
    """[4] (fx, fy, cx, cy) / image width: the same camera at another resolution gives the same vector."""
    return np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], np.float64) / float(width)


def calibration_change(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """[4] relative change of ``calibration_per_width`` vectors from ``reference`` to ``other`` (fx, fy relative to
    themselves, the principal point relative to the focal length fx)."""
    return np.abs(other - reference) / np.array([reference[0], reference[1], reference[0], reference[0]])


# ---------------------------------------------------------------------------------------------- lens distortion
# ROS sensor_msgs/CameraInfo distortion models (sensor_msgs/distortion_models.hpp) -> number of coefficients
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
# undistortion: fixed-point iterations until the step is below 1e-10 (normalised units) or 100 of them; OpenCV's
# default (5 iterations) leaves ~0.5 px at the corners of a 640 px image with k1 = -0.28
_UNDISTORT_CRITERIA = (3, 100, 1e-10)  # cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS


class Distortion:
    """Lens distortion of a camera as sensor_msgs/CameraInfo gives it (the image itself is NOT rectified).

    model: ``plumb_bob`` (k1, k2, p1, p2, k3: OpenCV's radial-tangential model), ``rational_polynomial`` (k1, k2,
    p1, p2, k3, k4, k5, k6) or ``equidistant`` (k1, k2, k3, k4: OpenCV's fisheye model); coeffs as in CameraInfo.d
    (plumb_bob and rational_polynomial may be shorter: missing ones are 0). All coefficients 0: ``is_identity``.
    The coefficients act on normalised coordinates, so the same Distortion holds for the camera at any resolution
    (K scaled with the image).
    """

    __slots__ = ("model", "coeffs")

    def __init__(self, model: str, coeffs):
        if model not in DISTORTION_MODELS:
            raise ValueError(f"unsupported distortion model '{model}', expected one of {sorted(DISTORTION_MODELS)}")
        c = np.asarray(coeffs, np.float64).reshape(-1)
        n = DISTORTION_MODELS[model]
        if len(c) > n or (model == "equidistant" and len(c) != n) or not np.all(np.isfinite(c)):
            raise ValueError(f"{model} distortion needs {'' if model == 'equidistant' else 'at most '}{n} finite "
                             f"coefficients, got {c.tolist()}")
        self.model, self.coeffs = model, np.r_[c, np.zeros(n - len(c))]
        self.coeffs.setflags(write=False)

    @property
    def is_identity(self) -> bool:
        return not np.any(self.coeffs)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Distortion) and self.model == other.model
                and np.array_equal(self.coeffs, other.coeffs))

    def __hash__(self) -> int:
        return hash((self.model, self.coeffs.tobytes()))

    def __repr__(self) -> str:
        return f"Distortion({self.model!r}, {self.coeffs.tolist()})"


def _distorted(distortion: "Distortion | None") -> bool:
    return distortion is not None and not distortion.is_identity


def _points(uv) -> np.ndarray:
    """float64 [N x 2] (the array itself when it is one)."""
    uv = np.asarray(uv, np.float64)
    return uv if uv.ndim == 2 and uv.shape[1] == 2 else uv.reshape(-1, 2)


def undistort_points(uv: np.ndarray, K: np.ndarray, distortion: "Distortion | None") -> np.ndarray:
    """[N x 2] pixels of the distorted (raw) image -> [N x 2] float64 pixels of the ideal pinhole camera with the
    same K (where the point would be without distortion; what ``project`` with K predicts). None or zero
    coefficients: ``uv`` itself (the same array when it is float64 [N x 2]). A pixel whose undistortion does not
    converge (beyond the range where the model is invertible) keeps its raw position."""
    uv = _points(uv)
    if not _distorted(distortion) or not len(uv):
        return uv
    import cv2

    K = np.asarray(K, np.float64)
    src = np.ascontiguousarray(uv).reshape(-1, 1, 2)
    if distortion.model == "equidistant":
        out = cv2.fisheye.undistortPoints(src, K, distortion.coeffs, R=np.eye(3), P=K, criteria=_UNDISTORT_CRITERIA)
    else:
        out = cv2.undistortPoints(src, K, distortion.coeffs, R=np.eye(3), P=K, criteria=_UNDISTORT_CRITERIA)
    out = out.reshape(-1, 2)
    bad = ~np.all(np.isfinite(out), axis=1)
    out[bad] = uv[bad]
    return out


def distort_points(uv: np.ndarray, K: np.ndarray, distortion: "Distortion | None") -> np.ndarray:
    """The inverse of ``undistort_points``: [N x 2] ideal pinhole pixels -> [N x 2] float64 pixels of the raw
    (distorted) image, e.g. to read a depth image registered to the raw image at an undistorted keypoint."""
    uv = _points(uv)
    if not _distorted(distortion) or not len(uv):
        return uv
    import cv2

    K = np.asarray(K, np.float64)
    xn = np.ascontiguousarray(normalize_points(uv, K)).reshape(-1, 1, 2)
    if distortion.model == "equidistant":
        return cv2.fisheye.distortPoints(xn, K, distortion.coeffs).reshape(-1, 2).astype(np.float64)
    X = np.concatenate([xn, np.ones((len(uv), 1, 1))], axis=2)
    return cv2.projectPoints(X, np.zeros(3), np.zeros(3), K, distortion.coeffs)[0].reshape(-1, 2)


def depth_at_undistorted(depth: np.ndarray, pts: np.ndarray, K: np.ndarray, distortion: "Distortion | None",
                         **kwargs) -> np.ndarray:
    """``depth_at`` for undistorted pixels ``pts`` of a depth image registered to the raw (distorted) image: read
    at their raw positions (``distort_points``). Without distortion: ``depth_at`` itself."""
    return depth_at(depth, distort_points(pts, K, distortion), **kwargs)


def undistort_features(feats, K: np.ndarray, distortion: "Distortion | None"):
    """``Features`` with undistorted keypoints (``undistort_points``); descriptors, scores, image_size and extra
    untouched (the same tensors), the raw keypoints kept in ``extra["raw_keypoints"]``. Without distortion: the
    same object."""
    if not _distorted(distortion) or not len(feats):
        return feats
    import torch

    from match_ros.core.features.types import Features

    kp = feats.keypoints
    ideal = undistort_points(kp.detach().cpu().numpy(), K, distortion)
    out = Features(torch.from_numpy(ideal).to(device=kp.device, dtype=kp.dtype), feats.descriptors, feats.scores,
                   feats.image_size, dict(feats.extra))
    out.extra["raw_keypoints"] = kp
    return out
