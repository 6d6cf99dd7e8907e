"""Accuracy against ground truth: pose errors and correspondence reprojection errors."""
from __future__ import annotations

import numpy as np

from .geometry import invert, normalize_points, rotation_error_deg, translation_angle_deg


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
    h, w = depth_ref.shape[:2]
    col = np.clip(np.round(pts_ref[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.round(pts_ref[:, 1]).astype(int), 0, h - 1)
    z = depth_ref[row, col].astype(np.float64)
    X_ref = np.column_stack([normalize_points(pts_ref, K_ref) * z[:, None], z])
    T_query_ref = invert(T_ref_query)
    X_q = X_ref @ T_query_ref[:3, :3].T + T_query_ref[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = (X_q @ K_query.T)[:, :2] / X_q[:, 2:3]
        err = np.linalg.norm(proj - np.asarray(pts_query, np.float64).reshape(-1, 2), axis=1)
    err[~(z > 0) | ~(X_q[:, 2] > 0)] = np.nan
    return err


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
        out[f"auc@{t:g}"] = float(np.trapezoid(r, x=e) / t)
    return out
