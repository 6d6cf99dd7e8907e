"""match_ros_bench: throughput and latency of the keyframe_matcher node.

A camera publisher in this process sends rendered 640x480 rgb8 frames at a
fixed rate (from a thread of its own, each frame on its deadline) to the node
running in its own process (real ROS 2 graph, Fast DDS on loopback). Both
processes use the shipped Fast DDS profile (shared memory for large messages),
as docs/transport.md recommends for camera drivers;
--no-fastdds-profile leaves the publisher on Fast DDS's defaults. Reported per
matcher: output rate, frames dropped by the node (drop-oldest: it never
queues), end-to-end latency (image publish -> its CorrespondenceSet received,
same clock), the node's per-stage times and the camera's period.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MAX_KEYPOINTS
from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, spin_until

DEFAULT_MATCHERS = ("orb_teblid", "sift", "xfeat_mnn", "xfeat_lighterglue")


def bench_matcher(node, frames, K, matcher: str, *, rate_hz: float, seconds: float, max_keypoints: int,
                  image_qos: str, node_params: dict | None = None) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from match_ros.msg import CorrespondenceSet

    from match_ros.ros import conversions as conv

    reliability = ReliabilityPolicy.RELIABLE if image_qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
    qos = QoSProfile(depth=5, reliability=reliability)
    topic = f"/bench_{matcher}"
    img_pub = node.create_publisher(Image, f"{topic}/image", qos)
    info_pub = node.create_publisher(CameraInfo, f"{topic}/camera_info", qos)
    arrivals, diags = [], []
    subs = [node.create_subscription(CorrespondenceSet, f"{topic}/correspondences",
                                     lambda m: arrivals.append((time.time_ns(), conv.stamp_to_ns(m.header.stamp))),
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)),
            node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)]
    msgs = [conv.numpy_to_image(f, "rgb8") for f in frames]
    info = CameraInfo(k=K.ravel().tolist(), width=frames[0].shape[1], height=frames[0].shape[0])
    params = {"matcher": matcher, "max_keypoints": max_keypoints, "image_qos": image_qos, **(node_params or {})}
    remaps = {"image": f"{topic}/image", "camera_info": f"{topic}/camera_info",
              "correspondences": f"{topic}/correspondences"}
    try:
        with NodeProcess("match_ros.nodes.keyframe_matcher", params, remaps, name=f"bench_{matcher}") as proc:
            if not spin_until(node, lambda: img_pub.get_subscription_count() > 0
                              and node.count_publishers(f"{topic}/correspondences") > 0, 120):
                raise RuntimeError(f"node did not start:\n{proc.log()[-2000:]}")
            spin_until(node, lambda: False, 1.0)
            publish_ns = {}
            camera = threading.Thread(target=_camera, args=(img_pub, info_pub, msgs, info, rate_hz, seconds,
                                                            publish_ns), daemon=True)
            camera.start()  # a steady camera in its own thread; this one receives
            spin_until(node, lambda: not camera.is_alive(), seconds + 10.0)
            spin_until(node, lambda: False, 2.0)
            stats = _node_stats(diags, f"bench_{matcher}")
    finally:
        for s in subs:
            node.destroy_subscription(s)
        node.destroy_publisher(img_pub)
        node.destroy_publisher(info_pub)
    sent = len(publish_ns)
    gaps = np.diff(sorted(publish_ns)) / 1e6
    lat = np.array([(t - s) / 1e6 for t, s in arrivals if s in publish_ns])
    window = [t for t, s in arrivals if s in publish_ns]
    out_rate = (len(window) - 1) / ((window[-1] - window[0]) / 1e9) if len(window) > 1 else 0.0
    return {"matcher": matcher, "input_hz": rate_hz, "sent": sent, "processed": len(lat),
            "dropped": sent - len(lat), "output_hz": out_rate,
            "camera_period_p5_p95_ms": [float(np.percentile(gaps, 5)), float(np.percentile(gaps, 95))],
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "latency_p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"), "node": stats}


def _camera(img_pub, info_pub, msgs, info, rate_hz: float, seconds: float, publish_ns: dict) -> None:
    """Publish camera_info + image at rate_hz for seconds, each on its deadline (sleeping, not spinning: a spin
    that waits for messages overshoots and would bunch the frames), stamped with the publish time."""
    from match_ros.ros import conversions as conv

    period, t0 = 1.0 / rate_hz, time.monotonic()
    for k in range(int(round(seconds * rate_hz))):
        time.sleep(max(0.0, t0 + k * period - time.monotonic()))
        msg = msgs[k % len(msgs)]
        now = time.time_ns()
        msg.header.stamp = conv.ns_to_stamp(now)
        msg.header.frame_id = "camera_optical_frame"
        info.header = msg.header
        info_pub.publish(info)
        img_pub.publish(msg)
        publish_ns[now] = k


def _node_stats(diags, node_name: str) -> dict:
    """The values of the newest status of the node ``node_name`` (statuses are named "/namespace/node: what")."""
    for d in reversed(diags):
        for st in d.status:
            if st.name.split(": ", 1)[0].rsplit("/", 1)[-1] == node_name:
                return {kv.key: _number(kv.value) for kv in st.values}
    return {}


def _number(text: str):
    """A diagnostic value as a float, or the text itself (last_error and the like)."""
    try:
        return float(text)
    except ValueError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matchers", nargs="+", default=list(DEFAULT_MATCHERS), help="backends to measure")
    ap.add_argument("--rate", type=float, default=30.0, help="camera rate [Hz]")
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement time per matcher [s]")
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS, help="keypoints per image")
    ap.add_argument("--image-qos", choices=("reliable", "sensor_data"), default="reliable",
                    help="QoS of the image topic (both ends)")
    ap.add_argument("--json", default="build/bench/keyframe_matcher.json", help="where to write the figures")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: environment or 57)")
    ap.add_argument("--no-fastdds-profile", action="store_true",
                    help="the camera publisher (this process) on Fast DDS's default transports")
    ap.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE",
                    help="further keyframe_matcher parameters, e.g. cpu_bf16=False (values parsed as Python "
                         "literals, else strings)")
    args = ap.parse_args(argv)
    confine_to_loopback(args.domain_id)
    from match_ros.core.config import parse_overrides

    from match_ros.ros.runtime import use_fastdds_profile

    node_params = parse_overrides(args.param)
    if not args.no_fastdds_profile:
        use_fastdds_profile()  # before rclpy.init; the node process sets it for itself in any case
    import rclpy
    import torch

    from match_ros.sim import make_sequence

    seq = make_sequence("room", n_frames=60, seed=0)
    frames = [f.rgb for f in seq]
    rclpy.init()
    node = rclpy.create_node("match_ros_bench")
    rows = []
    try:
        for m in args.matchers:
            print(f"measuring {m} ({args.seconds:.0f} s at {args.rate:.0f} Hz)...", flush=True)
            rows.append(bench_matcher(node, frames, seq.camera.K, m, rate_hz=args.rate, seconds=args.seconds,
                                      max_keypoints=args.max_keypoints, image_qos=args.image_qos,
                                      node_params=node_params))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"\nkeyframe_matcher, 640x480 rgb8 at {args.rate:.0f} Hz, {args.max_keypoints} keypoints, "
          f"image QoS {args.image_qos}, torch {torch.__version__}, {torch.get_num_threads()} threads, camera on "
          + ("Fast DDS defaults" if args.no_fastdds_profile else "the shipped Fast DDS profile"))
    print(f"{'matcher':18s} {'out Hz':>7s} {'dropped':>8s} {'lat p50':>8s} {'lat p95':>8s}   node stages [ms]: "
          f"queue extract match pose publish   camera period p5/p95 [ms]")
    for r in rows:
        n = r["node"]
        st = " ".join(f"{n.get(k + '_ms', float('nan')):6.1f}"
                      for k in ("queue", "extract", "match", "pose", "publish"))
        print(f"{r['matcher']:18s} {r['output_hz']:7.1f} {r['dropped']:4d}/{r['sent']:<4d} {r['latency_p50_ms']:7.1f} "
              f"{r['latency_p95_ms']:8.1f}   {st}   " + "{:.1f} / {:.1f}".format(*r["camera_period_p5_p95_ms"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
