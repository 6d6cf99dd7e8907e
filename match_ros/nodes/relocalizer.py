"""relocalizer node: global visual relocalization against a keyframe map (REP 105).

Subscribes:  image, camera_info (sensor_msgs), initialpose (optional prior,
             geometry_msgs/PoseWithCovarianceStamped in the map frame), /tf, /tf_static
Publishes:   pose (PoseWithCovarianceStamped of base_frame in map_frame, covariance
             from the PnP solution), correspondences (match_ros/CorrespondenceSet of the
             best keyframe), status (diagnostic_msgs/DiagnosticArray per query, stamped
             with the image), /tf map->odom (map->base_frame when odom_frame is empty),
             /diagnostics (1 Hz)
Services:    ~/relocalize, ~/save_map, ~/load_map
Queries run in a worker thread on the newest image only (drop-oldest). A
solution is published only when it passes every check; otherwise the status
says why and nothing else is published.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from match_ros.msg import CorrespondenceSet
from match_ros.srv import LoadMap, Relocalize, SaveMap

from match_ros.core.geometry import absolute_pose
from match_ros.core.relocalization import localizer
from match_ros.core.device import DEVICE_CHOICES, resolve_device
from match_ros.core.relocalization.global_desc import GlobalDescriptor
from match_ros.ros.latest import LatestSlot
from match_ros.core.relocalization.localizer import Localizer
from match_ros.core.relocalization.mapstore import Map, MapError, matcher_identity
from match_ros.core.features.matcher import available_matchers, build_matcher
from match_ros.ros import conversions as conv
from match_ros.ros.params import conf_comments, declare, declare_group
from match_ros.ros.qos import IMAGE_QOS_CHOICES, image_qos
from match_ros.ros.spin import publish_diagnostics, run_node, start_worker, stop_worker
from match_ros.ros.tf import TfBroadcaster
from match_ros.ros.tf_buffer import TfListener, TfLookupError


class RelocalizerNode(Node):
    def __init__(self, **kwargs):
        super().__init__("relocalizer", **kwargs)
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.map_path = d("map_path", "", "Map file to load at start (empty: start without a map).")
        matcher = d("matcher", "orb_teblid", "Matching backend; must be the one the map was built with.",
                    read_only=True, choices=available_matchers())
        device = d("device", "auto", "Inference device.", read_only=True, choices=DEVICE_CHOICES)
        max_kp = d("max_keypoints", 1024, "Keypoints per query image.", read_only=True, min_value=16)
        qos_name = d("image_qos", "sensor_data", "QoS of image and camera_info.", read_only=True,
                     choices=IMAGE_QOS_CHOICES)
        self.mode = d("mode", "continuous", "continuous: relocalize images at up to rate_hz; "
                      "on_request: only on ~/relocalize.", choices=("continuous", "on_request"))
        self.rate_hz = d("rate_hz", 2.0, "Upper bound on queries per second in continuous mode.", min_value=0.01)
        self.map_frame = d("map_frame", "map", "Map frame (REP 105).")
        self.odom_frame = d("odom_frame", "odom", "Odometry frame; empty: publish map -> base_frame instead.")
        self.base_frame = d("base_frame", "base_link", "Robot frame whose pose is published; empty: the "
                            "camera's frame (image header frame_id).")
        self.publish_tf = d("publish_tf", True, "Broadcast map -> odom (or map -> base_frame).")
        self.tf_timeout_s = d("tf_timeout_s", 0.2, "Wait for odom/base transforms at the image stamp [s].",
                              min_value=0.0)
        loc_conf = declare_group(self, "localizer", localizer.default_localizer_conf, conf_comments(localizer.__file__))
        pnp_conf = declare_group(self, "pnp", absolute_pose.default_pnp_conf, conf_comments(absolute_pose.__file__))

        dev = resolve_device(device)
        self.matcher = build_matcher(matcher, {"max_keypoints": max_kp}, dev)
        self.global_desc = GlobalDescriptor(device=dev)
        self.localizer = Localizer(None, self.matcher, self.global_desc, loc_conf, pnp_conf)
        probe = self.matcher.extract((np.random.default_rng(0).random((480, 640)) * 255).astype(np.uint8))
        self._matcher_identity = matcher_identity(matcher, max_kp, probe.descriptors.shape[1], probe.descriptors.dtype)
        self.map = None
        self._lock = threading.Lock()  # guards map / localizer / pending requests
        if self.map_path:
            self._log_outcome(*self._load(self.map_path))

        self.slot: LatestSlot = LatestSlot()
        self._K = None
        self._prior = None
        self._requests: list = []  # [(threading.Event, holder dict)] waiting for the next result
        self._last_query = 0.0
        self.counts = {"queries": 0, "accepted": 0, "rejected": 0, "errors": 0}
        self._last_status = "no query yet"
        qos = image_qos(qos_name)
        self.create_subscription(Image, "image", lambda m: self.slot.put(m), qos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        self.create_subscription(PoseWithCovarianceStamped, "initialpose", self._on_initialpose, 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "pose", 10)
        self.pub_corr = self.create_publisher(CorrespondenceSet, "correspondences", 10)
        self.pub_status = self.create_publisher(DiagnosticArray, "status", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf = TfBroadcaster(self)
        self.tf_listener = TfListener(self)
        services = ReentrantCallbackGroup()
        self.create_service(Relocalize, "~/relocalize", self._srv_relocalize, callback_group=services)
        self.create_service(SaveMap, "~/save_map", self._srv_save, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(LoadMap, "~/load_map", self._srv_load, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = start_worker(self._work, "relocalizer_worker")

    # ------------------------------------------------------------ map
    def _load(self, path: str) -> tuple[bool, str]:
        try:
            new_map = Map.load(path, self._matcher_identity, self.global_desc.identity)
        except (MapError, OSError, ValueError) as e:
            return False, f"map not loaded: {e}"
        with self._lock:
            self.map, self.map_path = new_map, path
            self.localizer.set_map(new_map)
        return True, f"map {path} loaded: {len(new_map)} keyframes"

    def _srv_load(self, req, res):
        res.success, res.message = self._load(req.path)
        res.num_keyframes = len(self.map) if res.success else 0
        self._log_outcome(res.success, res.message)
        return res

    def _log_outcome(self, ok: bool, text: str):
        # one call site per severity: rclpy refuses to change a call site's severity
        if ok:
            self.get_logger().info(text)
        else:
            self.get_logger().error(text)

    def _srv_save(self, req, res):
        path = req.path or self.map_path
        if self.map is None or not path:
            res.success, res.message = False, "no map loaded" if self.map is None else "no path given"
            return res
        try:
            self.map.save(path)
            res.success, res.message = True, f"saved {len(self.map)} keyframes to {path}"
        except (ValueError, OSError) as e:  # MapError is a ValueError
            res.success, res.message = False, f"save failed, previous file untouched: {e}"
        self._log_outcome(res.success, res.message)
        return res

    # ------------------------------------------------------------ inputs
    def _on_camera_info(self, msg: CameraInfo):
        try:
            self._K = conv.camera_matrix(msg)
        except conv.ConversionError as e:
            self._error(f"camera_info: {e}")

    def _on_initialpose(self, msg: PoseWithCovarianceStamped):
        if msg.header.frame_id and msg.header.frame_id != self.map_frame:
            self._error(f"initialpose in frame '{msg.header.frame_id}', expected '{self.map_frame}'")
            return
        self._prior = conv.pose_to_matrix(msg.pose.pose)  # pose of base_frame in the map
        self.get_logger().info("prior pose received")

    def _srv_relocalize(self, req, res):
        done, holder = threading.Event(), {}
        with self._lock:
            self._requests.append((done, holder))
        if not done.wait(req.timeout_s if req.timeout_s > 0 else 2.0):
            res.success, res.message = False, "timed out waiting for an image and a solution"
            return res
        res.success, res.message = holder["success"], holder["message"]
        if holder.get("pose") is not None:
            res.pose, res.num_inliers = holder["pose"], holder["num_inliers"]
        return res

    # ------------------------------------------------------------ worker
    def _work(self):
        while not self.slot.closed:
            msg = self.slot.get(timeout=0.5)
            if msg is None:
                continue
            with self._lock:
                requests, self._requests = self._requests, []
            due = self.mode == "continuous" and time.monotonic() - self._last_query >= 1.0 / self.rate_hz
            if not requests and not due:
                continue
            self._last_query = time.monotonic()
            holder = {"success": False, "message": "", "pose": None}
            try:
                self._query(msg, holder)
            except Exception as e:  # a bad frame must not stop the node
                holder["message"] = f"query failed: {e!r}"
                self._error(holder["message"])
            for done, h in requests:
                h.update(holder)
                done.set()

    def _query(self, msg: Image, holder: dict):
        from match_ros.ros.relocalization import publish_result

        if self.map is None:
            holder["message"] = "no map loaded"
        elif self._K is None:
            holder["message"] = "no camera_info received"
        if holder["message"]:
            self.report_status(msg.header, DiagnosticStatus.ERROR, holder["message"], {})
            return
        image = conv.image_to_numpy(msg)
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        camera_frame = msg.header.frame_id
        base = self.base_frame or camera_frame
        T_base_cam = np.eye(4) if base == camera_frame else self.lookup_tf(base, camera_frame, stamp_ns)
        prior = None if self._prior is None or T_base_cam is None else self._prior @ T_base_cam
        with self._lock:
            result = self.localizer.localize(image, self._K, prior)
        self.counts["queries"] += 1
        publish_result(self, msg.header, result, T_base_cam, holder)

    # ------------------------------------------------------------ outputs
    def lookup_tf(self, target: str, source: str, stamp_ns: int):
        """T_target_source at the image stamp, or None (logged) when TF does not have it."""
        try:
            return self.tf_listener.lookup(target, source, stamp_ns, timeout_s=self.tf_timeout_s)
        except TfLookupError as e:
            self._error(f"TF {target} <- {source}: {e}")
            return None

    def report_status(self, header: Header, level: int, message: str, values: dict):
        self._last_status = message
        st = DiagnosticStatus(name=f"{self.get_name()}: query", level=level, message=message,
                              values=[KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                                      for k, v in values.items()])
        self.pub_status.publish(DiagnosticArray(header=header, status=[st]))
        if level != DiagnosticStatus.OK:
            self.get_logger().warn(message, throttle_duration_sec=2.0)

    def _error(self, text: str):
        self.counts["errors"] += 1
        self.get_logger().error(text, throttle_duration_sec=2.0)

    def _publish_diagnostics(self):
        st = DiagnosticStatus(name=f"{self.get_name()}: relocalization", hardware_id=self.matcher.name)
        if self.map is None:
            st.level, st.message = DiagnosticStatus.ERROR, "no map loaded"
        else:
            st.level, st.message = DiagnosticStatus.OK, self._last_status
        counts = {**self.counts, "keyframes": len(self.map) if self.map is not None else 0,
                  "received": self.slot.received, "dropped": self.slot.dropped}
        st.values = [KeyValue(key=k, value=str(v)) for k, v in counts.items()]
        publish_diagnostics(self, self.pub_diag, st)

    def destroy_node(self):
        stop_worker(self.slot, self._worker, 10.0)
        return super().destroy_node()


def main(args=None):
    run_node(RelocalizerNode, threads=3, args=args)


if __name__ == "__main__":
    main()
