"""Trajectories out in TUM format, and ATE / RPE through evo (the de-facto trajectory evaluation tool).

Every evaluation that has an estimated and a true trajectory writes both as TUM files
(``timestamp tx ty tz qx qy qz qw``, seconds with nine decimals, T_world_cam: the camera optical frame in the world
or map frame) with ``write_tum_pair``, and prints the ``evo_ape`` command that computes the same figure from them
(``evo_command``). ``ate_rpe`` computes the absolute and relative errors with ``evo.core`` (evo's APE / RPE metrics,
its origin alignment and Umeyama SE(3) / Sim(3) fits); the evaluations add only what evo has no metric for
(drift as a share of the distance, covariance honesty).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from match_ros.tools.render import write_tum

ALIGNMENTS = ("origin", "se3", "sim3", "none")
# what evo_ape does for each alignment (the evo_ape / evo_rpe options)
EVO_ALIGN_FLAGS = {"origin": "--align_origin", "se3": "-a", "sim3": "-as", "none": ""}


def _evo():
    """evo.core's metrics and PosePath3D; an error that names the requirement when evo is not installed."""
    try:
        from evo.core import metrics
        from evo.core.trajectory import PosePath3D
    except ImportError as exc:  # pragma: no cover - evo is in requirements.txt
        raise ImportError("the trajectory evaluation needs evo (pip install -r requirements.txt: evo==1.38.0)") \
            from exc
    return metrics, PosePath3D


def write_tum_pair(out_dir, prefix: str, estimate: list, groundtruth: list) -> tuple[Path, Path]:
    """Write ``<out_dir>/<prefix>_estimate.tum`` and ``<prefix>_groundtruth.tum`` from [(stamp_ns, T 4 x 4)] each
    (the estimate may have fewer poses: frames without one are left out; evo associates by timestamp).
    Returns (groundtruth path, estimate path), the order evo_ape takes them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gt_path, est_path = out_dir / f"{prefix}_groundtruth.tum", out_dir / f"{prefix}_estimate.tum"
    write_tum(gt_path, sorted(groundtruth, key=lambda p: p[0]))
    write_tum(est_path, sorted(estimate, key=lambda p: p[0]))
    return gt_path, est_path


def evo_command(gt_path, est_path, align: str = "origin", metric: str = "ape") -> str:
    """The evo command line (``evo_ape`` / ``evo_rpe``) that evaluates the estimate file against the ground truth
    with the given alignment (``ALIGNMENTS``)."""
    flag = EVO_ALIGN_FLAGS[align]
    return " ".join(s for s in (f"evo_{metric} tum", str(gt_path), str(est_path), flag) if s)


def ate_rpe(T_est: list, T_gt: list, align: str = "origin", rpe_delta_m: float = 1.0,
            rpe_rel_tol: float = 0.1) -> dict:
    """ATE and RPE of [N] estimated poses against [N] true poses of the same frames (already associated), with evo.

    align: ``origin`` (the first estimated pose moved onto the first true one: evo's ``align_origin``, what an
    odometry has as its only anchor), ``se3`` / ``sim3`` (Umeyama fit of the positions, evo's ``align`` /
    ``-a`` / ``-as``; ValueError when the positions allow no unique fit: on a line) or ``none``.
    RPE: evo's RPE over all pairs (i, j) whose ground-truth path between them is closest to ``rpe_delta_m``
    within ``rpe_rel_tol`` of it (evo's ``all_pairs`` with ``delta_unit`` metres, pairs from the reference);
    none when the run is shorter.

    Returns: ``ate_rmse_m`` (RMS position error), ``position_errors_m`` [N], ``rotation_errors_deg`` [N] (evo APE
    per frame), ``alignment`` (4 x 4 applied to the estimate, scale in the rotation block for sim3), ``scale``,
    ``estimate`` [N] (the aligned poses), ``distance_m`` [N] (ground-truth path length to each frame),
    ``rpe_pairs`` [(i, j)], ``rpe_t_m`` / ``rpe_t_pct`` (translation error per pair, in metres and per cent of the
    pair's ground-truth path), ``rpe_r_deg`` (rotation error per pair)."""
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}")
    if len(T_est) != len(T_gt) or not len(T_est):
        raise ValueError(f"need as many estimated as true poses, at least one ({len(T_est)} vs {len(T_gt)})")
    metrics, PosePath3D = _evo()
    ref = PosePath3D(poses_se3=[np.asarray(T, dtype=np.float64) for T in T_gt])
    est = PosePath3D(poses_se3=[np.asarray(T, dtype=np.float64) for T in T_est])
    A, scale = np.eye(4), 1.0
    if align == "origin":
        A = est.align_origin(ref)
    elif align in ("se3", "sim3"):
        from evo.core.geometry import GeometryException

        try:
            R, t, scale = est.align(ref, correct_scale=align == "sim3")
        except GeometryException as exc:  # positions on a line or fewer than three: no unique fit
            raise ValueError(f"no {align} fit of these positions: {exc}") from None
        A[:3, :3], A[:3, 3] = scale * R, t
    ape_t = metrics.APE(metrics.PoseRelation.translation_part)
    ape_t.process_data((ref, est))
    ape_r = metrics.APE(metrics.PoseRelation.rotation_angle_deg)
    ape_r.process_data((ref, est))
    out = {"ate_rmse_m": float(ape_t.get_statistic(metrics.StatisticsType.rmse)),
           "position_errors_m": np.asarray(ape_t.error, dtype=np.float64),
           "rotation_errors_deg": np.asarray(ape_r.error, dtype=np.float64),
           "alignment": A, "scale": float(scale), "estimate": list(est.poses_se3),
           "distance_m": np.asarray(ref.distances, dtype=np.float64),
           "rpe_pairs": [], "rpe_t_m": np.zeros(0), "rpe_t_pct": np.zeros(0), "rpe_r_deg": np.zeros(0)}
    if len(T_est) < 2:
        return out
    # the pairs evo's RPE takes (the same call inside RPE.process_data; evo keeps only their second indices)
    from evo.core.filters import FilterException

    try:
        pairs = metrics.id_pairs_from_delta(ref.poses_se3, rpe_delta_m, metrics.Unit.meters, rpe_rel_tol,
                                            all_pairs=True)
    except FilterException:  # a run shorter than the delta: no pair
        return out
    errors = {}
    for relation in (metrics.PoseRelation.translation_part, metrics.PoseRelation.rotation_angle_deg):
        rpe = metrics.RPE(relation, rpe_delta_m, metrics.Unit.meters, rpe_rel_tol, all_pairs=True,
                          pairs_from_reference=True)
        rpe.process_data((ref, est))
        errors[relation] = np.asarray(rpe.error, dtype=np.float64)
    dist = out["distance_m"]
    path = np.array([dist[j] - dist[i] for i, j in pairs])
    out.update(rpe_pairs=[(int(i), int(j)) for i, j in pairs],
               rpe_t_m=errors[metrics.PoseRelation.translation_part],
               rpe_r_deg=errors[metrics.PoseRelation.rotation_angle_deg])
    out["rpe_t_pct"] = 100.0 * out["rpe_t_m"] / np.maximum(path, 1e-9)
    return out
