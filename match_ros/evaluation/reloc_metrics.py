"""Scoring relocalization against ground truth: recall at error thresholds, wrong poses, timing, retrieval hit
rates, covariance honesty (NEES), and the plots of a report.

A query record is one camera frame: its ground-truth pose, and the pose, covariance and timing the localizer or
the node gave (or none). The JSON keys of ``score`` are the report's: recall_5cm_2deg, recall_25cm_5deg,
recall_1m_10deg, wrong_poses (> 1 m or > 10 deg), no_pose, median_t_m, median_r_deg, ms_per_query_median,
ms_per_query_p95, retrieval_hit_at_1 / _3 / _10, nees_mean, nees_median, within_3sigma, integrity_failures
(accepted poses beyond 25 cm / 5 deg whose position sigma claims under 5 cm: the worst a localizer can do) and,
in continuous mode, the poses given per prior (odometry, last fix, ...).

These figures stay the package's own: evo (``trajectories``) evaluates trajectories (ATE / RPE of a pose per
frame), while relocalization is scored per query: recall at error thresholds, poses refused, retrieval hits and
the honesty of each pose's published covariance (NEES, integrity) are not evo metrics. The poses go out as TUM
files (``write_records_tum``) for evo all the same: ``evo_ape tum GT EST`` (no alignment: the poses are in the
map frame) gives the per-query translation errors of the poses given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from match_ros.core.geometry.absolute_pose import pose_difference, pose_sigmas
from match_ros.core.geometry.camera import project, transform_points
from match_ros.core.geometry.transforms import invert, rotation_error_deg

THRESHOLDS = ((0.05, 2.0, "recall_5cm_2deg"), (0.25, 5.0, "recall_25cm_5deg"), (1.0, 10.0, "recall_1m_10deg"))
WRONG_M, WRONG_DEG = 1.0, 10.0
# an integrity failure: a pose this far off (beyond either) that claims a position sigma under INTEGRITY_SIGMA_M
INTEGRITY_M, INTEGRITY_DEG, INTEGRITY_SIGMA_M = 0.25, 5.0, 0.05


@dataclass
class QueryRecord:
    """One query frame. T_est / covariance None when no pose was given; retrieved: ranked keyframe ids;
    hits: [k] bool per retrieved keyframe, does it see the query's view (``keyframe_sees_view``)."""

    stamp_ns: int
    T_gt: np.ndarray
    T_est: Optional[np.ndarray] = None
    covariance: Optional[np.ndarray] = None
    ms: float = float("nan")
    reason: str = ""
    mode: str = ""
    hits: list = field(default_factory=list)
    stages_ms: dict = field(default_factory=dict)
    prior: str = ""  # continuous mode: the prior the frame was tracked from (ContinuousLocalizer)
    stats: dict = field(default_factory=dict)  # the localizer's numbers (inliers, rival inliers, sigmas, ...)

    @property
    def errors(self) -> tuple[float, float]:
        """(translation [m], rotation [deg]); inf without a pose."""
        if self.T_est is None:
            return float("inf"), float("inf")
        return (float(np.linalg.norm(self.T_est[:3, 3] - self.T_gt[:3, 3])),
                rotation_error_deg(self.T_est[:3, :3], self.T_gt[:3, :3]))


def pose_error_vector(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """[6] error in the covariance's parameters (``pose_difference``): translation in the map frame, then the small
    rotation about the map axes taking the truth to the estimate."""
    return pose_difference(T_est, T_gt)


def nees(T_est: np.ndarray, T_gt: np.ndarray, cov: np.ndarray) -> tuple[float, float, float]:
    """(6-DoF NEES, position Mahalanobis distance, rotation Mahalanobis distance)."""
    e = pose_error_vector(T_est, T_gt)
    try:
        full = float(e @ np.linalg.solve(cov, e))
        pos = float(np.sqrt(e[:3] @ np.linalg.solve(cov[:3, :3], e[:3])))
        rot = float(np.sqrt(e[3:] @ np.linalg.solve(cov[3:, 3:], e[3:])))
    except np.linalg.LinAlgError:
        return float("inf"), float("inf"), float("inf")
    return full, pos, rot


def position_sigma_m(cov: np.ndarray) -> float:
    """Largest 1-sigma position uncertainty [m] of a [6 x 6] pose covariance (inf when not finite)."""
    if cov is None or not np.all(np.isfinite(cov)):
        return float("inf")
    return pose_sigmas(cov)[0]


def integrity_failure(r: "QueryRecord") -> bool:
    """An accepted pose beyond INTEGRITY_M / INTEGRITY_DEG whose position sigma claims under INTEGRITY_SIGMA_M."""
    if r.T_est is None:
        return False
    t, deg = r.errors
    return (t > INTEGRITY_M or deg > INTEGRITY_DEG) and position_sigma_m(r.covariance) < INTEGRITY_SIGMA_M


def keyframe_sees_view(kf, T_map_cam: np.ndarray, K: np.ndarray, size: tuple, min_share: float = 0.3,
                       max_angle_deg: float = 45.0) -> bool:
    """Ground-truth retrieval hit: at least min_share of the keyframe's 3D points lie in the view of the camera at
    T_map_cam (in the image, in front, seen from within max_angle_deg of the keyframe's direction)."""
    X = kf.points3d[np.all(np.isfinite(kf.points3d), axis=1)].astype(np.float64)
    if not len(X):
        return False
    uv, z = project(transform_points(invert(T_map_cam), X), K)
    inside = (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < size[0]) & (uv[:, 1] >= 0) & (uv[:, 1] < size[1])
    r_kf, r_cam = X - kf.T_world_cam[:3, 3], X - T_map_cam[:3, 3]
    cos = np.sum(r_kf * r_cam, 1) / np.maximum(np.linalg.norm(r_kf, axis=1) * np.linalg.norm(r_cam, axis=1), 1e-12)
    return float(np.mean(inside & (cos >= np.cos(np.radians(max_angle_deg))))) >= min_share


def score(records: list) -> dict:
    """The report's figures (module docstring) from query records."""
    n = max(len(records), 1)
    err = np.array([r.errors for r in records]).reshape(-1, 2)
    posed = np.isfinite(err[:, 0])
    out = {"queries": len(records), "poses": int(posed.sum())}
    for t, r, key in THRESHOLDS:
        out[key] = float(np.sum((err[:, 0] < t) & (err[:, 1] < r)) / n)
    out["wrong_poses"] = int(np.sum(posed & ((err[:, 0] > WRONG_M) | (err[:, 1] > WRONG_DEG))))
    out["no_pose"] = int(np.sum(~posed))
    out["median_t_m"] = float(np.median(err[posed, 0])) if posed.any() else float("nan")
    out["median_r_deg"] = float(np.median(err[posed, 1])) if posed.any() else float("nan")
    ms = np.array([r.ms for r in records if np.isfinite(r.ms)])
    out["ms_per_query_median"] = float(np.median(ms)) if len(ms) else float("nan")
    out["ms_per_query_p95"] = float(np.percentile(ms, 95)) if len(ms) else float("nan")
    with_hits = [r for r in records if r.hits]
    for k in (1, 3, 10):
        out[f"retrieval_hit_at_{k}"] = (float(np.mean([any(r.hits[:k]) for r in with_hits])) if with_hits
                                        else float("nan"))
    stats = [nees(r.T_est, r.T_gt, r.covariance) for r in records
             if r.T_est is not None and r.covariance is not None and np.all(np.isfinite(r.covariance))]
    if stats:
        s = np.array(stats)
        out["nees_mean"] = float(np.mean(s[:, 0]))
        out["nees_median"] = float(np.median(s[:, 0]))
        out["within_3sigma"] = float(np.mean((s[:, 1] <= 3.0) & (s[:, 2] <= 3.0)))
    else:
        out["nees_mean"] = out["nees_median"] = out["within_3sigma"] = float("nan")
    out["integrity_failures"] = sum(1 for r in records if integrity_failure(r))
    priors = [r.prior for r in records if r.T_est is not None and r.prior]
    if priors:
        out["poses_by_prior"] = {k: priors.count(k) for k in sorted(set(priors))}
    stages = sorted({k for r in records for k in r.stages_ms})
    out["stages_ms_median"] = {k: float(np.median([r.stages_ms.get(k, 0.0) for r in records])) for k in stages}
    modes = [r.mode for r in records if r.T_est is not None and r.mode]
    if modes:
        out["tracking_share"] = float(np.mean([m == "tracking" for m in modes]))
    return out


def write_records_tum(out_dir, prefix: str, records: list) -> tuple[Path, Path]:
    """``<out_dir>/<prefix>_groundtruth.tum`` (every query frame) and ``<prefix>_estimate.tum`` (the poses given;
    frames without one are left out) from query records; returns (groundtruth path, estimate path)."""
    from match_ros.evaluation.trajectories import write_tum_pair

    return write_tum_pair(out_dir, prefix, [(r.stamp_ns, r.T_est) for r in records if r.T_est is not None],
                          [(r.stamp_ns, r.T_gt) for r in records])


def plot_report(out_dir: Path, records: list, keyframe_positions: np.ndarray, title: str) -> list:
    """trajectory.png (top view: ground truth, map keyframes, poses given) and errors.png (error over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    gt = np.array([r.T_gt[:3, 3] for r in records]).reshape(-1, 3)
    est = np.array([r.T_est[:3, 3] for r in records if r.T_est is not None]).reshape(-1, 3)
    wrong = np.array([r.T_est[:3, 3] for r in records if r.T_est is not None
                      and (r.errors[0] > WRONG_M or r.errors[1] > WRONG_DEG)]).reshape(-1, 3)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(gt[:, 0], gt[:, 1], "-", color="0.6", label="query ground truth")
    ax.scatter(keyframe_positions[:, 0], keyframe_positions[:, 1], marker="^", s=25, color="tab:green",
               label="map keyframes")
    ax.scatter(est[:, 0], est[:, 1], s=10, color="tab:blue", label="poses given")
    if len(wrong):
        ax.scatter(wrong[:, 0], wrong[:, 1], s=40, marker="x", color="tab:red", label="wrong (> 1 m / 10 deg)")
    ax.set_aspect("equal")
    ax.set_xlabel("x [m] (map)")
    ax.set_ylabel("y [m] (map)")
    ax.set_title(f"{title}: trajectory (top view)")
    ax.legend(loc="best", fontsize=8)
    p1 = out_dir / "trajectory.png"
    fig.savefig(p1, dpi=110, bbox_inches="tight")
    plt.close(fig)
    t0 = records[0].stamp_ns if records else 0
    fig, ax = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ts = np.array([(r.stamp_ns - t0) * 1e-9 for r in records])
    e = np.array([r.errors for r in records]).reshape(-1, 2)
    ok = np.isfinite(e[:, 0])
    ax[0].semilogy(ts[ok], np.maximum(e[ok, 0], 1e-4), ".", color="tab:blue")
    ax[0].plot(ts[~ok], np.full((~ok).sum(), 3.0), "|", color="tab:red", label="no pose")
    ax[0].axhline(0.05, ls="--", color="0.5")
    ax[0].set_ylabel("translation error [m]")
    ax[0].legend(loc="upper right", fontsize=8)
    ax[1].semilogy(ts[ok], np.maximum(e[ok, 1], 1e-3), ".", color="tab:orange")
    ax[1].axhline(2.0, ls="--", color="0.5")
    ax[1].set_ylabel("rotation error [deg]")
    ax[1].set_xlabel("time [s]")
    ax[0].set_title(f"{title}: error against ground truth")
    p2 = out_dir / "errors.png"
    fig.savefig(p2, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [p1, p2]
