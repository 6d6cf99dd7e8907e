"""RGB-D visual odometry against ground truth: drift, ATE and RPE on rendered sequences and the chessboard views.

    match_ros_eval_odometry [--scenes room corridor facade office street] [--frames 300] [--chessboard]
                            [--matcher xfeat_lighterglue] [--depth-noise] [--out DIR] [--json FILE]

Every frame goes through the core ``VisualOdometry`` (no frame dropped). The estimate is compared with the
ground truth after aligning the first frame only (odometry has no other anchor; no trajectory fitting), so the
figures are what a robot would see:

- ``drift_end_pct``: position error at the last frame / distance travelled (%), ``drift_max_pct``: the largest
  position error over the run / distance travelled;
- ``ate_rmse_m``: RMS position error over all frames; ``rpe_1m_pct`` / ``rpe_1m_deg``: median error of the
  relative motion over 1 m of travel (translation % of the pair's path, rotation deg), over every pair of frames
  whose ground-truth path between them is closest to 1 m (within 10 %); ``ate_se3_rmse_m``: the ATE after an
  SE(3) Umeyama fit of the whole trajectory (``evo_ape -a``; nan on a line). ATE and RPE are computed by evo;
- ``ms_per_frame_median``, ``keyframes``, ``lost_frames``; ``within_3sigma``: share of frames whose position
  error is inside the published covariance's 3-sigma ellipsoid.

``--depth-noise`` adds the noise of a structured-light RGB-D camera (sigma = 1.5 mm * z^2, per pixel) to the
rendered depth. Plots: ``<out>/<scene>_trajectory.png`` (top view) and ``<scene>_error.png`` (error over distance).
Trajectories: ``<out>/<scene>_estimate.tum`` (the odometry's poses as it gave them, odom frame) and
``<out>/<scene>_groundtruth.tum`` (world frame), TUM format; ``evo_ape tum <out>/<scene>_groundtruth.tum
<out>/<scene>_estimate.tum --align_origin`` gives the ATE above (``-a``: the SE(3)-fitted one).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS

SCENES = ("room", "corridor", "facade", "office", "street")


def trajectory_metrics(T_est: list, T_gt: list, covariances: list | None = None) -> dict:
    """Figures of one run (module docstring) from [N] estimated and true camera poses (first frame aligned).

    ATE, RPE and the per-frame errors are evo's (``trajectories.ate_rpe``: APE after evo's origin alignment, RPE
    over the pairs 1 m of ground-truth path apart, and the ATE after an SE(3) Umeyama fit, ``ate_se3_rmse_m``);
    computed here, because evo has no such figure: drift as a share of the distance travelled (from evo's errors
    and path length) and ``within_3sigma``, the position errors against the published covariances."""
    from match_ros.evaluation.trajectories import ate_rpe

    ev = ate_rpe(T_est, T_gt, align="origin", rpe_delta_m=1.0)
    A, est = ev["alignment"], ev["estimate"]
    p_est = np.array([T[:3, 3] for T in est])
    p_gt = np.array([T[:3, 3] for T in T_gt])
    err, dist = ev["position_errors_m"], ev["distance_m"]
    total = max(float(dist[-1]), 1e-9)
    rpe_t, rpe_r = ev["rpe_t_pct"], ev["rpe_r_deg"]
    out = {"frames": len(est), "distance_m": total, "drift_end_pct": 100.0 * float(err[-1]) / total,
           "drift_max_pct": 100.0 * float(err.max()) / total, "ate_rmse_m": ev["ate_rmse_m"],
           "ate_se3_rmse_m": _ate_se3(T_est, T_gt),
           "rot_err_end_deg": float(ev["rotation_errors_deg"][-1]),
           "rpe_1m_pct": float(np.median(rpe_t)) if len(rpe_t) else float("nan"),
           "rpe_1m_deg": float(np.median(rpe_r)) if len(rpe_r) else float("nan")}
    if covariances is not None:
        # covariance honesty is not an evo metric: the aligned position error against the covariance, rotated by
        # the alignment
        inside = []
        for k, cov in enumerate(covariances):
            c = A[:3, :3] @ cov[:3, :3] @ A[:3, :3].T
            e = p_est[k] - p_gt[k]
            if k and np.all(np.isfinite(c)) and np.linalg.det(c) > 0:
                inside.append(float(e @ np.linalg.solve(c, e)) <= 9.0 * 1.566)  # 3 sigma in 3 dof (chi2 0.989)
        out["within_3sigma"] = float(np.mean(inside)) if inside else float("nan")
    out["_positions"] = (p_est, p_gt, dist, err)
    return out


def _ate_se3(T_est: list, T_gt: list) -> float:
    """ATE after evo's SE(3) Umeyama fit; nan when the true positions allow no unique fit (a line, < 3 poses)."""
    from match_ros.evaluation.trajectories import ate_rpe

    try:
        return ate_rpe(T_est, T_gt, align="se3")["ate_rmse_m"]
    except ValueError:
        return float("nan")


def run_sequence(frames, K, matcher, conf: dict | None = None, depth_noise: bool = False, seed: int = 0,
                 progress: bool = True, label: str = "") -> dict:
    """Odometry over frames (objects with rgb, depth, stamp_ns, T_world_cam); metrics + per-frame records
    (``_trajectories``: stamps [ns], estimated and true poses, for ``write_tum_pair``)."""
    from tqdm import tqdm

    from match_ros.core.tracking.frontend import Frame
    from match_ros.core.tracking.odometry import VisualOdometry

    vo = VisualOdometry(matcher, conf)
    rng = np.random.default_rng(seed)
    est, gt, covs, ms, statuses, stamps = [], [], [], [], [], []
    for f in tqdm(frames, desc=label, disable=not progress, unit="frame"):
        depth = f.depth
        if depth_noise:
            noise = rng.normal(size=depth.shape) * 0.0015 * depth ** 2
            depth = np.where(depth > 0, depth + noise, 0).astype(np.float32)
        t0 = time.perf_counter()
        r = vo.process(Frame(f.rgb, f.stamp_ns, "camera", K, depth))
        ms.append(1e3 * (time.perf_counter() - t0))
        est.append(r.T_odom_cam)
        gt.append(f.T_world_cam)
        covs.append(r.covariance)
        statuses.append(r.status)
        stamps.append(int(f.stamp_ns))
    out = trajectory_metrics(est, gt, covs)
    out["_trajectories"] = (stamps, est, gt)  # for the TUM files
    out.update(ms_per_frame_median=float(np.median(ms)), ms_per_frame_p95=float(np.percentile(ms, 95)),
               keyframes=sum(s in ("keyframe", "initialized") for s in statuses),
               lost_frames=sum(s.startswith("lost") for s in statuses))
    return out


def plot(out_dir: Path, name: str, metrics: dict) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p_est, p_gt, dist, err = metrics["_positions"]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(p_gt[:, 0], p_gt[:, 1], "-", color="0.5", label="ground truth")
    ax.plot(p_est[:, 0], p_est[:, 1], "-", color="tab:blue", label="visual odometry")
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_title(f"{name}: top view, drift {metrics['drift_end_pct']:.2f} % of {metrics['distance_m']:.1f} m")
    ax.legend(loc="best", fontsize=8)
    paths = [out_dir / f"{name}_trajectory.png"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(dist, 100 * err, color="tab:red")
    ax.plot(dist, dist, "--", color="0.6", label="1 % of distance")
    ax.set_xlabel("distance travelled [m]")
    ax.set_ylabel("position error [cm]")
    ax.set_ylim(0, max(1.2 * 100 * float(err.max()), 1.0))
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{name}: odometry position error")
    paths.append(out_dir / f"{name}_error.png")
    fig.savefig(paths[1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def chessboard_frames():
    """The 13 left chessboard views as odometry frames (board frame = world; depth on the board only)."""
    from match_ros.evaluation.chessboard import INDICES, board_view, calibrations, default_data_dir
    from match_ros.sim import Frame

    data = default_data_dir()
    K, dist = calibrations(data)["left"]
    frames = []
    for i in INDICES:
        view = board_view(data / "chessboard" / f"left{i:02d}.jpg", K, dist)
        if view is not None:
            rgb, T, depth = view
            frames.append(Frame(len(frames), (len(frames) + 1) * 100_000_000, T, rgb, depth))
    return frames, K


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="*", default=list(SCENES), choices=SCENES)
    ap.add_argument("--frames", type=int, default=300, help="frames per rendered sequence (30 Hz)")
    ap.add_argument("--chessboard", action="store_true", help="also the 13 real chessboard views")
    ap.add_argument("--matcher", default=DEFAULT_MATCHER)
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS)
    ap.add_argument("--depth-noise", action="store_true", help="structured-light depth noise (1.5 mm * z^2)")
    ap.add_argument("--window-keyframes", type=int, default=None, help="override odometry.window_keyframes")
    ap.add_argument("--step", type=int, default=1,
                    help="process every STEP-th frame (a busy node's drops: frames far apart, most of them keyframes)")
    ap.add_argument("--odometry", nargs="*", default=[], metavar="KEY=VALUE",
                    help="odometry settings, e.g. window_matching=matcher (core.tracking.odometry.odometry_spec)")
    ap.add_argument("--out", default="odometry_eval", help="directory for plots and TUM trajectories")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="backend options, e.g. cpu_bf16=True (values parsed as Python literals)")
    args = ap.parse_args(argv)

    import torch

    from match_ros.core.config import parse_overrides
    from match_ros.core.device import cpu_model, resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.evaluation.trajectories import evo_command, write_tum_pair
    from match_ros.sim import make_sequence

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    matcher_conf = {**shared_conf(args.matcher, max_keypoints=args.max_keypoints), **parse_overrides(args.conf)}
    matcher = build_matcher(args.matcher, matcher_conf, resolve_device("auto"))
    conf = {} if args.window_keyframes is None else {"window_keyframes": args.window_keyframes}
    conf.update(parse_overrides(args.odometry))
    if args.step < 1:
        ap.error("--step must be >= 1")
    print(f"{args.matcher}, odometry {conf or 'defaults'}, every {args.step}. frame; {cpu_model()}, "
          f"{torch.get_num_threads()} torch threads", flush=True)
    report = {}
    runs = [(s, None) for s in args.scenes] + ([("chessboard", None)] if args.chessboard else [])
    for name, _ in runs:
        if name == "chessboard":
            frames, K = chessboard_frames()
        else:
            seq = make_sequence(name, n_frames=args.frames, seed=0)
            frames, K = [seq[i] for i in range(0, len(seq), args.step)], seq.camera.K
        m = run_sequence(frames, K, matcher, conf, args.depth_noise, progress=not args.no_progress, label=name)
        plot(out_dir, name, m)
        stamps, est, gt = m["_trajectories"]
        gt_path, est_path = write_tum_pair(out_dir, name, list(zip(stamps, est)), list(zip(stamps, gt)))
        report[name] = {k: v for k, v in m.items() if not k.startswith("_")}
        r = report[name]
        print(f"{name:10s} {r['distance_m']:6.2f} m  drift end {r['drift_end_pct']:5.2f} %"
              f"  max {r['drift_max_pct']:5.2f} %"
              f"  ATE {100 * r['ate_rmse_m']:5.2f} cm  RPE(1 m) {r['rpe_1m_pct']:5.2f} % {r['rpe_1m_deg']:5.2f} deg"
              f"  3sigma {r['within_3sigma']:.2f}  keyframes {r['keyframes']:3d}  lost {r['lost_frames']:3d}"
              f"  {r['ms_per_frame_median']:5.0f} ms/frame", flush=True)
        print(f"{'':10s} ATE {100 * r['ate_se3_rmse_m']:5.2f} cm after an SE(3) fit; with evo:"
              f" {evo_command(gt_path, est_path, 'origin')}  (-a: SE(3) fit)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"matcher": args.matcher, "depth_noise": args.depth_noise,
                                               "frames": args.frames, "step": args.step, "odometry": conf,
                                               "cpu": cpu_model(), "scenes": report}, indent=2))
    print(f"plots and TUM trajectories (<scene>_estimate.tum, <scene>_groundtruth.tum) in {out_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
