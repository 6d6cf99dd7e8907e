"""match_ros_eval_reloc: relocalization accuracy against ground truth, through the real node.

Builds (or reuses) a map from a mapping bag, replays a query bag (different
trajectory, changed lighting, odometry on /tf in an `odom` frame offset from
`map`) through the relocalizer node in a real ROS 2 graph on loopback, and
writes a report: recall at (5 cm, 2 deg), (25 cm, 5 deg), (1 m, 10 deg), median
errors, wrong poses (> 1 m), map->odom error, latency per query, plots.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from match_ros.core.geometry.transforms import invert, make_T, rotation_error_deg
from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, spin_until

THRESHOLDS = ((0.05, 2.0), (0.25, 5.0), (1.0, 10.0))
# query trajectories leave the mapping path by this offset in the map frame [m]: other viewpoints
QUERY_OFFSET_M = {"room": (0.2, -0.15, 0.15), "corridor": (0.0, 0.3, -0.1), "facade": (1.0, 0.0, -0.2)}
T_MAP_ODOM = make_T(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), [1.5, -0.7, 0.0])


@dataclass
class RelocRun:
    queries: list = field(default_factory=list)     # [(stamp_ns, accepted, message, timings dict)]
    poses: list = field(default_factory=list)       # [(stamp_ns, T_map_cam, covariance 6x6)]
    map_odom: list = field(default_factory=list)    # [(stamp_ns, T_map_odom)]
    node_log: str = ""

    def score(self, sequence) -> dict:
        idx = {s: i for i, s in enumerate(sequence.stamps_ns)}
        errs = []
        for stamp, T, _ in self.poses:
            T_gt = sequence.poses[idx[stamp]][1]
            errs.append((stamp, float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3])), rotation_error_deg(T[:3, :3], T_gt[:3, :3])))
        n = max(len(self.queries), 1)
        e = np.array([(t, r) for _, t, r in errs]).reshape(-1, 2)
        out = {"queries": len(self.queries), "poses": len(self.poses),
               "rejected": sum(1 for q in self.queries if not q[1])}
        for t, r in THRESHOLDS:
            out[f"recall@{t * 100:g}cm,{r:g}deg"] = float(np.sum((e[:, 0] < t) & (e[:, 1] < r)) / n)
        out["median_trans_m"] = float(np.median(e[:, 0])) if len(e) else float("nan")
        out["median_rot_deg"] = float(np.median(e[:, 1])) if len(e) else float("nan")
        out["wrong_poses_over_1m"] = int(np.sum(e[:, 0] > 1.0))
        mo = [np.linalg.norm(T[:3, 3] - T_MAP_ODOM[:3, 3]) for _, T in self.map_odom]
        out["map_odom_tf"] = len(mo)
        out["map_odom_median_err_m"] = float(np.median(mo)) if mo else float("nan")
        total = [sum(q[3].get(k, 0.0) for k in ("retrieval_ms", "extract_ms", "match_ms", "pnp_ms"))
                 for q in self.queries if q[3]]
        for k in ("retrieval_ms", "extract_ms", "match_ms", "pnp_ms"):
            v = [q[3][k] for q in self.queries if k in q[3]]
            out[f"{k}_median"] = float(np.median(v)) if v else float("nan")
        out["query_ms_median"] = float(np.median(total)) if total else float("nan")
        out["query_ms_p95"] = float(np.percentile(total, 95)) if total else float("nan")
        out["errors"] = errs
        return out


def make_query_sequence(scene: str, n_frames: int, seed: int = 1):
    """A query sequence over the mapped scene (scene_seed 0): another trajectory seed, changed
    lighting, and the camera path moved off the mapping path by QUERY_OFFSET_M[scene]."""
    from match_ros.sim import Sequence, make_sequence

    base = make_sequence(scene, n_frames=n_frames, seed=seed, scene_seed=0, photometric=True)
    shift = make_T(np.eye(3), QUERY_OFFSET_M[scene])
    return Sequence(base.scene, base.camera, [(s, shift @ T) for s, T in base.poses],
                    gain=base.gain, gamma=base.gamma, seed=seed)


def write_query_bag(path, sequence, storage="sqlite3"):
    """Query bag: images, camera_info, /tf odom -> camera (odom offset from map by T_MAP_ODOM), GT pose in map."""
    from match_ros.tools.bag_write import BagLayout, write_sequence_bag

    write_sequence_bag(path, sequence, storage=storage, layout=BagLayout(tf_frame="odom", T_tf_map=invert(T_MAP_ODOM)))


def replay_relocalization(map_path, query_bag, params: dict, *, rate=1.0, domain_id=None, startup_timeout=90.0,
                          log_path=None, topics=("/camera/image_raw", "/camera/camera_info", "/tf")) -> RelocRun:
    confine_to_loopback(domain_id)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from match_ros.ros.conversions import pose_to_matrix, stamp_to_ns, transform_to_matrix
    from match_ros.tools.bag_play import BagPlayer

    run = RelocRun()
    params = {"map_path": str(map_path), "image_qos": "reliable", "use_sim_time": True, "base_frame": "",
              "odom_frame": "odom", **params}
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("match_ros_eval_reloc", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    reliable = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)

    def on_status(m):
        st = m.status[0]
        vals = {kv.key: float(kv.value) for kv in st.values if kv.key.endswith("_ms")}
        run.queries.append((stamp_to_ns(m.header.stamp), st.level == DiagnosticStatus.OK, st.message, vals))

    def on_tf(m):
        run.map_odom.extend((stamp_to_ns(t.header.stamp), transform_to_matrix(t.transform))
                            for t in m.transforms if t.header.frame_id == "map" and t.child_frame_id == "odom")

    node.create_subscription(DiagnosticArray, "/relocalizer/status", on_status, reliable)
    node.create_subscription(PoseWithCovarianceStamped, "/relocalizer/pose", lambda m: run.poses.append(
        (stamp_to_ns(m.header.stamp), pose_to_matrix(m.pose.pose), np.array(m.pose.covariance).reshape(6, 6))), reliable)
    node.create_subscription(TFMessage, "/tf", on_tf, QoSProfile(depth=500))
    try:
        player = BagPlayer(node, query_bag, rate=rate, topics=list(topics))
        remaps = {"image": "/camera/image_raw", "camera_info": "/camera/camera_info", "pose": "/relocalizer/pose",
                  "status": "/relocalizer/status", "correspondences": "/relocalizer/correspondences"}
        with NodeProcess("match_ros.nodes.relocalizer", params, remaps, log_path=log_path) as proc:
            pub = player.publishers["/camera/image_raw"]
            if not spin_until(node, lambda: not proc.alive() or (pub.get_subscription_count() > 0
                              and node.count_publishers("/relocalizer/status") > 0), startup_timeout, executor=ex) \
                    or not proc.alive():
                raise RuntimeError(f"relocalizer did not come up:\n{proc.log()[-3000:]}")
            spin_until(node, lambda: False, 1.0, executor=ex)
            thread = player.start()
            while thread.is_alive():
                ex.spin_once(timeout_sec=0.05)
            n_before = -1
            while len(run.queries) != n_before:  # until the node has answered its last query
                n_before = len(run.queries)
                spin_until(node, lambda: len(run.queries) > n_before, 3.0, executor=ex)
            run.node_log = proc.log()
        player.close()
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    return run


def plot_report(out_dir: Path, sequence, run: RelocRun, score: dict, map_positions: np.ndarray, title: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt = np.array([T[:3, 3] for _, T in sequence.poses])
    est = np.array([T[:3, 3] for _, T, _ in run.poses]).reshape(-1, 3)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(gt[:, 0], gt[:, 1], "-", color="0.6", label="query ground truth")
    ax.scatter(map_positions[:, 0], map_positions[:, 1], marker="^", s=25, color="tab:green", label="map keyframes")
    ax.scatter(est[:, 0], est[:, 1], s=12, color="tab:red", label="relocalized")
    ax.set_aspect("equal")
    ax.set_xlabel("x [m] (map)")
    ax.set_ylabel("y [m] (map)")
    ax.set_title(f"{title}: trajectory (top view)")
    ax.legend(loc="best", fontsize=8)
    p1 = out_dir / "trajectory.png"
    fig.savefig(p1, dpi=110, bbox_inches="tight")
    plt.close(fig)
    t0 = sequence.stamps_ns[0]
    e = score["errors"]
    fig, ax = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ts = [(s - t0) * 1e-9 for s, _, _ in e]
    ax[0].semilogy(ts, [max(x, 1e-4) for _, x, _ in e], ".", color="tab:blue")
    ax[0].axhline(0.05, ls="--", color="0.5")
    ax[0].set_ylabel("translation error [m]")
    ax[1].semilogy(ts, [max(x, 1e-3) for _, _, x in e], ".", color="tab:orange")
    ax[1].axhline(2.0, ls="--", color="0.5")
    ax[1].set_ylabel("rotation error [deg]")
    ax[1].set_xlabel("time [s]")
    ax[0].set_title(f"{title}: error against ground truth")
    p2 = out_dir / "errors.png"
    fig.savefig(p2, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [p1, p2]


def main(argv=None) -> int:
    from match_ros.core.features.matcher import available_matchers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="room", help="rendered scene (room, corridor, facade)")
    ap.add_argument("--matcher", default="orb_teblid", choices=available_matchers(), help="backend")
    ap.add_argument("--map-frames", type=int, default=180, help="frames of the mapping trajectory")
    ap.add_argument("--query-frames", type=int, default=90, help="frames of the query trajectory (30 Hz)")
    ap.add_argument("--rate-hz", type=float, default=5.0, help="relocalizer query rate")
    ap.add_argument("--no-depth", action="store_true", help="triangulate the map instead of using depth")
    ap.add_argument("--out", default="build/eval_reloc", help="output folder (bags, map, report, plots)")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: environment or 57)")
    args = ap.parse_args(argv)
    confine_to_loopback(args.domain_id)
    from match_ros.sim import make_sequence
    from match_ros.tools.bag_write import write_sequence_bag
    from match_ros.tools.build_map import build_map_from_bag

    out = Path(args.out) / f"{args.scene}_{args.matcher}{'_tri' if args.no_depth else ''}"
    out.mkdir(parents=True, exist_ok=True)
    map_seq = make_sequence(args.scene, n_frames=args.map_frames, seed=0)
    query_seq = make_query_sequence(args.scene, args.query_frames)
    map_bag, query_bag, map_path = out / "map_bag", out / "query_bag", out / "map.db"
    if not map_bag.exists():
        write_sequence_bag(map_bag, map_seq, with_depth=True, progress=True)
    if not query_bag.exists():
        write_query_bag(query_bag, query_seq)
    summary = build_map_from_bag(map_bag, map_path, args.matcher, use_depth=not args.no_depth)
    print(f"map: {summary['keyframes']} keyframes, {summary['points3d']} points, {summary['bytes'] / 1e6:.1f} MB")
    t0 = time.monotonic()
    run = replay_relocalization(map_path, query_bag, {"matcher": args.matcher, "rate_hz": args.rate_hz},
                                log_path=out / "relocalizer.log")
    score = run.score(query_seq)
    from match_ros.core.relocalization.mapstore import Map

    kf_pos = np.array([kf.T_world_cam[:3, 3] for kf in Map.load(map_path)])
    plots = plot_report(out, query_seq, run, score, kf_pos, f"{args.scene} / {args.matcher}")
    report = {k: v for k, v in score.items() if k != "errors"}
    report.update(scene=args.scene, matcher=args.matcher, map=summary, wall_s=time.monotonic() - t0)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("plots:", *map(str, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
