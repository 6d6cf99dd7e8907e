"""keyframe_matcher node: match each camera frame against the current keyframe.

Subscribes:  image (sensor_msgs/Image), camera_info (sensor_msgs/CameraInfo),
             depth (sensor_msgs/Image, optional, when use_depth is true)
Publishes:   correspondences (match_ros/CorrespondenceSet), relative_pose
             (geometry_msgs/PoseStamped), /tf (keyframe_frame -> tracked_frame),
             /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz)
Inference runs in a worker thread fed by a one-slot drop-oldest queue: the
executor never waits on the matcher and frames that arrive while it is busy
are dropped (and counted), never queued.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from match_ros.msg import CorrespondenceSet

from match_ros.core.geometry import two_view as geometry
from match_ros.core.tracking import keyframes
from match_ros.core.device import DEVICE_CHOICES, resolve_device
from match_ros.core.tracking.frontend import Frame, KeyframeTracker
from match_ros.core.tracking.keyframes import KeyframeSelector
from match_ros.ros.latest import LatestSlot
from match_ros.core.features.matcher import available_matchers, build_matcher
from match_ros.ros import conversions as conv
from match_ros.ros.params import conf_comments, declare, declare_group
from match_ros.ros.qos import IMAGE_QOS_CHOICES, image_qos
from match_ros.ros.spin import publish_diagnostics, run_node, start_worker, stop_worker
from match_ros.ros.tf import TfBroadcaster


class KeyframeMatcherNode(Node):
    def __init__(self, **kwargs):
        super().__init__("keyframe_matcher", **kwargs)
        self.matcher_name = declare(self, "matcher", "xfeat_lighterglue", "Matching backend.",
                                    read_only=True, choices=available_matchers())
        device = declare(self, "device", "auto", "Inference device; auto uses CUDA when present.",
                         read_only=True, choices=DEVICE_CHOICES)
        max_kp = declare(self, "max_keypoints", 1024, "Keypoints extracted per image.",
                         read_only=True, min_value=16, max_value=16384)
        qos_name = declare(self, "image_qos", "sensor_data", "QoS of the image, depth and camera_info "
                           "subscriptions.", read_only=True, choices=IMAGE_QOS_CHOICES)
        self.use_depth = declare(self, "use_depth", False, "Subscribe to 'depth' (aligned with image, "
                                 "32FC1 m or 16UC1 mm) for metric relative poses.", read_only=True)
        self.depth_wait_s = declare(self, "depth_wait_s", 0.2, "How long a frame waits for the depth image "
                                    "with its stamp before it is matched without depth [s].", min_value=0.0)
        self.publish_tf = declare(self, "publish_tf", True, "Broadcast keyframe_frame -> tracked_frame.")
        self.keyframe_frame = declare(self, "keyframe_frame", "match_ros_keyframe",
                                      "TF frame of the current keyframe's camera (optical).")
        self.tracked_frame = declare(self, "tracked_frame", "match_ros_camera",
                                     "TF frame of the current camera (optical), child of keyframe_frame.")
        kf_conf = declare_group(self, "keyframe", keyframes.default_keyframe_conf,
                                conf_comments(keyframes.__file__))
        pose_conf = declare_group(self, "geometry", geometry.default_pose_conf,
                                  conf_comments(geometry.__file__))

        self.matcher = build_matcher(self.matcher_name, {"max_keypoints": max_kp}, resolve_device(device))
        self.tracker = KeyframeTracker(self.matcher, KeyframeSelector(kf_conf), pose_conf)
        self._warm_up()

        self.slot: LatestSlot = LatestSlot()
        self._K = None
        self._depths: deque = deque(maxlen=8)  # (stamp_ns, depth msg), matched to images by stamp
        self._depth_cond = threading.Condition()
        self._errors = 0
        self._processed = 0
        self._keyframes = 0
        self._latencies_ms: deque = deque(maxlen=300)
        self._done_times: deque = deque(maxlen=300)
        self._stage_ms: deque = deque(maxlen=300)  # per frame {queue (wait + convert), extract, match, pose, publish} [ms]
        self._last_error = ""
        self._error_logged_at: dict = {}

        qos = image_qos(qos_name)
        self.create_subscription(Image, "image", self._on_image, qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        if self.use_depth:
            self.create_subscription(Image, "depth", self._on_depth, qos)
        self.pub_corr = self.create_publisher(CorrespondenceSet, "correspondences", 10)
        self.pub_pose = self.create_publisher(PoseStamped, "relative_pose", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf = TfBroadcaster(self) if self.publish_tf else None
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = start_worker(self._work, "keyframe_matcher_worker")
        self.get_logger().info(f"matcher={self.matcher_name} device={self.matcher.device} "
                               f"max_keypoints={max_kp} image_qos={qos_name}")

    def _warm_up(self):
        """One extraction + match on a synthetic image, so the first real frame is not slow."""
        rng = np.random.default_rng(0)
        img = (rng.random((480, 640)) * 255).astype(np.uint8)
        f = self.matcher.extract(img)
        self.matcher.match(f, f)

    # ------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image):
        self.slot.put((time.monotonic(), msg))

    def _on_depth(self, msg: Image):
        with self._depth_cond:
            self._depths.append((conv.stamp_to_ns(msg.header.stamp), msg))
            self._depth_cond.notify_all()

    def _on_camera_info(self, msg: CameraInfo):
        try:
            self._K = conv.camera_matrix(msg)
        except conv.ConversionError as e:
            self._count_error(f"camera_info: {e}")

    # ------------------------------------------------------------ worker
    def _work(self):
        while not self.slot.closed:
            item = self.slot.get(timeout=0.5)
            if item is None:
                continue
            received, msg = item
            try:
                self._process(msg, received)
            except (conv.ConversionError, ValueError) as e:
                self._count_error(f"frame {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}: {e}")
            except Exception as e:  # keep running on anything a frame can trigger
                self._count_error(f"unexpected error, frame skipped: {e!r}")

    def _process(self, msg: Image, received: float):
        image = conv.image_to_numpy(msg)
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        if self._K is None:
            self.get_logger().warn("no camera_info received yet: publishing matches without pose",
                                   throttle_duration_sec=5.0)
        depth = self._depth_for(stamp_ns) if self.use_depth else None
        t_convert = time.monotonic()
        result = self.tracker.process(Frame(image, stamp_ns, msg.header.frame_id, self._K, depth))
        t_publish = time.monotonic()
        self._publish(result, msg.header)
        self._stage_ms.append({**result.timings_ms, "queue": 1e3 * (t_convert - received),
                               "publish": 1e3 * (time.monotonic() - t_publish)})
        self._processed += 1
        self._keyframes += int(result.is_keyframe)
        now = time.monotonic()
        self._latencies_ms.append(1e3 * (now - received))
        self._done_times.append(now)

    def _depth_for(self, stamp_ns: int):
        deadline = time.monotonic() + self.depth_wait_s
        with self._depth_cond:
            while True:
                msg = next((m for s, m in reversed(self._depths) if s == stamp_ns), None)
                remaining = deadline - time.monotonic()
                if msg is not None or remaining <= 0:
                    break
                self._depth_cond.wait(remaining)
        if msg is not None:
            return conv.depth_to_numpy(msg)
        self.get_logger().warn("no depth image with the image's stamp: scale-free pose",
                               throttle_duration_sec=5.0)
        return None

    def _publish(self, result, header: Header):
        self.pub_corr.publish(conv.correspondence_set(result, header, self.matcher_name))
        if not result.pose.valid:
            return
        out_header = Header(stamp=header.stamp, frame_id=self.keyframe_frame)
        self.pub_pose.publish(PoseStamped(header=out_header, pose=conv.matrix_to_pose(result.pose.T_ref_query)))
        if self.tf is not None:
            self.tf.send([conv.matrix_to_transform(result.pose.T_ref_query, out_header, self.tracked_frame)])

    def _count_error(self, text: str):
        """Count and log an error; the same kind of error (digits ignored) at most every 2 s."""
        self._errors += 1
        self._last_error = text
        kind, now = re.sub(r"[0-9.]+", "#", text), time.monotonic()
        if now - self._error_logged_at.get(kind, -1e9) >= 2.0:
            self._error_logged_at[kind] = now
            self.get_logger().error(text)

    # ------------------------------------------------------------ diagnostics
    def stats(self) -> dict:
        lat = np.array(self._latencies_ms) if self._latencies_ms else np.zeros(1)
        times = list(self._done_times)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        stages = {f"{k}_ms": float(np.mean([t.get(k, 0.0) for t in self._stage_ms]))
                  for k in ("queue", "extract", "match", "pose", "publish")} if self._stage_ms else {}
        return {"received": self.slot.received, "processed": self._processed, "dropped": self.slot.dropped,
                "errors": self._errors, "keyframes": self._keyframes, "rate_hz": rate,
                "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p95_ms": float(np.percentile(lat, 95)),
                **stages}

    def _publish_diagnostics(self):
        s = self.stats()
        status = DiagnosticStatus(name=f"{self.get_name()}: keyframe matching", hardware_id=self.matcher_name)
        if self._K is None and s["received"] > 0:
            status.level, status.message = DiagnosticStatus.WARN, "no camera_info: no poses"
        elif self._last_error:
            status.level, status.message = DiagnosticStatus.WARN, f"last error: {self._last_error}"
        else:
            status.level, status.message = DiagnosticStatus.OK, "tracking"
        status.values = [KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in s.items()]
        publish_diagnostics(self, self.pub_diag, status)

    def destroy_node(self):
        stop_worker(self.slot, self._worker, 5.0)
        return super().destroy_node()


def main(args=None):
    run_node(KeyframeMatcherNode, args=args)


if __name__ == "__main__":
    main()
