"""Camera images between two processes: how many arrive and how late, per QoS and Fast DDS profile.

    python -m match_ros.evaluation.bench_transport [--seconds 10] [--rate 30]

A publisher process sends 640x480 rgb8 images at --rate (as a camera driver); this process subscribes like the
nodes do and counts: received share, lost before the subscriber (QoS message_lost events), latency (stamp to
arrival). Four cases: sensor_data (best effort) or reliable subscriber QoS, with the default Fast DDS transports or
with the shipped profile (16 MB shared-memory segment) in BOTH processes. Loopback only (its own domain).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_PUBLISHER = r"""
import sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rate, seconds, reliable = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "reliable"
rclpy.init()
node = rclpy.create_node("camera_driver")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
pub = node.create_publisher(Image, "image", qos)
img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8).tobytes()
end = time.monotonic() + 60.0
while pub.get_subscription_count() == 0 and time.monotonic() < end:
    time.sleep(0.05)
time.sleep(1.0)
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < seconds:
    msg = Image(height=480, width=640, encoding="rgb8", step=1920, data=img)
    msg.header.stamp = node.get_clock().now().to_msg()
    pub.publish(msg)
    n += 1
    time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
print(n, flush=True)
time.sleep(1.0)
"""


def run_case(qos_name: str, profile: bool, seconds: float, rate: float, domain: int) -> dict:
    from match_ros.evaluation.graph import confine_to_loopback

    env = dict(os.environ)
    for k in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        env.pop(k, None)
        os.environ.pop(k, None)
    if profile:
        from match_ros.ros.runtime import use_fastdds_profile

        name = use_fastdds_profile()
        env[name] = os.environ[name]
    confine_to_loopback(domain)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain))
    # the publisher offers what a camera driver usually does: best effort (sensor data) or reliable
    pub = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(rate), str(seconds),
                            "reliable" if qos_name == "reliable" else "best_effort"], env=env, stdout=subprocess.PIPE)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from match_ros.ros.camera_input import image_qos

    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bench_transport", context=ctx)
    latencies, lost = [], [0]

    def on_image(msg):
        now = node.get_clock().now().nanoseconds
        latencies.append((now - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)) * 1e-6)

    node.create_subscription(Image, "image", on_image, image_qos(qos_name),
                             event_callbacks=SubscriptionEventCallbacks(
                                 message_lost=lambda info: lost.__setitem__(0, lost[0] + info.total_count_change)))
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    end = time.monotonic() + seconds + 70.0
    while pub.poll() is None and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    sent = int(pub.stdout.read().split()[0]) if pub.returncode == 0 else 0
    ex.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"qos": qos_name, "profile": profile, "sent": sent, "received": len(latencies),
            "received_share": len(latencies) / max(sent, 1), "lost_events": lost[0],
            "latency_ms_median": float(np.median(lat)), "latency_ms_p95": float(np.percentile(lat, 95))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="publishing time per case")
    ap.add_argument("--rate", type=float, default=30.0, help="images per second")
    ap.add_argument("--domain-id", type=int, default=88, help="ROS_DOMAIN_ID of the benchmark")
    args = ap.parse_args(argv)
    rows = []
    for profile in (False, True):
        for qos_name in ("sensor_data", "reliable"):
            r = run_case(qos_name, profile, args.seconds, args.rate, args.domain_id)
            rows.append(r)
            label = "shm16" if profile else "default"
            print(f"{qos_name:11s} profile={label:7s} received {r['received']}/{r['sent']} "
                  f"({100 * r['received_share']:.1f} %), lost events {r['lost_events']}, latency median "
                  f"{r['latency_ms_median']:.1f} ms, p95 {r['latency_ms_p95']:.1f} ms", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
