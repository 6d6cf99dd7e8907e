"""Photometric sub-pixel refinement of matches (Lucas-Kanade), shared by the backends that place matches
between pixels (``a2net_align`` on its pre-warped query, ``nemf_dense`` after its matching field)."""
from __future__ import annotations

import cv2
import numpy as np


def lucas_kanade(ref_grey: np.ndarray, query_grey: np.ndarray, p_ref: np.ndarray, p_query: np.ndarray, window: int,
                 max_move_px: float, fb_px: float = 0.0, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Refine the query positions of matches by Lucas-Kanade from the reference image into the query.

    ref_grey, query_grey: [H x W] uint8; p_ref, p_query: [M x 2] pixels (start of the search at p_query);
    window: LK window side [px]; levels: pyramid levels above the image (0: the image only).
    Returns (refined [M x 2] float64, ok [M] bool): ok where LK converged within ``max_move_px`` of p_query and,
    with ``fb_px`` > 0, tracking the refined point back into the reference lands within ``fb_px`` of p_ref.
    """
    p_ref = np.asarray(p_ref, np.float64).reshape(-1, 2)
    p_query = np.asarray(p_query, np.float64).reshape(-1, 2)
    if not len(p_ref):
        return p_query.copy(), np.zeros(0, bool)
    lk = {"winSize": (int(window), int(window)), "maxLevel": int(levels), "flags": cv2.OPTFLOW_USE_INITIAL_FLOW,
          "criteria": (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)}
    p0 = p_ref.astype(np.float32).reshape(-1, 1, 2)
    p1, status, _ = cv2.calcOpticalFlowPyrLK(ref_grey, query_grey, p0, p_query.astype(np.float32).reshape(-1, 1, 2),
                                             **lk)
    p1 = p1.reshape(-1, 2).astype(np.float64)
    ok = (status.reshape(-1) == 1) & (np.linalg.norm(p1 - p_query, axis=1) <= max_move_px)
    if fb_px > 0:
        back, status_b, _ = cv2.calcOpticalFlowPyrLK(query_grey, ref_grey, p1.astype(np.float32).reshape(-1, 1, 2),
                                                     p0.copy(), **lk)
        ok &= (status_b.reshape(-1) == 1) & (np.linalg.norm(back.reshape(-1, 2) - p_ref, axis=1) <= fb_px)
    return p1, ok


def grey_u8(image: np.ndarray) -> np.ndarray:
    """[H x W] or [H x W x 3] RGB uint8 -> [H x W] uint8."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def normalise_contrast(grey: np.ndarray, window: int = 15) -> np.ndarray:
    """[H x W] uint8 -> uint8 of (grey - local mean) / local deviation over window x window px, mapped around 128:
    brightness constancy between a dim, unevenly lit view and a bright one holds again (up to noise)."""
    g = grey.astype(np.float32)
    mean = cv2.blur(g, (window, window))
    std = np.sqrt(np.maximum(cv2.blur(g * g, (window, window)) - mean * mean, 0.0))
    return np.clip((g - mean) / (std + 4.0) * 40.0 + 128.0, 0, 255).astype(np.uint8)
