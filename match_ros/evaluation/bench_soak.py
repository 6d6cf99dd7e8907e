"""match_ros_bench_soak: memory of a node over a long run (soak), in MB/min after a warm-up.

A camera publisher in this process sends a rendered 640x480 rgb8 sequence, played forwards and backwards (no jump
between passes), at --rate-hz to the node running in its own process (a real ROS 2 graph on loopback), stamped
with the wall time (always increasing). visual_odometry also gets the aligned depth (32FC1), map_builder each
frame's pose on a PoseStamped topic, relocalizer a map built here first from the same sequence. Every --sample-s
the node process's resident memory (/proc/PID/status: VmRSS, RssAnon, RssShmem) and its processed-frame count
(/diagnostics) are sampled; the table and the slope of VmRSS and RssAnon [MB/min] after --warmup-min minutes are
printed and written to --out, also when the soak is stopped early (Ctrl-C, SIGTERM).
Target of issue #20: < 1 MB/min after warm-up. Run it niced on a shared machine (the rate achieved is printed).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS
from match_ros.core.device import cpu_model
from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, free_domain_id, spin_until

NODES = ("keyframe_matcher", "relocalizer", "visual_odometry", "map_builder")
POSE_TOPIC = "/soak/camera_pose"


def memory_mb(pid: int) -> dict:
    """VmRSS, RssAnon, RssFile, RssShmem of a process [MB] ({} when it is gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def slope_mb_per_min(t_s, mb, warmup_s: float) -> float:
    """Least-squares slope [MB/min] of the samples after warmup_s (nan with fewer than 3)."""
    t, y = np.asarray(t_s, float), np.asarray(mb, float)
    keep = t >= warmup_s
    if keep.sum() < 3:
        return float("nan")
    return float(np.polyfit(t[keep] / 60.0, y[keep], 1)[0])


def ping_pong(n: int, k: int) -> int:
    """Frame index of publication k when n frames are played forwards, backwards, forwards..."""
    if n < 2:
        return 0
    k %= 2 * n - 2
    return k if k < n else 2 * n - 2 - k


def _build_map(seq, matcher: str, max_keypoints: int, path: Path) -> None:
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.mapping import MapBuilder

    m = build_matcher(matcher, shared_conf(matcher, max_keypoints=max_keypoints), "cpu")
    builder = MapBuilder(m, GlobalDescriptor(device="cpu"))
    for f in seq:
        builder.add_frame(f.rgb, f.T_world_cam, seq.camera.K, f.stamp_ns, None, "camera")
    builder.build().save(path)


def node_setup(node_name: str, matcher: str, max_keypoints: int, seq, workdir: Path) -> tuple:
    """(module, parameters, remaps) of the node under test."""
    params = {"matcher": matcher, "max_keypoints": max_keypoints, "image_qos": "reliable"}
    remaps = {"image": "/soak/image", "camera_info": "/soak/camera_info", "depth": "/soak/depth"}
    if node_name == "map_builder":
        params.update(pose_source=POSE_TOPIC, save_on_shutdown=False, autosave_period_s=0.0)
    elif node_name == "relocalizer":
        path = workdir / "soak_map.db"
        print(f"building the relocalizer's map from {len(seq)} frames ({matcher})...", flush=True)
        _build_map(seq, matcher, max_keypoints, path)
        params.update(map_path=str(path), use_odometry=False, publish_tf=False)
    elif node_name == "visual_odometry":
        params.update(publish_tf=False)
    return f"match_ros.nodes.{node_name}", params, remaps


def soak(node_name: str, matcher: str, *, minutes: float, rate_hz: float, sample_s: float, warmup_min: float,
         n_frames: int, max_keypoints: int, extra_params: dict) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from match_ros.ros import conversions as conv
    from match_ros.sim import make_sequence

    seq = make_sequence("room", n_frames=n_frames, seed=0)
    with_depth = node_name == "visual_odometry"
    frames = [(f.rgb, f.T_world_cam, f.depth.astype(np.float32) if with_depth else None) for f in seq]
    K = seq.camera.K
    workdir = Path(tempfile.mkdtemp(prefix="match_ros_soak_"))
    module, params, remaps = node_setup(node_name, matcher, max_keypoints, seq, workdir)
    params.update(extra_params)
    rclpy.init()
    node = rclpy.create_node("match_ros_bench_soak")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    img_pub = node.create_publisher(Image, "/soak/image", qos)
    info_pub = node.create_publisher(CameraInfo, "/soak/camera_info", qos)
    pose_pub = node.create_publisher(PoseStamped, POSE_TOPIC, 50)
    depth_pub = node.create_publisher(Image, "/soak/depth", qos)
    processed = {"n": 0}

    def on_diag(msg):
        for st in msg.status:
            if st.name.split(": ", 1)[0].rsplit("/", 1)[-1] == node_name:
                values = {kv.key: kv.value for kv in st.values}
                for key in ("processed", "queries", "frames", "keyframes_added", "received"):
                    if key in values:
                        try:
                            processed["n"], processed["key"] = int(float(values[key])), key
                        except ValueError:
                            continue
                        break

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    msgs = [conv.numpy_to_image(rgb, "rgb8") for rgb, _, _ in frames]
    depths = [conv.numpy_to_image(d, "32FC1") if d is not None else None for _, _, d in frames]
    info = CameraInfo(k=K.ravel().tolist(), width=frames[0][0].shape[1], height=frames[0][0].shape[0])
    samples, sent = [], {"n": 0}
    stop = threading.Event()

    def camera():
        period, t0 = 1.0 / rate_hz, time.monotonic()
        k = 0
        while not stop.is_set():
            time.sleep(max(0.0, t0 + k * period - time.monotonic()))
            i = ping_pong(len(msgs), k)
            msg, now = msgs[i], time.time_ns()
            msg.header.stamp = conv.ns_to_stamp(now)
            msg.header.frame_id = "camera_optical_frame"
            info.header = msg.header
            try:
                if node_name == "map_builder":
                    pose = PoseStamped(header=msg.header, pose=conv.matrix_to_pose(frames[i][1]))
                    pose.header.frame_id = "map"
                    pose_pub.publish(pose)
                if depths[i] is not None:
                    depths[i].header = msg.header
                    depth_pub.publish(depths[i])
                info_pub.publish(info)
                img_pub.publish(msg)
            except Exception:
                if rclpy.ok():
                    raise
                return  # Ctrl-C or SIGTERM shut the context down: the sampling loop reports
            sent["n"] = k = k + 1

    log_path = workdir / f"{node_name}.log"
    interrupted = False
    try:
        with NodeProcess(module, params, remaps, name=node_name, log_path=log_path) as proc:
            if not spin_until(node, lambda: not proc.alive() or img_pub.get_subscription_count() > 0, 180):
                raise RuntimeError(f"{node_name} did not start:\n{proc.log()[-2000:]}")
            if not proc.alive():
                raise RuntimeError(f"{node_name} exited:\n{proc.log()[-2000:]}")
            spin_until(node, lambda: False, 1.0)
            pid = proc.proc.pid
            thread = threading.Thread(target=camera, daemon=True)
            t0 = time.monotonic()
            thread.start()
            print(f"{'t [min]':>8s} {'sent':>7s} {'processed':>9s} {'Hz':>6s} {'VmRSS':>8s} {'RssAnon':>8s} "
                  f"{'RssShmem':>8s} [MB]", flush=True)
            end, last = t0 + 60.0 * minutes, None
            try:
                while time.monotonic() < end and proc.alive():
                    spin_until(node, lambda: False, min(sample_s, max(0.0, end - time.monotonic())))
                    t = time.monotonic() - t0
                    mem = memory_mb(pid)
                    if not mem:
                        break
                    row = {"t_s": round(t, 1), "sent": sent["n"], "processed": processed["n"], **mem}
                    hz = (row["processed"] - last["processed"]) / (t - last["t_s"]) if last else float("nan")
                    samples.append(row)
                    last = row
                    print(f"{t / 60:8.2f} {row['sent']:7d} {row['processed']:9d} {hz:6.1f} {mem['VmRSS']:8.1f} "
                          f"{mem.get('RssAnon', 0):8.1f} {mem.get('RssShmem', 0):8.1f}", flush=True)
            except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C, SIGTERM: figures of the samples so far
                interrupted = True
                print(f"interrupted after {(time.monotonic() - t0) / 60:.1f} min: figures of the samples so far",
                      flush=True)
            stop.set()
            thread.join(2.0)
            alive = proc.alive()
            log_tail = proc.log()[-2000:]
    finally:
        stop.set()
        node.destroy_node()
        rclpy.try_shutdown()
    t = [s["t_s"] for s in samples]
    warm_s = 60.0 * warmup_min
    after = [s for s in samples if s["t_s"] >= warm_s]
    rate = ((after[-1]["processed"] - after[0]["processed"]) / (after[-1]["t_s"] - after[0]["t_s"])
            if len(after) > 1 and after[-1]["t_s"] > after[0]["t_s"] else float("nan"))
    return {"node": node_name, "matcher": matcher, "minutes": minutes, "rate_hz": rate_hz,
            "processed_rate_hz": rate, "processed_key": processed.get("key", ""), "sent": sent["n"],
            "processed": samples[-1]["processed"] if samples else 0, "warmup_min": warmup_min,
            "slope_rss_mb_per_min": slope_mb_per_min(t, [s["VmRSS"] for s in samples], warm_s),
            "slope_anon_mb_per_min": slope_mb_per_min(t, [s.get("RssAnon", 0) for s in samples], warm_s),
            "rss_start_mb": samples[0]["VmRSS"] if samples else float("nan"),
            "rss_end_mb": samples[-1]["VmRSS"] if samples else float("nan"),
            "node_alive_at_end": alive, "interrupted": interrupted,
            "minutes_run": samples[-1]["t_s"] / 60.0 if samples else 0.0, "params": params, "cpu": cpu_model(),
            "samples": samples, "node_log_tail": log_tail}


def _interrupt(signum, frame):
    """SIGTERM (a timeout, a CI runner) stops the soak like Ctrl-C: the figures so far are still printed."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    from match_ros.core.config import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", choices=NODES, default="keyframe_matcher", help="node under test")
    ap.add_argument("--matcher", default=DEFAULT_MATCHER, help="matcher backend of the node")
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the soak [min]")
    ap.add_argument("--rate-hz", type=float, default=12.0, help="camera rate [Hz]")
    ap.add_argument("--warmup-min", type=float, default=2.0, help="samples before this are left out of the slope")
    ap.add_argument("--sample-s", type=float, default=5.0, help="memory sampling period [s]")
    ap.add_argument("--frames", type=int, default=60, help="rendered frames (played forwards and backwards)")
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS, help="keypoints per image")
    ap.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE", help="further node parameters")
    ap.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: a free one)")
    ap.add_argument("--out", default="build/bench/soak.json", help="where to write the figures (JSON)")
    args = ap.parse_args(argv)
    confine_to_loopback(args.domain_id if args.domain_id is not None else free_domain_id())
    from match_ros.ros.runtime import use_fastdds_profile

    use_fastdds_profile()
    cpu = cpu_model()
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"soak of {args.node} ({args.matcher}) for {args.minutes:g} min at {args.rate_hz:g} Hz on {cpu}",
          flush=True)
    r = soak(args.node, args.matcher, minutes=args.minutes, rate_hz=args.rate_hz, sample_s=args.sample_s,
             warmup_min=args.warmup_min, n_frames=args.frames, max_keypoints=args.max_keypoints,
             extra_params=parse_overrides(args.param))
    minutes = f"{r['minutes_run']:.1f} of {args.minutes:g}" if r["interrupted"] else f"{args.minutes:g}"
    print(f"\n{args.node} ({args.matcher}), {minutes} min, camera {args.rate_hz:g} Hz, processed "
          f"{r['processed_rate_hz']:.1f} Hz after warm-up, CPU {cpu}")
    print(f"VmRSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB; slope after {args.warmup_min:g} min: VmRSS "
          f"{r['slope_rss_mb_per_min']:+.2f} MB/min, RssAnon {r['slope_anon_mb_per_min']:+.2f} MB/min "
          f"(target < 1 MB/min)" + ("" if r["node_alive_at_end"] else "; THE NODE EXITED:\n" + r["node_log_tail"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=1))
    print(f"figures written to {args.out}")
    return 0 if r["node_alive_at_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
