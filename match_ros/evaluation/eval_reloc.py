"""match_ros_eval_reloc: relocalization accuracy against ground truth, on any pair of bags or a rendered scene.

    match_ros_eval_reloc --map-bag MAP --query-bag QUERY [--gt-topic T] [--depth-topic T] --matcher M --json OUT
    match_ros_eval_reloc --scene office [--query classic] --matcher xfeat_lighterglue [--node]

Builds the map from the mapping bag (depth when it has some, triangulation otherwise; cached in OUT/maps under a
key of the bag's content and every option that changes the map, --rebuild-map to build it again), then
relocalizes EVERY query frame offline through the core localizer (none dropped): globally (--mode global, each
frame alone) or as a robot would (--mode continuous, the node's ContinuousLocalizer: after a fix, the last pose
moved by the odometry on /tf at the frame's stamp is the prior; with --odometry none there is no odometry, and
only a fix younger than max_fix_age_s, confirmed by the retrieval, is tracked from; otherwise, and when tracking
fails, a global search); --mode plain is the reference column: retrieval, the matcher against the first 10
keyframes, one PnP over the pooled matches of the 3 with the most, no checks (``baselines.PlainPipeline``). Every
localizer setting is --localizer KEY=VALUE (e.g. max_keyframes_matched=5); the
output folder's name carries every option that changes the figures. The ground truth is a PoseStamped topic of
the camera in the map frame (--gt-topic, found automatically) or /tf map -> camera. With --node the query bag is
also replayed in real time through the relocalizer node process (a real ROS 2 graph on loopback), which answers
what it can keep up with.
The JSON report (also printed) has recall_5cm_2deg, recall_25cm_5deg, recall_1m_10deg, wrong_poses (> 1 m or
> 10 deg), no_pose, median_t_m, median_r_deg, ms_per_query_median, ms_per_query_p95, retrieval_hit_at_1/3/10,
nees_mean and within_3sigma (covariance honesty); plots go beside it, and the trajectories in TUM format
(``offline_estimate.tum`` / ``offline_groundtruth.tum``, with --node ``node_estimate.tum`` /
``node_groundtruth.tum``; poses in the map frame, frames without a pose left out of the estimate) for
``evo_ape tum GT EST`` (printed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS
from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, spin_until
from match_ros.evaluation.reloc_metrics import QueryRecord, keyframe_sees_view, plot_report, score, write_records_tum
from match_ros.evaluation.reloc_scenes import (QUERY_KINDS, T_MAP_ODOM, make_query_sequence, scene_bags,  # noqa: F401
                                               write_query_bag)

MODES = ("global", "continuous", "plain")
ODOMETRY = ("drift", "none", "delayed")


def odometry_arrives(rng: np.random.Generator, delay_s: float, wait_s: float) -> bool:
    """Does the odometry at a frame's stamp arrive within ``wait_s`` of the image (the time the node holds a frame
    for it, ``odom_wait_s``), when it comes ``delay_s`` late on average (latency drawn in [0.5, 1.5] x delay_s)."""
    return bool(delay_s * rng.uniform(0.5, 1.5) <= wait_s)


def run_offline(map_path, query_bag, matcher: str = "xfeat_lighterglue", mode: str = "global", stride: int = 1,
                localizer_conf: dict | None = None, pnp_conf: dict | None = None, gt_topic: str = "auto",
                image_topic: str = "auto", info_topic: str = "auto", device: str = "auto",
                progress: bool = True, odometry: str = "drift", odom_delay_s: float = 0.3, odom_wait_s: float = 0.5,
                continuous_conf: dict | None = None, matcher_conf: dict | None = None) -> list:
    """Relocalize every ``stride``-th query frame with a ground-truth pose; returns [QueryRecord].

    Continuous mode runs ``ContinuousLocalizer`` (the node's state) with the query bag's odometry (odom -> camera
    on /tf): ``drift`` as recorded, ``none`` ignored, ``delayed`` each message ``odom_delay_s`` late on average
    and used only when it arrives within ``odom_wait_s`` (the node's wait). matcher_conf: backend settings on top of
    the map's max_keypoints (the map should have been built with the same)."""
    from tqdm import tqdm

    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.relocalization.continuous import ContinuousLocalizer
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.localizer import Localizer
    from match_ros.core.relocalization.mapstore import Map
    from match_ros.evaluation.baselines import PlainPipeline
    from match_ros.tools.bagframes import BagFrames

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if odometry not in ODOMETRY:
        raise ValueError(f"odometry must be one of {ODOMETRY}")
    m = Map.load(map_path)
    dev = resolve_device(device)
    conf = dict(localizer_conf or {})
    gd = GlobalDescriptor(device=dev) if conf.get("retrieval") == "global" else None
    max_kp = int(m.matcher_conf.get("max_keypoints", DEFAULT_MAX_KEYPOINTS))
    conf_m = {**shared_conf(m.matcher_name, max_keypoints=max_kp), **(matcher_conf or {})}
    matcher = build_matcher(m.matcher_name, conf_m, dev)
    loc = Localizer(m, matcher, gd, conf, pnp_conf)
    tracker = ContinuousLocalizer(loc, continuous_conf)
    plain = PlainPipeline(loc)
    frames = BagFrames(query_bag, image_topic, info_topic, "", gt_topic)
    records, latency = [], np.random.default_rng(17)
    for i, f in enumerate(tqdm(frames, desc=f"queries ({mode}, odometry {odometry})", unit="frame",
                               disable=not progress)):
        if i % stride or f.T_map_cam is None:
            continue
        arrived = odometry == "drift" or (odometry == "delayed"
                                          and odometry_arrives(latency, odom_delay_s, odom_wait_s))
        T_odom_cam = f.T_odom_cam if arrived else None
        t0 = time.perf_counter()
        if mode == "continuous":
            r = tracker.localize(f.image, f.K, f.stamp_ns, T_odom_cam)
        elif mode == "plain":
            r = plain.localize(f.image, f.K)
        else:
            r = loc.localize(f.image, f.K)
        ms = 1e3 * (time.perf_counter() - t0)
        size = (f.image.shape[1], f.image.shape[0])
        hits = [keyframe_sees_view(m[k], f.T_map_cam, f.K, size) for k, _ in r.retrieved[:10]]
        records.append(QueryRecord(f.stamp_ns, f.T_map_cam, r.T_map_cam if r.success else None,
                                   r.covariance if r.success else None, ms, r.reason, r.mode, hits,
                                   dict(r.timings_ms), prior=r.stats.get("prior", ""),
                                   stats={"inliers": r.num_inliers, **{k: v for k, v in r.stats.items()
                                                                       if isinstance(v, (int, float))}}))
    return records


def replay_relocalization(map_path, query_bag, params: dict, *, rate=1.0, domain_id=None, startup_timeout=90.0,
                          log_path=None, topics=("/camera/image_raw", "/camera/camera_info", "/tf"),
                          gt_topic: str = "/ground_truth/pose", tf_sink: list | None = None,
                          subscribe: dict | None = None, tum_dir=None, remaps: dict | None = None) -> tuple:
    """Replay ``query_bag`` through the relocalizer node process. Returns (records, map_odom, node_log) with
    records for the frames the node answered ([QueryRecord], ground truth from ``gt_topic`` in the bag) and
    map_odom the map -> odom transforms it broadcast [(stamp_ns, T)]. tf_sink: a list that receives every other
    transform seen on /tf as (stamp_ns, parent, child, T) (e.g. from a visual_odometry node running alongside).
    subscribe: {topic: (message type, callback)}: more topics to receive while the bag plays (reliable).
    tum_dir: also write the node's poses and their ground truth there as ``node_estimate.tum`` /
    ``node_groundtruth.tum`` (``write_records_tum``). remaps: more topic remappings of the node {from: to}."""
    confine_to_loopback(domain_id)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from match_ros.ros.codec import pose_to_matrix, stamp_to_ns, transform_to_matrix
    from match_ros.tools.bag_play import BagPlayer
    from match_ros.tools.bagio import read_topic

    gt = {stamp_to_ns(msg.header.stamp): pose_to_matrix(msg.pose) for _, msg in read_topic(query_bag, gt_topic)}
    statuses, poses, map_odom = {}, {}, []
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
        vals = {kv.key: kv.value for kv in st.values}
        statuses[stamp_to_ns(m.header.stamp)] = (st.message, vals)

    def on_pose(m):
        poses[stamp_to_ns(m.header.stamp)] = (pose_to_matrix(m.pose.pose), np.array(m.pose.covariance).reshape(6, 6))

    def on_tf(m):
        for t in m.transforms:
            if t.header.frame_id == "map" and t.child_frame_id == "odom":
                map_odom.append((stamp_to_ns(t.header.stamp), transform_to_matrix(t.transform)))
            elif tf_sink is not None:
                tf_sink.append((stamp_to_ns(t.header.stamp), t.header.frame_id, t.child_frame_id,
                                transform_to_matrix(t.transform)))

    node.create_subscription(DiagnosticArray, "/relocalizer/status", on_status, reliable)
    node.create_subscription(PoseWithCovarianceStamped, "/relocalizer/pose", on_pose, reliable)
    node.create_subscription(TFMessage, "/tf", on_tf, QoSProfile(depth=500))
    for topic, (msg_type, callback) in (subscribe or {}).items():
        node.create_subscription(msg_type, topic, callback, reliable)
    try:
        player = BagPlayer(node, query_bag, rate=rate, topics=list(topics))
        remaps = {"image": topics[0], "camera_info": topics[1], **(remaps or {})}
        with NodeProcess("match_ros.nodes.relocalizer", params, remaps, log_path=log_path) as proc:
            pub = player.publishers[topics[0]]
            if not spin_until(node, lambda: not proc.alive() or (pub.get_subscription_count() > 0
                              and node.count_publishers("/relocalizer/status") > 0), startup_timeout, executor=ex) \
                    or not proc.alive():
                raise RuntimeError(f"relocalizer did not come up:\n{proc.log()[-3000:]}")
            spin_until(node, lambda: False, 1.0, executor=ex)
            thread = player.start()
            while thread.is_alive():
                ex.spin_once(timeout_sec=0.05)
            n_before = -1
            while len(statuses) != n_before:  # until the node has answered its last query
                n_before = len(statuses)
                spin_until(node, lambda: len(statuses) > n_before, 3.0, executor=ex)
            node_log = proc.log()
        player.close()
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    records = []
    for stamp, (message, vals) in sorted(statuses.items()):
        if stamp not in gt:
            continue
        T, cov = poses.get(stamp, (None, None))
        ms = float(vals.get("query_ms", "nan"))
        records.append(QueryRecord(stamp, gt[stamp], T, cov, ms, message, vals.get("mode", ""),
                                   prior=vals.get("prior", ""), stats=vals))  # the status's values, as text
    if tum_dir is not None:
        write_records_tum(tum_dir, "node", records)
    return records, map_odom, node_log


def localizer_options(items: list) -> dict:
    """["key=value", ...] -> {key: value} checked against the localizer's settings (ValueError naming the key)."""
    from match_ros.core.relocalization.localizer import localizer_spec

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in localizer_spec:
            raise ValueError(f"--localizer {item!r}: expected KEY=VALUE with KEY one of {sorted(localizer_spec)}")
        kind = type(localizer_spec[key].default)
        value = text.lower() in ("1", "true", "yes", "on") if kind is bool else kind(text)
        out[key] = localizer_spec[key].check(f"localizer {key}", value)
    return out


def map_cache_key(bag, matcher: str, depth_topic: str, builder_conf: dict | None) -> str:
    """12 hex digits of the bag's content (every file of the bag folder, sha256) and the options the map is built
    with: a regenerated bag, another matcher or depth topic never reuse a map (before: cached by the folder's name,
    and two scenes' bags both called "map" shared one). The backend's default settings count too: a changed default
    (a new extraction step) builds the map again."""
    import hashlib

    from match_ros.core.features.matcher import matcher_class

    h = hashlib.sha256(json.dumps([matcher, matcher_class(matcher).default_conf, depth_topic, builder_conf],
                                  sort_keys=True, default=str).encode())
    bag = Path(bag)
    for f in sorted(p for p in bag.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(bag)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def output_name(base: str, args, conf: dict) -> str:
    """The run's folder name: ``base`` plus every option that changes the figures and is not at its default."""
    parts = [base]
    if args.mode == "continuous" and args.odometry != "drift":
        parts.append(f"odom-{args.odometry}")
    if args.stride != 1:
        parts.append(f"stride{args.stride}")
    parts += [f"{k}-{v}" for k, v in sorted(conf.items()) if k not in ("max_height_change_m", "max_tilt_change_deg")]
    return "_".join(str(p).replace("/", "-") for p in parts)


def main(argv=None) -> int:
    from match_ros.core.features.matcher import available_matchers
    from match_ros.sim import SCENES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("data: a rendered scene, or a mapping bag and a query bag")
    src.add_argument("--scene", choices=SCENES + ("chessboard",),
                     help="render this scene's mapping and query bags (cached in --out); chessboard: the real "
                          "stereo images (map from the left camera, queries from the right one)")
    src.add_argument("--query", choices=QUERY_KINDS, default="changed_day", help="query run of --scene")
    src.add_argument("--map-frames", type=int, default=300, help="frames of the rendered mapping run")
    src.add_argument("--query-frames", type=int, default=300, help="frames of the rendered query run (30 Hz)")
    src.add_argument("--map-bag", help="bag with images, camera_info, camera poses in the map frame, maybe depth")
    src.add_argument("--query-bag", help="bag with images, camera_info and the ground-truth pose")
    src.add_argument("--gt-topic", default="auto", help="PoseStamped ground truth of the query camera in the map "
                     "frame (default: found; else /tf map -> camera)")
    src.add_argument("--depth-topic", default="auto", help="depth topic of the mapping bag (default: found)")
    ap.add_argument("--matcher", default=DEFAULT_MATCHER, choices=available_matchers(), help="local features")
    ap.add_argument("--mode", choices=MODES, default="global",
                    help="global: each frame alone; continuous: the node's tracking (see --odometry); plain: the "
                    "reference pipeline (retrieval, matcher, pooled PnP, no checks)")
    ap.add_argument("--odometry", choices=ODOMETRY, default="drift",
                    help="continuous mode's odometry: drift (the query bag's /tf, drifting), none (no odometry: a fix "
                    "younger than max_fix_age_s confirmed by retrieval, else global), delayed (/tf late, used within "
                    "the node's odom_wait_s)")
    ap.add_argument("--stride", type=int, default=1, help="relocalize every n-th query frame (default: all)")
    ap.add_argument("--top-k", type=int, default=None, help="keyframes retrieved per query (localizer top_k)")
    ap.add_argument("--retrieval", choices=("bow", "global"), default=None, help="retrieval method")
    ap.add_argument("--localizer", action="append", default=[], metavar="KEY=VALUE",
                    help="any localizer setting (repeatable), e.g. max_keyframes_matched=5; see "
                    "config/relocalizer.yaml for the names")
    ap.add_argument("--rebuild-map", action="store_true", help="build the map again even when a cached one matches")
    ap.add_argument("--node", action="store_true", help="also replay the query bag through the relocalizer node")
    ap.add_argument("--out", default="build/eval_reloc", help="output folder (bags, maps, report, plots)")
    ap.add_argument("--json", default=None, help="write the report here too")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for --node (default: env or 57)")
    args = ap.parse_args(argv)
    if bool(args.scene) == bool(args.map_bag or args.query_bag) or (not args.scene and not (
            args.map_bag and args.query_bag)):
        ap.error("give --scene, or both --map-bag and --query-bag")
    from match_ros.evaluation.trajectories import evo_command
    from match_ros.tools.bagio import BagError
    from match_ros.tools.build_map import build_map_from_bag

    out = Path(args.out)
    conf = {k: v for k, v in (("top_k", args.top_k), ("retrieval", args.retrieval)) if v is not None}
    try:
        conf.update(localizer_options(args.localizer))
    except ValueError as e:
        ap.error(str(e))
    if args.scene == "chessboard":
        from match_ros.evaluation.chessboard import chessboard_bags

        map_bag, query_bag = chessboard_bags(out / "bags")
        name = f"chessboard_{args.matcher}_{args.mode}"
        # the board is the world: its frame is not gravity-aligned, so no height / tilt plausibility; every view
        # of the board is a keyframe (13 views)
        conf.update(max_height_change_m=0.0, max_tilt_change_deg=0.0)
    elif args.scene:
        map_bag, query_bag = scene_bags(out / "bags", args.scene, args.query, args.map_frames, args.query_frames)
        name = f"{args.scene}_{args.query}_{args.matcher}_{args.mode}"
    else:
        map_bag, query_bag = Path(args.map_bag), Path(args.query_bag)
        name = f"{map_bag.name}_{query_bag.name}_{args.matcher}_{args.mode}"
    name = output_name(name, args, conf)
    out_dir = out / name
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        builder_conf = {"min_overlap": 1.0} if args.scene == "chessboard" else None
        key = map_cache_key(map_bag, args.matcher, args.depth_topic, builder_conf)
        map_path = out / "maps" / f"{map_bag.name}_{args.matcher}_{key}.db"
        map_path.parent.mkdir(parents=True, exist_ok=True)
        if map_path.exists() and not args.rebuild_map:
            print(f"map: {map_path} (cached: same bag content and options)")
        else:
            summary = build_map_from_bag(map_bag, map_path, args.matcher, depth_topic=args.depth_topic,
                                         builder_conf=builder_conf)
            print(f"map: {summary['keyframes']} keyframes, {summary['points3d']} points, "
                  f"{summary['bytes'] / 1e6:.1f} MB -> {map_path}")
        records = run_offline(map_path, query_bag, args.matcher, args.mode, args.stride, conf, gt_topic=args.gt_topic,
                              odometry=args.odometry)
    except (BagError, ValueError, OSError) as e:
        print(f"match_ros_eval_reloc: error: {e}", file=sys.stderr)
        return 2
    if not records:
        print("match_ros_eval_reloc: error: no query frame has a ground-truth pose", file=sys.stderr)
        return 2
    from match_ros.core.relocalization.mapstore import Map

    m = Map.load(map_path)
    report = {"offline": score(records), "scene": args.scene, "query": args.query if args.scene else None,
              "map_bag": str(map_bag), "query_bag": str(query_bag), "matcher": args.matcher, "mode": args.mode,
              "odometry": args.odometry if args.mode == "continuous" else None, "stride": args.stride,
              "map": str(map_path), "keyframes": len(m), "localizer": conf}
    kf_pos = np.array([kf.T_world_cam[:3, 3] for kf in m])
    plots = plot_report(out_dir, records, kf_pos, f"{name} (offline)")
    tum = {"offline": write_records_tum(out_dir, "offline", records)}
    if args.node:
        node_records, _, log = replay_relocalization(map_path, query_bag, {"matcher": args.matcher, **{
            f"localizer.{k}": v for k, v in conf.items()}}, domain_id=args.domain_id, log_path=out_dir / "node.log",
            tum_dir=out_dir)
        report["node"] = {**score(node_records), "frames": len(records) * args.stride}
        tum["node"] = (out_dir / "node_groundtruth.tum", out_dir / "node_estimate.tum")
    report["tum"] = {k: {"groundtruth": str(g), "estimate": str(e)} for k, (g, e) in tum.items()}
    (out_dir / "records.json").write_text(json.dumps([
        {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(r).items()} for r in records]))
    text = json.dumps(report, indent=2)
    (out_dir / "report.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print("plots:", *map(str, plots))
    for k, (g, e) in tum.items():
        # no alignment: the poses are in the map frame, a fit would hide a wrong one
        print(f"trajectories ({k}, TUM): {evo_command(g, e, 'none')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
