"""Training pairs with exact ground truth, and keypoint-level match labels.

Two sources (both pure numpy + OpenCV, seeded, so a recorded configuration reproduces the data):
- ``homography_pair``: one real photo seen through two random homographies with independent photometric
  changes (the self-supervised scheme of SuperPoint/OmniGlue's first stages). Ground truth: H_01.
- ``rendered_pair``: two frames of a rendered scene (``match_ros.sim``) with exact depth and poses.
  Ground truth: depth transfer with an occlusion check.

``match_labels`` turns either into per-keypoint labels: the index of the matching keypoint in the other
image, ``UNMATCHED`` (no keypoint near its true position) or ``IGNORE`` (ambiguous, left out of the loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from match_ros.core.config import merge_conf
from match_ros.core.geometry.camera import backproject, depth_at, project, transform_points

UNMATCHED = -1
IGNORE = -2


@dataclass
class Pair:
    """Two RGB images and a function mapping image-0 pixels into image 1.

    transfer(pts [N x 2]) -> (pts in image 1 [N x 2], valid [N] bool); valid is False where the point
    leaves image 1, is occluded or has no depth.
    """

    image0: np.ndarray
    image1: np.ndarray
    transfer01: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    transfer10: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    source: str


default_homography_conf = {
    "size": (320, 240),  # (width, height) of both views [px]
    "max_rotation_deg": 25.0,  # in-plane rotation of view 1 relative to view 0, uniform in +-this
    "scale_range": (0.6, 1.6),  # zoom of view 1 relative to view 0 (log-uniform)
    "perspective": 0.15,  # corner displacement of view 1, fraction of the view size
    "photometric": True,  # independent brightness, contrast, gamma, noise and blur per view
    "changed_day": 0.0,  # share of pairs whose view 1 also gets a changed day's light and blur (changed_day())
}


def _view_homography(photo_hw, size, rng, rotation_deg, scale, perspective, centre) -> np.ndarray:
    """H mapping view pixels -> photo pixels: a rotated, scaled rectangle around ``centre`` with its
    corners moved by up to ``perspective`` x view size."""
    w, h = size
    ph, pw = photo_hw
    base = 0.8 * min(pw / w, ph / h)  # view covers most of the photo at scale 1
    half = 0.5 * base / scale * np.array([w, h])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    corners += rng.uniform(-perspective, perspective, (4, 2)) * half * 2
    a = np.deg2rad(rotation_deg)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = corners @ R.T + centre
    view = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float64)
    return cv2.getPerspectiveTransform(view.astype(np.float32), quad.astype(np.float32)).astype(np.float64)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, gamma, Gaussian noise and (sometimes) blur of a uint8 image."""
    x = image.astype(np.float32) / 255.0
    x = np.clip(x ** np.exp(rng.uniform(np.log(0.6), np.log(1.6))), 0, 1)
    x = (x - 0.5) * rng.uniform(0.6, 1.4) + 0.5 + rng.uniform(-0.15, 0.15)
    x = np.clip(x, 0, 1) * 255.0
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
    x = x + rng.normal(0.0, rng.uniform(0.0, 6.0), x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def changed_day(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A changed day's look of a uint8 view, as ``make_changed_day_sequence`` renders one: dim ambient light plus
    one light falling off from a random point (uneven), a strong gamma, motion blur of 5-15 px on 30 % of the
    views and noise of 5 grey levels."""
    from match_ros.sim.scene import motion_blur

    h, w = image.shape[:2]
    x = image.astype(np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h
    falloff = rng.uniform(0.4, 1.2) * max(w, h)
    light = rng.uniform(0.2, 0.4) + 1.0 / (1.0 + ((xx - lx) ** 2 + (yy - ly) ** 2) / falloff ** 2)
    x = np.clip(x * light[..., None] if x.ndim == 3 else x * light, 0, 1) ** rng.uniform(0.7, 1.4)
    x = x * 255.0
    if rng.random() < 0.3:
        x = motion_blur(x, rng.uniform(5.0, 15.0), rng.uniform(0.0, 180.0))
    x = x + rng.normal(0.0, 5.0, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _apply_h(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.column_stack([pts, np.ones(len(pts))]) @ H.T
    return p[:, :2] / p[:, 2:3]


def homography_pair(photo: np.ndarray, rng: np.random.Generator, conf: Optional[dict] = None,
                    source: str = "") -> Pair:
    """A pair from one photo: view 0 a mildly rotated crop, view 1 rotated, zoomed and in perspective."""
    c = merge_conf(default_homography_conf, conf, "homography pair")
    w, h = (int(v) for v in c["size"])
    ph, pw = photo.shape[:2]
    centre = np.array([pw, ph]) / 2 + rng.uniform(-0.15, 0.15, 2) * np.array([pw, ph])
    H0 = _view_homography((ph, pw), (w, h), rng, rng.uniform(-5, 5), 1.0, 0.03, centre)
    lo, hi = np.log(c["scale_range"][0]), np.log(c["scale_range"][1])
    rot = rng.uniform(-c["max_rotation_deg"], c["max_rotation_deg"])
    H1 = _view_homography((ph, pw), (w, h), rng, rot, float(np.exp(rng.uniform(lo, hi))), c["perspective"],
                          centre + rng.uniform(-0.1, 0.1, 2) * np.array([pw, ph]))
    views = [cv2.warpPerspective(photo, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT) for H in (H0, H1)]
    if c["photometric"]:
        views = [photometric(v, rng) for v in views]
    if float(c["changed_day"]) > 0 and rng.random() < float(c["changed_day"]):
        views[1] = changed_day(views[1], rng)
    H01 = np.linalg.inv(H1) @ H0  # view-0 px -> photo px -> view-1 px
    return Pair(views[0], views[1], _homography_transfer(H01, H0, (w, h), (pw, ph)),
                _homography_transfer(np.linalg.inv(H01), H1, (w, h), (pw, ph)), source or "homography")


def _homography_transfer(H_ab, H_a_photo, size_b, photo_size):
    """Pixels of view a -> view b through H_ab; valid where the point lands inside view b and view a shows the
    photo there (outside it, both views show the black border: no ground truth)."""
    w, h = size_b
    pw, ph = photo_size

    def f(pts):
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        q, p = _apply_h(H_ab, pts), _apply_h(H_a_photo, pts)
        ok = (q[:, 0] >= -0.5) & (q[:, 0] <= w - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= h - 0.5)
        ok &= (p[:, 0] >= 0) & (p[:, 0] <= pw - 1) & (p[:, 1] >= 0) & (p[:, 1] <= ph - 1)
        return q, ok

    return f


def _depth_transfer(depth_a, K_a, K_b, T_b_a, depth_b, size_b, rel_occlusion=0.03):
    """Pixels of image a -> image b through depth_a and T_b_a, with an occlusion check against depth_b."""
    w, h = size_b

    def f(pts):
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        z = depth_at(depth_a, pts)
        X = transform_points(T_b_a, backproject(pts, z, K_a))
        q, _ = project(X, K_b)
        ok = np.isfinite(z) & (X[:, 2] > 1e-3) & np.isfinite(q).all(1)
        ok &= (q[:, 0] >= -0.5) & (q[:, 0] <= w - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= h - 0.5)
        cb = np.clip(np.round(np.nan_to_num(q[:, 0])).astype(int), 0, w - 1)
        rb = np.clip(np.round(np.nan_to_num(q[:, 1])).astype(int), 0, h - 1)
        zb = depth_b[rb, cb]
        ok &= (zb > 0) & (np.abs(zb - X[:, 2]) < rel_occlusion * X[:, 2])
        return q, ok

    return f


def rendered_pair(frame0, frame1, K: np.ndarray, source: str = "") -> Pair:
    """A pair of rendered frames (``match_ros.sim.scene.Frame`` with depth) seen by one camera K."""
    from match_ros.core.geometry.transforms import invert

    T_1_0 = invert(frame1.T_world_cam) @ frame0.T_world_cam
    h, w = frame0.depth.shape
    return Pair(frame0.rgb, frame1.rgb, _depth_transfer(frame0.depth, K, K, T_1_0, frame1.depth, (w, h)),
                _depth_transfer(frame1.depth, K, K, invert(T_1_0), frame0.depth, (w, h)), source or "rendered")


def match_labels(kpts0: np.ndarray, kpts1: np.ndarray, pair: Pair, pos_px: float = 3.0,
                 neg_px: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-keypoint labels from ground truth, symmetric in the two images.

    A (i, j) positive: j is the nearest keypoint to i's true position in image 1 and i the nearest to j's true
    position in image 0 (reprojection distance max of the two directions < ``pos_px``).
    UNMATCHED: the true position leaves the other image / is occluded, or no keypoint lies within ``neg_px``
    of it (in either direction). Everything else: IGNORE.
    Returns (labels0 [N0] int64, labels1 [N1] int64).
    """
    n0, n1 = len(kpts0), len(kpts1)
    labels0, labels1 = np.full(n0, IGNORE, np.int64), np.full(n1, IGNORE, np.int64)
    if n0 == 0 or n1 == 0:
        labels0[:], labels1[:] = UNMATCHED, UNMATCHED
        return labels0, labels1
    p01, ok0 = pair.transfer01(kpts0)
    p10, ok1 = pair.transfer10(kpts1)
    d01 = np.linalg.norm(p01[:, None] - kpts1[None], axis=-1)  # [N0 x N1] error measured in image 1
    d10 = np.linalg.norm(kpts0[:, None] - p10[None], axis=-1)  # [N0 x N1] error measured in image 0
    d01[~ok0] = np.inf
    d10[:, ~ok1] = np.inf
    d = np.maximum(d01, d10)
    nn01, nn10 = d.argmin(1), d.argmin(0)
    i = np.arange(n0)
    mutual = (nn10[nn01] == i) & (d[i, nn01] < pos_px)
    labels0[mutual] = nn01[mutual]
    labels1[nn01[mutual]] = i[mutual]
    unmatched0 = (~ok0 | (d01.min(1) > neg_px)) & ~mutual
    matched1 = np.zeros(n1, bool)
    matched1[nn01[mutual]] = True
    unmatched1 = (~ok1 | (d10.min(0) > neg_px)) & ~matched1
    labels0[unmatched0], labels1[unmatched1] = UNMATCHED, UNMATCHED
    return labels0, labels1
