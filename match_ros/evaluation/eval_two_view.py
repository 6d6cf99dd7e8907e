"""Two-view relative poses (no depth) against ground truth on rendered frame pairs: how many are full, rotation-only
or refused, and how many published ones are wrong.

    match_ros_eval_two_view [--matcher xfeat_lighterglue] [--scenes room corridor facade office] [--frames 90]
                            [--gaps 1 3 5 8] [--stride 3] [--json FILE]

Pairs: frame i (every --stride-th) with frame i + gap for each gap, 640x480, the default trajectory of each scene.
A published pose is *wrong* when its rotation is more than 2 deg off, or (full poses) its translation direction
more than 15 deg off (issue #11's bounds). Also printed: median errors, milliseconds per pair (pose estimation
only) and the share of rotation errors inside the covariance's 99 % ellipsoid.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS

WRONG_ROT_DEG, WRONG_DIR_DEG = 2.0, 15.0
CHI2_3DOF_99 = 11.34


def evaluate_scene(scene: str, matcher, frames: int, gaps, stride: int) -> list:
    """Per pair: (gap, kind 0 none / 1 rotation-only / 2 full, rot err deg, dir err deg, rotation NEES, ms)."""
    from match_ros.core.geometry.transforms import invert, rotation_error_deg, translation_angle_deg
    from match_ros.core.geometry.two_view import estimate_relative_pose
    from match_ros.sim import make_sequence

    seq = make_sequence(scene, n_frames=frames, seed=0)
    K = seq.camera.K
    feats = {}

    def features(i):
        if i not in feats:
            feats[i] = matcher.extract(seq[i].rgb)
        return feats[i]

    rows = []
    for i in range(0, frames, stride):
        for gap in gaps:
            j = i + gap
            if j >= frames:
                continue
            m = matcher.match(features(i), features(j))
            p_ref, p_query = m.points(features(i), features(j))
            T_gt = invert(seq[i].T_world_cam) @ seq[j].T_world_cam
            t0 = time.perf_counter()
            pose = estimate_relative_pose(p_ref, p_query, K, K)
            ms = 1e3 * (time.perf_counter() - t0)
            kind = 0 if not pose.valid else (2 if pose.translation_valid else 1)
            rot = rotation_error_deg(pose.T_ref_query[:3, :3], T_gt[:3, :3]) if pose.valid else np.nan
            direction = translation_angle_deg(pose.T_ref_query[:3, 3], T_gt[:3, 3]) if kind == 2 else np.nan
            nees = np.nan
            if pose.valid:
                w = cv2.Rodrigues(T_gt[:3, :3] @ pose.T_ref_query[:3, :3].T)[0].ravel()
                try:
                    nees = float(w @ np.linalg.solve(pose.covariance[3:, 3:], w))
                except np.linalg.LinAlgError:
                    pass
            rows.append((gap, kind, rot, direction, nees, ms))
    return rows


def summarize(rows) -> dict:
    r = np.array(rows, dtype=np.float64).reshape(-1, 6)
    full, rot_only = r[:, 1] == 2, r[:, 1] == 1
    wrong_full = full & ((r[:, 2] > WRONG_ROT_DEG) | (r[:, 3] > WRONG_DIR_DEG))
    wrong_rot = rot_only & (r[:, 2] > WRONG_ROT_DEG)
    posed = full | rot_only

    def med(x):
        return float(np.median(x)) if len(x) else float("nan")

    return {"pairs": int(len(r)), "full": int(full.sum()), "rotation_only": int(rot_only.sum()),
            "no_pose": int((r[:, 1] == 0).sum()), "wrong_full": int(wrong_full.sum()),
            "wrong_rotation_only": int(wrong_rot.sum()), "median_dir_err_deg": med(r[full, 3]),
            "median_rot_err_deg_full": med(r[full, 2]), "median_rot_err_deg_rotation_only": med(r[rot_only, 2]),
            "rotation_within_99pct": float(np.mean(r[posed, 4] < CHI2_3DOF_99)) if posed.any() else float("nan"),
            "ms_per_pair_median": med(r[:, 5])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matcher", default=DEFAULT_MATCHER)
    ap.add_argument("--scenes", nargs="+", default=["room", "corridor", "facade", "office"])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--gaps", type=int, nargs="+", default=[1, 3, 5, 8])
    ap.add_argument("--stride", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="backend configuration entries, e.g. cpu_bf16=True (values parsed as Python literals)")
    args = ap.parse_args(argv)

    import torch

    from match_ros.core.device import resolve_device
    from match_ros.core.config import parse_overrides
    from match_ros.core.features.matcher import build_matcher, shared_conf

    torch.set_num_threads(2)
    conf = {**shared_conf(args.matcher, max_keypoints=DEFAULT_MAX_KEYPOINTS), **parse_overrides(args.conf)}
    matcher = build_matcher(args.matcher, conf, resolve_device("auto"))
    report, every = {}, []
    print(f"{'scene':10s} {'pairs':>5s} {'full':>5s} {'wrong':>5s} {'rot-only':>8s} {'wrong':>5s} {'none':>5s}"
          f" {'dir err':>7s} {'rot err':>7s} {'ms':>5s}")
    for scene in args.scenes + ["ALL"]:
        rows = every if scene == "ALL" else evaluate_scene(scene, matcher, args.frames, args.gaps, args.stride)
        if scene != "ALL":
            every += rows
        s = report[scene] = summarize(rows)
        print(f"{scene:10s} {s['pairs']:5d} {s['full']:5d} {s['wrong_full']:5d} {s['rotation_only']:8d}"
              f" {s['wrong_rotation_only']:5d} {s['no_pose']:5d} {s['median_dir_err_deg']:7.2f}"
              f" {s['median_rot_err_deg_full']:7.2f} {s['ms_per_pair_median']:5.1f}", flush=True)
    print(f"rotation errors within the covariance's 99 % ellipsoid: {report['ALL']['rotation_within_99pct']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"matcher": args.matcher, "scenes": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
