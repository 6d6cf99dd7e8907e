"""visual_odometry node: metric RGB-D visual odometry on TF (REP 105 odom -> base_frame).

Subscribes:  image (or image/compressed), camera_info, depth (aligned with the image: 32FC1 m / 16UC1 mm),
             /tf, /tf_static (base_frame -> camera frame, looked up once at the first frame)
Publishes:   ~/odom (nav_msgs/Odometry: pose of base_frame in odom_frame with covariance, twist in base_frame),
             /tf odom_frame -> base_frame, /diagnostics (1 Hz)

odom starts at the robot's base at the first frame (REP 105: continuous, drifts, never jumps). When base_frame is
empty or has no TF to the camera, the camera frame is the child instead (one warning) and odom's axes are x forward,
y left, z up at the first camera position. Without depth there is no metric odometry: use keyframe_matcher for
scale-free relative poses. Every output carries the input image's stamp (use_sim_time follows /clock).
Managed with lifecycle: true (``ros.managed``): the odometry keeps its pose across deactivate / activate.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from nav_msgs.msg import Odometry

from match_ros.core.config import Param, make_conf
from match_ros.core.geometry.absolute_pose import covariance_of_attached_frame
from match_ros.core.geometry.transforms import invert
from match_ros.core.geometry.two_view import pose_spec
from match_ros.core.tracking.frontend import Frame
from match_ros.core.tracking.keyframes import keyframe_spec
from match_ros.core.tracking.odometry import R_BODY_OPTICAL, VisualOdometry, odometry_spec, twist_between
from match_ros.ros import conversions as conv
from match_ros.ros.camera_input import CameraInput, camera_input_spec, input_problem, input_values
from match_ros.ros.diagnostics import Diagnostics, ErrorLog, RateMeter
from match_ros.ros.managed import ManagedNode, managed_spec
from match_ros.ros.matcher_params import matcher_spec, warm_matcher
from match_ros.ros.params import ParameterUpdates, declare
from match_ros.ros.runtime import run_node
from match_ros.ros.tf import TfBroadcaster
from match_ros.ros.tf_buffer import TfListener, TfLookupError
from match_ros.ros.worker import Worker

NODE_NAME = "visual_odometry"
node_spec = {
    **matcher_spec(cpu_bf16="false", depth_confidence=0.95),  # early exit: docs/odometry.md
    "odom_frame": Param("odom", "Odometry frame (REP 105)", read_only=True),
    "base_frame": Param("base_link", "Robot frame whose pose is published; empty or without TF to the camera: the "
                        "camera frame", read_only=True),
    "publish_tf": Param(True, "Broadcast odom_frame -> base_frame"),
    "tf_timeout_s": Param(0.5, "How long the first frame waits for base_frame -> camera on TF", "s", 0.0, 10.0),
}


def parameter_groups() -> dict:
    return {"": {**node_spec, **camera_input_spec, **managed_spec}, "keyframe": keyframe_spec, "geometry": pose_spec,
            "odometry": odometry_spec}


class VisualOdometryNode(ManagedNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.groups = parameter_groups()
        self._read_parameters()
        self.start()

    def _read_parameters(self) -> tuple:
        """(node settings, {group: settings}): declared at start, read again at configure."""
        return declare(self, self.groups[""]), {g: declare(self, self.groups[g], g)
                                                for g in ("keyframe", "geometry", "odometry")}

    def configure(self):
        """The matcher (built and warmed up in the worker thread), the odometry, publishers. The odometry keeps
        its pose across deactivate / activate (REP 105: odom is continuous); cleanup forgets it."""
        p, confs = self._read_parameters()
        self.p = p
        self.errors = ErrorLog(self)
        self.worker = Worker(self._process, self.errors, "visual_odometry_worker")
        self.matcher, _ = self.worker.call(warm_matcher, p)  # all inference in the worker thread
        self.vo = VisualOdometry(self.matcher, confs["odometry"], confs["keyframe"], confs["geometry"])
        self.processed = self.lost = 0
        self.status_text = "waiting for images"
        self.child_frame = None  # decided at the first frame
        self.T_base_cam = np.eye(4)
        self.last = None  # (stamp_ns, T_odom_child)
        self.rate = RateMeter()
        self.stage_ms: dict = {}
        self.pub_odom = self.create_publisher(Odometry, "~/odom", 10)
        self.tf = TfBroadcaster(self)
        self.param_updates = ParameterUpdates(self, self.groups, self._apply_parameters)
        self.get_logger().info(f"precision {self.matcher.precision}")
        self.get_logger().info(f"matcher={p['matcher']} device={self.matcher.device} odom_frame={p['odom_frame']} "
                               f"base_frame={p['base_frame'] or '(camera)'} image_qos={p['image_qos']}")

    def activate(self):
        """TF listener, camera subscriptions and diagnostics."""
        self.tf_listener = TfListener(self)
        self.input = CameraInput(self, self.p, self.worker.put, self.errors, use_depth=True)
        self.diagnostics = Diagnostics(self, "visual odometry", self.p["matcher"], self._diagnostic_status)

    def _start(self, camera: str, stamp: int) -> None:
        """First frame: odom = the base at this instant (or the camera, in body axes, without base TF)."""
        base = self.p["base_frame"]
        T = None
        if base and base != camera:
            try:
                T = self.tf_listener.lookup(base, camera, stamp, timeout_s=self.p["tf_timeout_s"])
            except (TfLookupError, ValueError):
                T = None
            if T is None:
                self.get_logger().warning(
                    f"no TF from base_frame '{base}' to the camera frame '{camera}': publishing {self.p['odom_frame']}"
                    f" -> {camera} instead (publish the camera's transform, or set base_frame to '')")
        if T is None:
            self.child_frame, self.T_base_cam = camera, np.eye(4)
            initial = np.eye(4)
            initial[:3, :3] = R_BODY_OPTICAL
        else:
            self.child_frame, self.T_base_cam = base, T
            initial = T
        self.vo.reset(initial)

    def _process(self, item):
        frame = self.input.frame(item)
        if frame is None:
            return
        if frame.depth is None or frame.K is None:  # (the camera input has said why)
            return
        header = frame.header
        stamp = conv.stamp_to_ns(header.stamp)
        if self.last is not None and stamp < self.last[0]:  # a bag played again, /clock reset
            self.get_logger().warning(f"image stamp jumped back {(self.last[0] - stamp) * 1e-9:.3f} s: the odometry "
                                      "goes on from its pose (REP 105: odom never jumps), its velocity starts anew")
            self.last = None
        if self.child_frame is None:
            self._start(header.frame_id, stamp)
        t0 = time.monotonic()
        r = self.vo.process(Frame(frame.image, stamp, header.frame_id, frame.K, frame.depth, frame.distortion))
        t1 = time.monotonic()
        if r.lost and not self.status_text.startswith("lost"):  # say when tracking is lost and when it is back
            self.get_logger().warning(f"odometry {r.status} at {stamp * 1e-9:.3f} s")
        elif not r.lost and self.status_text.startswith("lost"):  # (one severity per rclpy logging call site)
            self.get_logger().info(f"odometry {r.status} again at {stamp * 1e-9:.3f} s")
        self.status_text = r.status
        self.lost += int(r.lost)
        if r.depth_refused:
            self.errors("depth", r.depth_refused)
        T_odom_base = r.T_odom_cam @ invert(self.T_base_cam)
        cov = covariance_of_attached_frame(r.covariance, r.T_odom_cam, T_odom_base)
        msg = Odometry()
        msg.header.stamp, msg.header.frame_id = header.stamp, self.p["odom_frame"]
        msg.child_frame_id = self.child_frame
        msg.pose.pose = conv.matrix_to_pose(T_odom_base)
        msg.pose.covariance = [float(x) for x in cov.ravel()]
        if self.last is not None and stamp > self.last[0]:
            dt = (stamp - self.last[0]) * 1e-9
            v, w = twist_between(self.last[1], T_odom_base, dt)
            msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = (float(x) for x in v)
            msg.twist.twist.angular.x, msg.twist.twist.angular.y, msg.twist.twist.angular.z = (float(x) for x in w)
            # two poses' uncertainty relative to their keyframe over dt (first order, diagonal)
            rel = r.track.pose.covariance if r.track.pose.valid else np.eye(6)
            msg.twist.covariance = [float(x) for x in np.diag(np.diag(2.0 * rel) / dt ** 2).ravel()]
        self.last = (stamp, T_odom_base)
        self.pub_odom.publish(msg)
        # while lost the held pose is no measurement: on /odom its covariance says so, but a transform has none, and
        # map -> camera through a held odom was 0.4-0.95 m off under `ros2 launch` at 1x on a busy machine
        if self.p["publish_tf"] and not r.lost:
            out = msg.header
            self.tf.send([conv.matrix_to_transform(T_odom_base, out, self.child_frame)])
        now = time.monotonic()
        self.stage_ms = {**r.timings_ms, "queue": 1e3 * (t0 - frame.received), "publish": 1e3 * (now - t1)}
        self.processed += 1
        self.rate.add(1e3 * (now - frame.received))

    def _diagnostic_status(self):
        values = {"processed": self.processed, "lost_frames": self.lost, "distance_m": round(self.vo.distance_m, 3),
                  **input_values(self.input, self.worker, self.errors), **self.rate.values(),
                  **{f"{k}_ms": float(v) for k, v in self.stage_ms.items()}}
        if self.input.K is None and self.input.received:
            return DiagnosticStatus.WARN, "no camera_info: no odometry", values
        if self.status_text.startswith("lost"):
            return DiagnosticStatus.WARN, self.status_text, values
        problem = input_problem(self.input, self.errors)
        if problem:
            return DiagnosticStatus.WARN, problem, values
        return DiagnosticStatus.OK, self.status_text, values

    def _apply_parameters(self, changes: dict) -> str:
        self.p.update(changes.get("", {}))
        if self.active:
            self.input.conf.update({k: v for k, v in changes.get("", {}).items() if k in camera_input_spec})
        self.vo.tracker.update_conf(changes.get("keyframe"), changes.get("geometry"))
        if "odometry" in changes:
            self.vo.conf = make_conf(odometry_spec, {**self.vo.conf, **changes["odometry"]}, "visual odometry")
        return ""

    def cleanup(self) -> int:
        """The frame in progress finishes; the worker, the matcher and the odometry are released."""
        self.param_updates.remove()
        self.worker.stop(5.0)
        self.worker = self.matcher = self.vo = None
        return 0


def main(args=None):
    run_node(VisualOdometryNode, args=args)


if __name__ == "__main__":
    main()
