"""Accuracy against ground truth: pose errors and correspondence reprojection errors."""
from __future__ import annotations

import cv2
import numpy as np

from match_ros.core.geometry.transforms import invert, rotation_error_deg, translation_angle_deg
from match_ros.core.geometry.camera import backproject, depth_at, project, transform_points


def relative_pose_gt(T_world_ref: np.ndarray, T_world_query: np.ndarray) -> np.ndarray:
    """Ground-truth T_ref_query from two camera poses in a common world frame."""
    return invert(T_world_ref) @ T_world_query


def pose_errors(T_est: np.ndarray, T_gt: np.ndarray, scale_known: bool) -> dict:
    """rotation [deg]; translation: metres when scale_known, else direction angle [deg]."""
    out = {"rot_deg": rotation_error_deg(T_est[:3, :3], T_gt[:3, :3])}
    if scale_known:
        out["trans_m"] = float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3]))
    else:
        out["trans_deg"] = translation_angle_deg(T_est[:3, 3], T_gt[:3, 3])
    return out


def transfer_errors(pts_ref: np.ndarray, pts_query: np.ndarray, depth_ref: np.ndarray, K_ref: np.ndarray,
                    K_query: np.ndarray, T_ref_query: np.ndarray) -> np.ndarray:
    """Per-match distance [px] between the query point and the reference point transferred
    into the query image through ground-truth depth and pose; NaN where depth is missing.

    pts_ref, pts_query: [M x 2] pixels; depth_ref: [H x W] metres (0 = none)
    """
    pts_ref = np.asarray(pts_ref, np.float64).reshape(-1, 2)
    z = depth_at(depth_ref, pts_ref)
    proj, z_q = project(transform_points(invert(T_ref_query), backproject(pts_ref, z, K_ref)), K_query)
    with np.errstate(invalid="ignore"):
        err = np.linalg.norm(proj - np.asarray(pts_query, np.float64).reshape(-1, 2), axis=1)
    err[~np.isfinite(z) | ~(z_q > 0)] = np.nan
    return err


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it; distros ship numpy 1.x


def pose_auc(errors_deg, thresholds=(5.0, 10.0, 20.0)) -> dict:
    """Area under the recall curve of pose errors up to each threshold (as in SuperGlue/LightGlue)."""
    errors = np.sort(np.nan_to_num(np.asarray(errors_deg, np.float64), nan=np.inf))
    recall = (np.arange(len(errors)) + 1) / max(len(errors), 1)
    errors, recall = np.r_[0.0, errors], np.r_[0.0, recall]
    out = {}
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        out[f"auc@{t:g}"] = float(_trapezoid(r, x=e) / t)
    return out


def homography_corner_error(H_est: np.ndarray, H_gt: np.ndarray, width: int, height: int) -> float:
    """Mean distance [px] between the image corners mapped by two homographies."""
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    a = cv2.perspectiveTransform(corners[None], H_est)[0]
    b = cv2.perspectiveTransform(corners[None], H_gt)[0]
    return float(np.linalg.norm(a - b, axis=1).mean())
