"""Photometric consistency of a relative motion: a check of RGB-D odometry that needs no ground truth.

With the reference frame's depth, a relative motion T_ref_query predicts where every reference pixel appears in
the query image: back-project the pixel with its depth, move the point into the query camera, project it. Sampling
the query image there (the query warped into the reference view) and comparing grey values with the reference
image gives a photometric error; the true motion makes it small, a wrong one larger. An estimate is *consistent*
when it has a lower error than no motion at all (identity; unless the estimate is within half a perturbation
step of it) and than every small perturbation of itself (``perturbations``: +-2 cm along and +-1 deg about each axis
by default): it sits at a minimum of the photometric error, as it should if it is right to within the
perturbation's size. The perturbations are coarse: an error along a direction the images barely see (a turn about
a point at the scene's depth) passes them; the comparison with identity catches such errors between frames that
hardly moved.

All motions of one comparison are scored over the same pixels (those valid under every one of them), so a motion
cannot win by moving pixels out of the image. The error is the mean absolute difference of grey values [0-255]
(occlusions, specularities and exposure changes add the same to every motion's error and do not decide).

Frames follow REP 103 (optical: z forward, x right, y down); ``T_ref_query`` maps query-camera points into the
reference camera (the pose of the query camera in the reference frame), as in ``two_view.RelativePose``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from match_ros.core.geometry.camera import check_K
from match_ros.core.geometry.transforms import invert, perturb_pose, rotation_error_deg


def _gray(image: np.ndarray, name: str) -> np.ndarray:
    """[H x W] float32 grey values of a uint8 (or float) [H x W] / [H x W x 3] RGB image."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"{name} must be [H x W] or [H x W x 3], got {image.shape}")
    return image.astype(np.float32)


def photometric_errors(image_ref: np.ndarray, depth_ref: np.ndarray, image_query: np.ndarray, K: np.ndarray,
                       motions, K_query: np.ndarray | None = None, stride: int = 2, border_px: float = 2.0,
                       min_depth_m: float = 0.05, max_depth_m: float = 100.0,
                       mask: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Mean absolute grey-value difference between the reference image and the query image warped into it, for
    each of C motions, over the pixels valid under all of them.

    image_ref, image_query: [H x W] or [H x W x 3] (uint8 RGB or grey)
    depth_ref:  [H x W] metres, aligned with image_ref (0 / NaN / inf = none)
    K:          [3 x 3] camera matrix of the reference image (and of the query unless K_query is given)
    motions:    [C x 4 x 4] (or one [4 x 4]) T_ref_query candidates
    stride:     every stride-th pixel in each direction is used (1: all)
    border_px:  a pixel must land this far inside the query image
    mask:       optional [H x W] bool, the reference pixels to compare (e.g. ``support_mask``: the part of the
                image the motion claims to explain, when another part moves otherwise)
    Returns (errors [C] in grey levels 0-255, number of pixels compared); errors are NaN when none is valid.
    """
    ref, query = _gray(image_ref, "image_ref"), _gray(image_query, "image_query")
    depth = np.asarray(depth_ref, np.float64)
    if depth.shape != ref.shape:
        raise ValueError(f"depth_ref {depth.shape} does not match image_ref {ref.shape}")
    K = check_K(K)
    Kq = K if K_query is None else check_K(K_query)
    Ts = np.asarray(motions, np.float64)
    Ts = Ts[None] if Ts.ndim == 2 else Ts
    if Ts.ndim != 3 or Ts.shape[1:] != (4, 4) or not np.all(np.isfinite(Ts)):
        raise ValueError(f"motions must be finite [C x 4 x 4] (or [4 x 4]), got shape {Ts.shape}")
    if int(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if mask is not None and np.shape(mask) != ref.shape:
        raise ValueError(f"mask {np.shape(mask)} does not match image_ref {ref.shape}")
    rows, cols = np.mgrid[0:ref.shape[0]:int(stride), 0:ref.shape[1]:int(stride)]
    z = depth[rows, cols]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(z) & (z >= min_depth_m) & (z <= max_depth_m)
    if mask is not None:
        ok &= np.asarray(mask, bool)[rows, cols]
    rows, cols, z = rows[ok], cols[ok], z[ok]
    X = np.column_stack([(cols - K[0, 2]) / K[0, 0] * z, (rows - K[1, 2]) / K[1, 1] * z, z])  # [N x 3], ref
    hq, wq = query.shape
    valid = np.ones(len(z), bool)
    maps = []
    for T in Ts:
        T_query_ref = invert(T)
        Xq = X @ T_query_ref[:3, :3].T + T_query_ref[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = Kq[0, 0] * Xq[:, 0] / Xq[:, 2] + Kq[0, 2]
            v = Kq[1, 1] * Xq[:, 1] / Xq[:, 2] + Kq[1, 2]
        valid &= (Xq[:, 2] > min_depth_m) & (u >= border_px) & (u <= wq - 1 - border_px) & (v >= border_px) & (
            v <= hq - 1 - border_px)
        maps.append((u, v))
    n = int(valid.sum())
    if n == 0:
        return np.full(len(Ts), np.nan), 0
    reference = ref[rows[valid], cols[valid]]
    errors = [float(np.mean(np.abs(_bilinear(query, u[valid], v[valid]) - reference))) for u, v in maps]
    return np.array(errors), n


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[N] values of a [H x W] float image at sub-pixel positions (u = column, v = row), all inside the image."""
    h, w = image.shape
    x0 = np.clip(np.floor(u).astype(np.int64), 0, w - 2)
    y0 = np.clip(np.floor(v).astype(np.int64), 0, h - 2)
    ax, ay = (u - x0).astype(np.float32), (v - y0).astype(np.float32)
    top = image[y0, x0] * (1 - ax) + image[y0, x0 + 1] * ax
    bottom = image[y0 + 1, x0] * (1 - ax) + image[y0 + 1, x0 + 1] * ax
    return top * (1 - ay) + bottom * ay


def support_mask(points: np.ndarray, shape: tuple[int, int], radius_px: float = 24.0) -> np.ndarray:
    """[H x W] bool: the pixels within radius_px of any of the points [N x 2] (x = column, y = row), e.g. the
    inliers of the pose being checked: the part of the image its matches say it explains."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0 or radius_px < 0:
        raise ValueError(f"invalid shape {shape} or radius {radius_px}")
    seeds = np.zeros((h, w), np.uint8)
    p = np.round(np.asarray(points, np.float64).reshape(-1, 2)).astype(np.int64)
    p = p[(p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)]
    seeds[p[:, 1], p[:, 0]] = 1
    r = int(np.ceil(radius_px))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(seeds, disc) > 0


def perturbations(T: np.ndarray, step_m: float = 0.02, step_deg: float = 1.0) -> np.ndarray:
    """[12 x 4 x 4]: T moved by +-step_m along each axis, then turned by +-step_deg about each axis (about the
    parent's axes at the frame's origin, ``transforms.perturb_pose``)."""
    if not (step_m >= 0 and step_deg >= 0):
        raise ValueError(f"perturbation steps must be >= 0, got {step_m} m / {step_deg} deg")
    deltas = np.vstack([np.eye(6)[:3] * step_m, np.eye(6)[3:] * np.radians(step_deg)])
    return np.array([perturb_pose(T, s * d) for d in deltas for s in (1.0, -1.0)])


@dataclass
class PhotometricCheck:
    """Photometric errors [grey levels] of an estimated motion against identity and its perturbations.

    estimate, identity: errors of T_ref_query and of no motion
    perturbed:          [12] errors of the perturbed estimates (``perturbations`` order: +x, -x, +y, ... +rz, -rz)
    pixels:             how many pixels were compared
    identity_is_rival:  the estimate is at least half a perturbation step from identity; closer, the two are the
                        same motion at the check's resolution (a still camera's estimate differs from identity by
                        its noise, and either may score lower), and identity does not count
    consistent:         the estimate's error is below every perturbed one's, and below identity's when it is a rival
    """

    estimate: float
    identity: float
    perturbed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pixels: int = 0
    identity_is_rival: bool = True

    @property
    def consistent(self) -> bool:
        beats_identity = self.estimate < self.identity or not self.identity_is_rival
        return bool(self.pixels > 0 and beats_identity and np.all(self.estimate < self.perturbed))


def check_motion(image_ref: np.ndarray, depth_ref: np.ndarray, image_query: np.ndarray, K: np.ndarray,
                 T_ref_query: np.ndarray, step_m: float = 0.02, step_deg: float = 1.0, **kwargs) -> PhotometricCheck:
    """Compare an estimated T_ref_query [4 x 4] with identity and its 12 perturbations (``photometric_errors``'
    arguments; kwargs go to it)."""
    T = np.asarray(T_ref_query, np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T_ref_query must be [4 x 4], got {T.shape}")
    motions = np.concatenate([T[None], np.eye(4)[None], perturbations(T, step_m, step_deg)])
    errors, n = photometric_errors(image_ref, depth_ref, image_query, K, motions, **kwargs)
    rival = bool(np.linalg.norm(T[:3, 3]) >= 0.5 * step_m
                 or rotation_error_deg(T[:3, :3], np.eye(3)) >= 0.5 * step_deg)
    return PhotometricCheck(float(errors[0]), float(errors[1]), errors[2:], n, rival)
