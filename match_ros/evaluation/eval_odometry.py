"""RGB-D visual odometry against ground truth: drift, ATE and RPE on rendered sequences and the chessboard views.

    match_ros_eval_odometry [--scenes room corridor facade office street] [--frames 300] [--chessboard]
                            [--matcher xfeat_lighterglue] [--depth-noise] [--out DIR] [--json FILE]

Every frame goes through the core ``VisualOdometry`` (no frame dropped). The estimate is compared with the
ground truth after aligning the first frame only (odometry has no other anchor; no trajectory fitting), so the
figures are what a robot would see:

- ``drift_end_pct``: position error at the last frame / distance travelled (%), ``drift_max_pct``: the largest
  position error over the run / distance travelled;
- ``ate_rmse_m``: RMS position error over all frames; ``rpe_1m_pct`` / ``rpe_1m_deg``: median error of the
  relative motion over 1 m of travel (translation %, rotation deg);
- ``ms_per_frame_median``, ``keyframes``, ``lost_frames``; ``within_3sigma``: share of frames whose position
  error is inside the published covariance's 3-sigma ellipsoid.

``--depth-noise`` adds the noise of a structured-light RGB-D camera (sigma = 1.5 mm * z^2, per pixel) to the
rendered depth. Plots: ``<out>/<scene>_trajectory.png`` (top view) and ``<scene>_error.png`` (error over distance).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from match_ros.core.geometry.transforms import invert, rotation_error_deg

SCENES = ("room", "corridor", "facade", "office", "street")


def trajectory_metrics(T_est: list, T_gt: list, covariances: list | None = None) -> dict:
    """Figures of one run (module docstring) from [N] estimated and true camera poses (first frame aligned)."""
    A = T_gt[0] @ invert(T_est[0])
    est = [A @ T for T in T_est]
    p_est = np.array([T[:3, 3] for T in est])
    p_gt = np.array([T[:3, 3] for T in T_gt])
    err = np.linalg.norm(p_est - p_gt, axis=1)
    step = np.r_[0.0, np.linalg.norm(np.diff(p_gt, axis=0), axis=1)]
    dist = np.cumsum(step)
    total = max(float(dist[-1]), 1e-9)
    rpe_t, rpe_r = [], []
    for i in range(len(est)):
        j = int(np.searchsorted(dist, dist[i] + 1.0))
        if j >= len(est):
            break
        d_est, d_gt = invert(est[i]) @ est[j], invert(T_gt[i]) @ T_gt[j]
        rpe_t.append(100.0 * np.linalg.norm(d_est[:3, 3] - d_gt[:3, 3]) / max(dist[j] - dist[i], 1e-9))
        rpe_r.append(rotation_error_deg(d_est[:3, :3], d_gt[:3, :3]))
    out = {"frames": len(est), "distance_m": total, "drift_end_pct": 100.0 * float(err[-1]) / total,
           "drift_max_pct": 100.0 * float(err.max()) / total, "ate_rmse_m": float(np.sqrt(np.mean(err ** 2))),
           "rot_err_end_deg": rotation_error_deg(est[-1][:3, :3], T_gt[-1][:3, :3]),
           "rpe_1m_pct": float(np.median(rpe_t)) if rpe_t else float("nan"),
           "rpe_1m_deg": float(np.median(rpe_r)) if rpe_r else float("nan")}
    if covariances is not None:
        inside = []
        for k, cov in enumerate(covariances):
            c = A[:3, :3] @ cov[:3, :3] @ A[:3, :3].T
            e = p_est[k] - p_gt[k]
            if k and np.all(np.isfinite(c)) and np.linalg.det(c) > 0:
                inside.append(float(e @ np.linalg.solve(c, e)) <= 9.0 * 1.566)  # 3 sigma in 3 dof (chi2 0.989)
        out["within_3sigma"] = float(np.mean(inside)) if inside else float("nan")
    out["_positions"] = (p_est, p_gt, dist, err)
    return out


def run_sequence(frames, K, matcher, conf: dict | None = None, depth_noise: bool = False, seed: int = 0,
                 progress: bool = True, label: str = "") -> dict:
    """Odometry over frames (objects with rgb, depth, stamp_ns, T_world_cam); metrics + per-frame records."""
    from tqdm import tqdm

    from match_ros.core.tracking.frontend import Frame
    from match_ros.core.tracking.odometry import VisualOdometry

    vo = VisualOdometry(matcher, conf)
    rng = np.random.default_rng(seed)
    est, gt, covs, ms, statuses = [], [], [], [], []
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
    out = trajectory_metrics(est, gt, covs)
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
    ap.add_argument("--matcher", default="xfeat_lighterglue")
    ap.add_argument("--max-keypoints", type=int, default=1024)
    ap.add_argument("--depth-noise", action="store_true", help="structured-light depth noise (1.5 mm * z^2)")
    ap.add_argument("--window-keyframes", type=int, default=None, help="override odometry.window_keyframes")
    ap.add_argument("--out", default="odometry_eval", help="directory for plots")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="backend options, e.g. cpu_bf16=True (values parsed as Python literals)")
    args = ap.parse_args(argv)

    import torch

    from match_ros.core.config import parse_overrides
    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.sim import make_sequence

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    matcher_conf = {**shared_conf(args.matcher, max_keypoints=args.max_keypoints), **parse_overrides(args.conf)}
    matcher = build_matcher(args.matcher, matcher_conf, resolve_device("auto"))
    conf = {} if args.window_keyframes is None else {"window_keyframes": args.window_keyframes}
    report = {}
    runs = [(s, None) for s in args.scenes] + ([("chessboard", None)] if args.chessboard else [])
    for name, _ in runs:
        if name == "chessboard":
            frames, K = chessboard_frames()
        else:
            seq = make_sequence(name, n_frames=args.frames, seed=0)
            frames, K = seq, seq.camera.K
        m = run_sequence(frames, K, matcher, conf, args.depth_noise, progress=not args.no_progress, label=name)
        plot(out_dir, name, m)
        report[name] = {k: v for k, v in m.items() if not k.startswith("_")}
        r = report[name]
        print(f"{name:10s} {r['distance_m']:6.2f} m  drift end {r['drift_end_pct']:5.2f} %"
              f"  max {r['drift_max_pct']:5.2f} %"
              f"  ATE {100 * r['ate_rmse_m']:5.2f} cm  RPE(1 m) {r['rpe_1m_pct']:5.2f} % {r['rpe_1m_deg']:5.2f} deg"
              f"  3sigma {r['within_3sigma']:.2f}  keyframes {r['keyframes']:3d}  lost {r['lost_frames']:3d}"
              f"  {r['ms_per_frame_median']:5.0f} ms/frame", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"matcher": args.matcher, "depth_noise": args.depth_noise,
                                               "frames": args.frames, "scenes": report}, indent=2))
    print(f"plots in {out_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
