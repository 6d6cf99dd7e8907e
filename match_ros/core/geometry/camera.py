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
