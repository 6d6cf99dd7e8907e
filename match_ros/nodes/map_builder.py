"""map_builder node: build a relocalization map live from posed camera images.

Subscribes:  image, camera_info, depth (optional, use_depth), and the camera pose
             in map_frame from /tf (pose_source: tf) or a PoseStamped topic of the
             camera optical frame (pose_source: the topic name)
Publishes:   /diagnostics (1 Hz: frames, keyframes, 3D points)
Services:    ~/save_map (match_ros/SaveMap): atomic save; also on shutdown
Frames are processed in a worker thread on the newest image only (drop-oldest).
"""
from __future__ import annotations

import threading
from collections import deque

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from match_ros.srv import SaveMap

from match_ros.core.device import DEVICE_CHOICES, resolve_device
from match_ros.core.relocalization.global_desc import GlobalDescriptor
from match_ros.ros.latest import LatestSlot
from match_ros.core.relocalization.mapping import MapBuilder
from match_ros.core.features.matcher import available_matchers, build_matcher
from match_ros.core.relocalization import mapping
from match_ros.ros import conversions as conv
from match_ros.ros.params import conf_comments, declare, declare_group
from match_ros.ros.qos import IMAGE_QOS_CHOICES, image_qos
from match_ros.ros.spin import publish_diagnostics, run_node, start_worker, stop_worker
from match_ros.ros.tf_buffer import TfListener, TfLookupError


class MapBuilderNode(Node):
    def __init__(self, **kwargs):
        super().__init__("map_builder", **kwargs)
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.map_path = d("map_path", "", "Where ~/save_map and the shutdown save write the map.")
        matcher = d("matcher", "orb_teblid", "Local features of the map.", read_only=True,
                    choices=available_matchers())
        device = d("device", "auto", "Inference device.", read_only=True, choices=DEVICE_CHOICES)
        max_kp = d("max_keypoints", 1024, "Keypoints per keyframe.", read_only=True, min_value=16)
        qos_name = d("image_qos", "reliable", "QoS of image, depth and camera_info.", read_only=True,
                     choices=IMAGE_QOS_CHOICES)
        self.use_depth = d("use_depth", False, "Use aligned depth (32FC1 m / 16UC1 mm) for 3D points; "
                           "otherwise triangulate between keyframes.", read_only=True)
        self.pose_source = d("pose_source", "tf", "'tf' (look up map_frame <- image frame) or the name of a "
                             "PoseStamped topic with the camera optical frame pose.", read_only=True)
        self.map_frame = d("map_frame", "map", "Frame of the poses and of the map.")
        self.tf_timeout_s = d("tf_timeout_s", 0.2, "Wait for the pose transform at the image stamp [s].",
                              min_value=0.0)
        self.save_on_shutdown = d("save_on_shutdown", True, "Save the map to map_path at shutdown.")
        conf = declare_group(self, "mapping", MapBuilder.default_conf, conf_comments(mapping.__file__))
        dev = resolve_device(device)
        self.builder = MapBuilder(build_matcher(matcher, {"max_keypoints": max_kp}, dev),
                                  GlobalDescriptor(device=dev), conf)
        self._lock = threading.Lock()  # guards the builder (worker vs save service)
        self.slot: LatestSlot = LatestSlot()
        self._K = None
        self._depths: deque = deque(maxlen=8)
        self._poses: deque = deque(maxlen=200)
        self.errors = 0
        qos = image_qos(qos_name)
        self.create_subscription(Image, "image", self.slot.put, qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        if self.use_depth:
            self.create_subscription(Image, "depth", lambda m: self._depths.append(
                (conv.stamp_to_ns(m.header.stamp), m)), qos)
        self.tf = None
        if self.pose_source == "tf":
            self.tf = TfListener(self)
        else:
            self.create_subscription(PoseStamped, self.pose_source, lambda m: self._poses.append(
                (conv.stamp_to_ns(m.header.stamp), conv.pose_to_matrix(m.pose))), 50)
        self.create_service(SaveMap, "~/save_map", self._srv_save)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = start_worker(self._work, "map_builder_worker")

    def _on_camera_info(self, msg: CameraInfo):
        try:
            self._K = conv.camera_matrix(msg)
        except conv.ConversionError as e:
            self._error(f"camera_info: {e}")

    def _error(self, text: str):
        self.errors += 1
        self.get_logger().error(text, throttle_duration_sec=2.0)

    def _pose_at(self, msg: Image):
        stamp = conv.stamp_to_ns(msg.header.stamp)
        if self.tf is not None:
            try:
                return self.tf.lookup(self.map_frame, msg.header.frame_id, stamp, timeout_s=self.tf_timeout_s)
            except TfLookupError as e:
                self._error(f"no pose for the image: {e}")
                return None
        pose = next((T for s, T in reversed(self._poses) if s == stamp), None)
        if pose is None:
            self._error(f"no pose on {self.pose_source} with the image stamp")
        return pose

    def _work(self):
        while not self.slot.closed:
            msg = self.slot.get(timeout=0.5)
            if msg is None:
                continue
            try:
                if self._K is None:
                    self._error("no camera_info yet: frame skipped")
                    continue
                T = self._pose_at(msg)
                if T is None:
                    continue
                depth = None
                if self.use_depth:
                    stamp = conv.stamp_to_ns(msg.header.stamp)
                    m = next((m for s, m in reversed(self._depths) if s == stamp), None)
                    depth = None if m is None else conv.depth_to_numpy(m)
                with self._lock:
                    if self.builder.add_frame(conv.image_to_numpy(msg), T, self._K,
                                              conv.stamp_to_ns(msg.header.stamp), depth, msg.header.frame_id):
                        self.get_logger().info(f"keyframe {self.builder.stats['keyframes'] - 1} added",
                                               throttle_duration_sec=1.0)
            except (ValueError, conv.ConversionError) as e:
                self._error(f"frame skipped: {e}")
            except Exception as e:  # keep mapping whatever one frame does
                self._error(f"unexpected error, frame skipped: {e!r}")

    def save(self, path: str) -> tuple[bool, str]:
        if not path:
            return False, "no path given and map_path is empty"
        with self._lock:
            if self.builder.map is None:
                return False, "the map is empty: no keyframe yet"
            try:
                self.builder.build().save(path)
            except (ValueError, OSError) as e:
                return False, f"save failed, previous file untouched: {e}"
            return True, f"saved {len(self.builder.map)} keyframes to {path}"

    def _srv_save(self, req, res):
        res.success, res.message = self.save(req.path or self.map_path)
        if res.success:
            self.get_logger().info(res.message)
        else:
            self.get_logger().error(res.message)
        return res

    def _publish_diagnostics(self):
        st = self.builder.stats
        status = DiagnosticStatus(name=f"{self.get_name()}: mapping", level=DiagnosticStatus.OK,
                                  message=f"{st['keyframes']} keyframes",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in
                                          {**st, "errors": self.errors, "dropped": self.slot.dropped}.items()])
        publish_diagnostics(self, self.pub_diag, status)

    def destroy_node(self):
        """Stop the worker, then save (save_on_shutdown) so Ctrl-C never loses the map."""
        stop_worker(self.slot, self._worker, 30.0)
        if self.save_on_shutdown and self.map_path:
            ok, text = self.save(self.map_path)
            print(text, flush=True)  # the ROS logger may already be shut down here
        return super().destroy_node()


def main(args=None):
    run_node(MapBuilderNode, threads=2, args=args)


if __name__ == "__main__":
    main()
