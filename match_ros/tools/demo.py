"""match_ros_demo: the main job on an embedded default.

Renders a camera sequence from real photos with exact ground truth (cached),
writes it to a rosbag2, replays it with /clock through the keyframe_matcher
node in a real ROS 2 graph on loopback, and prints per-pair results against
ground truth.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS
from match_ros.evaluation.graph import confine_to_loopback


def ensure_bag(out_dir: Path, scene: str, n_frames: int, storage: str = "sqlite3", seed: int = 0):
    """(bag path, sequence): the rendered sequence and its bag, written once and reused."""
    from match_ros.sim import make_sequence
    from match_ros.tools.bag_write import write_sequence_bag

    seq = make_sequence(scene, n_frames=n_frames, seed=seed)
    bag = out_dir / f"{scene}_{n_frames}_{seed}_{storage}"
    if not bag.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"rendering {n_frames} frames of scene '{scene}' into {bag}", flush=True)
        write_sequence_bag(bag, seq, storage=storage, progress=True)
    return bag, seq


def _short(reason: str) -> str:
    """The first clause of a pose's reason ("parallax 0.58 deg < 1: ...", "ambiguous translation: ...")."""
    reason = reason.removeprefix("rotation only (").rstrip(")")
    return reason.split(":")[0]


def print_report(result, matcher: str) -> None:
    print(f"\n{'query':>5} {'kf':>4} {'matches':>7} {'inliers':>7} {'inl%':>5} {'correct%':>8} "
          f"{'rot_err':>8} {'t_err':>7}  (errors vs ground truth: deg)")
    for s in result.scores:
        if s.matches == 0:
            print(f"{s.query_index:5d} {s.ref_index:4d}   new keyframe (no reference yet)")
            continue
        if s.pose_valid and s.translation_valid:
            pose = f"{s.rot_err_deg:8.2f} {s.trans_err_deg:7.2f}"
        elif s.pose_valid:
            pose = f"{s.rot_err_deg:8.2f} {'-':>7}  rotation only: {_short(s.pose_reason)}"
        else:
            pose = f"{'-':>8} {'-':>7}  no pose: {_short(s.pose_reason)}"
        print(f"{s.query_index:5d} {s.ref_index:4d} {s.matches:7d} {s.inliers:7d} {100 * s.inliers / s.matches:5.1f} "
              f"{100 * s.correct_ratio:8.1f} {pose}")
    summ = result.summary()
    print(f"\nsummary ({matcher}):")
    for k, v in summ.items():
        print(f"  {k:24s} {v:.3f}" if isinstance(v, float) else f"  {k:24s} {v}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", default=DEFAULT_MATCHER,
                    help="backend (sift, orb_teblid, xfeat_mnn, xfeat_lighterglue)")
    ap.add_argument("--scene", default="room", help="rendered scene (room, corridor, facade)")
    ap.add_argument("--frames", type=int, default=90, help="frames in the sequence (30 Hz)")
    ap.add_argument("--rate", type=float, default=1.0,
                    help="replay speed (1.0 = real time; the node drops frames it cannot keep up with)")
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS, help="keypoints per image")
    ap.add_argument("--out", default="build/demo", help="where the rendered bag is cached")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: environment or 57)")
    args = ap.parse_args(argv)
    env = confine_to_loopback(args.domain_id)
    print(f"DDS: {env}", flush=True)

    from match_ros.evaluation.replay_eval import replay_through_node

    bag, seq = ensure_bag(Path(args.out), args.scene, args.frames)
    print(f"replaying {bag} at {args.rate}x through keyframe_matcher (matcher={args.matcher})", flush=True)
    result = replay_through_node(bag, seq, {"matcher": args.matcher, "max_keypoints": args.max_keypoints},
                                 rate=args.rate, log_path=Path(args.out) / "keyframe_matcher.log")
    print_report(result, args.matcher)
    if not result.scores:
        print("no correspondences received; node log:\n" + result.node_log[-3000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
