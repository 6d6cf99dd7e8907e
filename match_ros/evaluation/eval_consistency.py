"""Ground-truth-free figures of the core on a user's own rosbag2 bag: is the estimate self-consistent?

    match_ros_eval_consistency BAG [--image-topic auto] [--info-topic auto] [--depth-topic auto] [--matcher NAME]
                               [--max-frames N] [--gaps 1 5] [--cycle-gap 2] [--out DIR]

The bag needs a camera image topic (sensor_msgs/Image or CompressedImage) and its camera_info; with an aligned depth
image topic (32FC1 [m] or 16UC1 [mm], found by name when --depth-topic is auto; "" ignores it) every frame goes
through the RGB-D odometry (``VisualOdometry``), without depth through the keyframe tracker's two-view geometry
(``KeyframeTracker``, what the keyframe_matcher node runs). Nothing needs ground truth:

- photometric consistency (RGB-D only; ``core.geometry.photometric``): the estimated motion between frames i and
  i + g, used to warp frame i + g into frame i with frame i's depth, must give a lower grey-value error than no
  motion (identity; unless the motion is within half a perturbation step of it, when the two cannot be told apart)
  and than each of its 12 perturbations by +-2 cm / +-1 deg. ``photometric_share``: the share of pairs that pass,
  over the whole image; ``photometric_share_support``: over the pixels within 24 px of frame i's PnP inliers (the
  part of the image the estimate claims to explain; something else moving in view does not count). A wrong
  motion fails; an error along a direction the images barely show (a turn about a point at the scene's depth,
  smaller than a step) passes.
- rotation cycle consistency: the relative pose of frames i -> j, j -> k and i -> k (j = i + c, k = i + 2c, c =
  --cycle-gap) estimated independently from their matches (PnP with depth, else the essential matrix); the angle
  of R_ij R_jk R_ik^T. ``cycle_deg_median`` / ``_p90`` over the triples whose three poses are valid; a few tenths
  of a degree is matching noise, degrees mean a wrong pose.
- verdicts: each frame's pose against its keyframe is ``full`` (rotation and translation), ``rotation_only`` (the
  translation is not observable: parallax too small or ambiguous; two-view only) or ``none`` (with the reasons
  counted in ``none_reasons``); RGB-D odometry also counts ``lost`` frames (no pose, held at the last one).
- ``keyframe_rate``: share of frames that became keyframes (the first one included).
- ``ms_per_frame_median`` / ``_mean``: wall time of the core per frame (feature extraction, matching, pose,
  keyframe work), not the checks; with ``cpu`` (the CPU model) and ``torch_threads``.

Writes ``consistency.json`` (the figures and the per-pair values) and ``consistency.png`` (photometric errors per
pair, cycle errors, time per frame) into --out. The bag is streamed; only the last frames needed for the pairs are
kept in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS
from match_ros.core.device import cpu_model


def _verdict(pose) -> str:
    if not pose.valid:
        return "none"
    return "full" if pose.translation_valid else "rotation_only"


def _reason_kind(reason: str) -> str:
    """A reason without its numbers (so that the same cause counts once)."""
    return re.sub(r"-?\d+(\.\d+)?", "#", reason.split(";")[0])[:80]


def run(frames, matcher, gaps=(1, 5), cycle_gap: int = 2, max_frames: int | None = None, use_depth: bool = True,
        progress: bool = False) -> dict:
    """The figures (module docstring) of ``frames``: an iterable of objects with image [H x W (x 3)] uint8,
    stamp_ns, frame_id, K [3 x 3] and depth [H x W] float32 m or None (``BagFrames``' frames)."""
    from match_ros.core.geometry.photometric import check_motion, support_mask
    from match_ros.core.geometry.transforms import invert, rotation_error_deg
    from match_ros.core.geometry.two_view import estimate_relative_pose
    from match_ros.core.tracking.frontend import Frame, KeyframeTracker
    from match_ros.core.tracking.odometry import VisualOdometry

    gaps = sorted({int(g) for g in gaps if int(g) >= 1})
    cycle_gap = int(cycle_gap)
    keep = max(gaps + [2 * cycle_gap, 1]) + 1
    recent = deque(maxlen=keep)  # (index, image, depth, K, features, T_odom_cam, support points)
    vo = tracker = None
    mode = None
    verdicts, reasons, ms, keyframes, lost = Counter(), Counter(), [], 0, 0
    photometric = {g: [] for g in gaps}
    pair_poses = {}  # (i, j) -> rotation [3 x 3] or None, of the direct estimates for the cycles
    cycles = []

    def direct(a, b):
        """Rotation of T_a_b estimated directly from a's and b's matches (None when invalid)."""
        key = (a[0], b[0])
        if key not in pair_poses:
            p_a, p_b = matcher.match(a[4], b[4]).points(a[4], b[4])
            pose = estimate_relative_pose(p_a, p_b, a[3], b[3], depth_ref=a[2] if mode == "rgbd" else None)
            pair_poses[key] = pose.T_ref_query[:3, :3] if pose.valid else None
        return pair_poses[key]

    n = 0
    for f in frames:
        if max_frames is not None and n >= max_frames:
            break
        depth = f.depth if use_depth else None
        if mode is None:
            mode = "rgbd" if depth is not None else "two_view"
            if mode == "rgbd":
                vo = VisualOdometry(matcher)
            else:
                tracker = KeyframeTracker(matcher)
        if mode == "rgbd" and depth is None:
            raise ValueError(f"frame {n} has no depth while the first had: give --depth-topic '' to ignore depth")
        frame = Frame(f.image, f.stamp_ns, f.frame_id, f.K, depth if mode == "rgbd" else None)
        t0 = time.perf_counter()
        if mode == "rgbd":
            r = vo.process(frame)
            track, T = r.track, r.T_odom_cam
            new_keyframe = r.status in ("keyframe", "initialized")
            lost += r.lost
        else:
            track = tracker.process(frame)
            T, new_keyframe = None, n == 0 or track.is_keyframe
        ms.append(1e3 * (time.perf_counter() - t0))
        keyframes += bool(new_keyframe)
        if n > 0:  # the first frame has nothing to be matched against
            v = _verdict(track.pose)
            verdicts[v] += 1
            if v == "none":
                reasons[_reason_kind(track.pose.reason)] += 1
        support = track.pts_query[track.pose.inliers] if len(track.pts_query) and track.pose.valid else None
        image = np.asarray(f.image)
        recent.append((n, image, depth, np.asarray(f.K, np.float64), track.query_features, T, support))
        by_index = {e[0]: e for e in recent}
        if mode == "rgbd":
            for g in gaps:
                ref = by_index.get(n - g)
                if ref is None or ref[5] is None or T is None:
                    continue
                T_ref_query = invert(ref[5]) @ T
                whole = check_motion(ref[1], ref[2], image, ref[3], T_ref_query)
                mask = support_mask(ref[6], ref[1].shape[:2]) if ref[6] is not None and len(ref[6]) else None
                masked = check_motion(ref[1], ref[2], image, ref[3], T_ref_query, mask=mask) if mask is not None \
                    else whole
                photometric[g].append({"i": ref[0], "j": n, "estimate": whole.estimate, "identity": whole.identity,
                                       "min_perturbed": float(np.min(whole.perturbed)),
                                       "identity_is_rival": whole.identity_is_rival,
                                       "consistent": whole.consistent, "consistent_support": masked.consistent})
        i, j = by_index.get(n - 2 * cycle_gap), by_index.get(n - cycle_gap)
        if cycle_gap >= 1 and i is not None and j is not None and None not in (i[4], j[4], track.query_features):
            k = recent[-1]
            R_ij, R_jk, R_ik = direct(i, j), direct(j, k), direct(i, k)
            if R_ij is not None and R_jk is not None and R_ik is not None:
                # T_i_j T_j_k = T_i_k: the rotation part of the cycle
                cycles.append({"i": i[0], "j": j[0], "k": k[0], "deg": rotation_error_deg(R_ij @ R_jk, R_ik)})
            else:
                cycles.append({"i": i[0], "j": j[0], "k": k[0], "deg": None})
        for key in [key for key in pair_poses if key[0] < n - 2 * cycle_gap]:
            del pair_poses[key]
        n += 1
        if progress:
            print(f"\rframe {n}", end="", flush=True)
    if progress:
        print()
    if n == 0:
        raise ValueError("no frames")

    import torch

    counted = max(n - 1, 1)
    cycle_deg = np.array([c["deg"] for c in cycles if c["deg"] is not None])
    out = {"mode": mode, "frames": n, "matcher": getattr(matcher, "name", type(matcher).__name__),
           "keyframes": keyframes, "keyframe_rate": keyframes / n,
           "verdicts": {v: verdicts.get(v, 0) for v in ("full", "rotation_only", "none")},
           "verdict_shares": {v: verdicts.get(v, 0) / counted for v in ("full", "rotation_only", "none")},
           "none_reasons": dict(reasons.most_common()), "lost": lost,
           "photometric": {}, "cycle_gap": cycle_gap, "cycles": len(cycles), "cycles_valid": int(len(cycle_deg)),
           "cycle_deg_median": float(np.median(cycle_deg)) if len(cycle_deg) else None,
           "cycle_deg_p90": float(np.percentile(cycle_deg, 90)) if len(cycle_deg) else None,
           "cycle_deg_max": float(np.max(cycle_deg)) if len(cycle_deg) else None,
           "ms_per_frame_median": float(np.median(ms)), "ms_per_frame_mean": float(np.mean(ms)),
           "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
           "_pairs": {str(g): photometric[g] for g in gaps}, "_cycles": cycles, "_ms": ms}
    for g in gaps:
        pairs = photometric[g]
        out["photometric"][str(g)] = {
            "pairs": len(pairs),
            "photometric_share": float(np.mean([p["consistent"] for p in pairs])) if pairs else None,
            "photometric_share_support": float(np.mean([p["consistent_support"] for p in pairs])) if pairs else None,
            "identity_rivals": int(sum(p["identity_is_rival"] for p in pairs))}
    return out


def plot(out_dir: Path, figures: dict) -> Path:
    """consistency.png: photometric errors per pair (estimate, identity, best perturbation) for each gap, the
    cycle errors, and the time per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = list(figures["_pairs"])
    rows = max(len(gaps), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.2 * rows), squeeze=False)
    for r, g in enumerate(gaps):
        ax = axes[r, 0]
        pairs = figures["_pairs"][g]
        if pairs:
            i = [p["i"] for p in pairs]
            ax.plot(i, [p["estimate"] for p in pairs], "o-", label="estimate")
            ax.plot(i, [p["identity"] for p in pairs], "s--", label="identity")
            ax.plot(i, [p["min_perturbed"] for p in pairs], "^:", label="best perturbation")
            bad = [p for p in pairs if not p["consistent"]]
            ax.plot([p["i"] for p in bad], [p["estimate"] for p in bad], "rx", ms=10, label="inconsistent")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no depth: no photometric check", ha="center", transform=ax.transAxes)
        ax.set_title(f"photometric error, frames i -> i + {g}")
        ax.set_xlabel("frame i")
        ax.set_ylabel("mean |grey difference|")
    ax = axes[0, 1]
    cyc = [c for c in figures["_cycles"] if c["deg"] is not None]
    ax.plot([c["i"] for c in cyc], [c["deg"] for c in cyc], "o-")
    ax.set_title(f"rotation cycle error i -> i+{figures['cycle_gap']} -> i+{2 * figures['cycle_gap']} vs direct")
    ax.set_xlabel("frame i")
    ax.set_ylabel("deg")
    if rows > 1:
        ax = axes[1, 1]
        ax.plot(figures["_ms"], ".-")
        ax.set_title(f"core time per frame ({figures['cpu']}, {figures['torch_threads']} torch threads)", fontsize=8)
        ax.set_xlabel("frame")
        ax.set_ylabel("ms")
        for r in range(2, rows):
            axes[r, 1].axis("off")
    fig.tight_layout()
    path = out_dir / "consistency.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _print(figures: dict) -> None:
    print(f"mode {figures['mode']}  frames {figures['frames']}  matcher {figures['matcher']}")
    v, s = figures["verdicts"], figures["verdict_shares"]
    print(f"verdicts (frame vs keyframe): full {v['full']} ({100 * s['full']:.0f} %)  rotation-only "
          f"{v['rotation_only']} ({100 * s['rotation_only']:.0f} %)  none {v['none']} ({100 * s['none']:.0f} %)"
          + (f"  lost {figures['lost']}" if figures["mode"] == "rgbd" else ""))
    for reason, count in figures["none_reasons"].items():
        print(f"    none: {count:3d}  {reason}")
    print(f"keyframes {figures['keyframes']} of {figures['frames']} ({100 * figures['keyframe_rate']:.0f} %)")
    for g, p in figures["photometric"].items():
        if p["pairs"]:
            print(f"photometric, gap {g}: {p['pairs']} pairs, consistent {100 * p['photometric_share']:.0f} % "
                  f"(whole image), {100 * p['photometric_share_support']:.0f} % (near the inliers); identity a "
                  f"rival in {p['identity_rivals']}")
        else:
            print(f"photometric, gap {g}: no pairs (needs depth)")
    if figures["cycles_valid"]:
        print(f"rotation cycles (gap {figures['cycle_gap']}): {figures['cycles_valid']} of {figures['cycles']} "
              f"valid, median {figures['cycle_deg_median']:.2f} deg, p90 {figures['cycle_deg_p90']:.2f} deg, "
              f"max {figures['cycle_deg_max']:.2f} deg")
    else:
        print(f"rotation cycles (gap {figures['cycle_gap']}): none valid of {figures['cycles']}")
    print(f"core time per frame: median {figures['ms_per_frame_median']:.0f} ms, mean "
          f"{figures['ms_per_frame_mean']:.0f} ms ({figures['cpu']}, {figures['torch_threads']} torch threads)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    ap.add_argument("--image-topic", default="auto")
    ap.add_argument("--info-topic", default="auto")
    ap.add_argument("--depth-topic", default="auto", help="aligned depth image topic; '' ignores depth")
    ap.add_argument("--matcher", default=DEFAULT_MATCHER)
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS)
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    ap.add_argument("--gaps", type=int, nargs="*", default=[1, 5], help="frame gaps of the photometric check")
    ap.add_argument("--cycle-gap", type=int, default=2, help="c of the rotation cycles i -> i+c -> i+2c (0: none)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: up to 2)")
    ap.add_argument("--out", default="consistency_eval", help="folder for consistency.json and consistency.png")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.tools.bagframes import BagFrames

    torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
    frames = BagFrames(args.bag, args.image_topic, args.info_topic, args.depth_topic, pose_topic="", use_tf=False)
    topics = frames.describe()
    print(f"bag {args.bag}: image {topics['image']}, camera_info {topics['camera_info']}, depth "
          f"{topics['depth'] or 'none (two-view geometry)'}")
    matcher = build_matcher(args.matcher, shared_conf(args.matcher, max_keypoints=args.max_keypoints),
                            resolve_device("auto"))
    figures = run(frames, matcher, args.gaps, args.cycle_gap, args.max_frames, progress=args.progress)
    figures["matcher"] = args.matcher
    figures["bag"] = str(args.bag)
    figures["topics"] = topics
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "consistency.json").write_text(json.dumps(figures, indent=2))
    png = plot(out_dir, figures)
    _print(figures)
    print(f"figures: {out_dir / 'consistency.json'}, plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
