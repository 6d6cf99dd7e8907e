"""keyframe_matcher node: match each camera frame against the current keyframe.

Subscribes:  image (or image/compressed), camera_info, depth (with use_depth: aligned 32FC1 m / 16UC1 mm)
Publishes:   ~/correspondences (match_ros/CorrespondenceSet), ~/relative_pose (geometry_msgs/
             PoseWithCovarianceStamped in keyframe_frame: full and rotation-only poses, the latter with the
             translation's variance 1e6), /tf keyframe_frame -> tracked_frame (full poses only), /diagnostics
             (1 Hz), ~/debug_image (keyframe | frame with the matches, inliers green; drawn only while subscribed)
Managed with lifecycle: true (``ros.managed``). A stamp that jumps back (a bag played again) starts a new keyframe.
Inference runs in a worker thread fed by a one-slot drop-oldest queue: the executor never waits for the matcher;
frames that arrive while it is busy are dropped and counted, never queued.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseWithCovariance, PoseWithCovarianceStamped
from std_msgs.msg import Header

from match_ros.core.config import Param
from match_ros.core.geometry.two_view import pose_spec
from match_ros.core.tracking.frontend import Frame, KeyframeTracker
from match_ros.core.tracking.keyframes import KeyframeSelector, keyframe_spec
from match_ros.msg import CorrespondenceSet
from match_ros.ros import conversions as conv
from match_ros.ros.camera_input import CameraInput, camera_input_spec, input_problem, input_values
from match_ros.ros.diagnostics import Diagnostics, ErrorLog, RateMeter
from match_ros.ros.managed import ManagedNode, managed_spec
from match_ros.ros.matcher_params import matcher_spec, warm_matcher
from match_ros.ros.params import ParameterUpdates, declare
from match_ros.ros.runtime import run_node
from match_ros.ros.tf import TfBroadcaster
from match_ros.ros.visuals import DebugImage, draw_matches
from match_ros.ros.worker import Worker

NODE_NAME = "keyframe_matcher"
node_spec = {
    # every layer of LightGlue: its early exit made two-view directions less accurate (median 2.4 -> 3.3 deg, one
    # pair 17 deg off at sigma ~4 deg; docs/speed.md); visual_odometry, with depth, keeps it
    **matcher_spec(),
    "use_depth": Param(False, "Subscribe to 'depth' (aligned with the image) for metric relative poses",
                       read_only=True),
    "publish_tf": Param(True, "Broadcast keyframe_frame -> tracked_frame"),
    "keyframe_frame": Param("match_ros_keyframe", "TF frame of the current keyframe's camera (optical)"),
    "tracked_frame": Param("match_ros_camera", "TF frame of the current camera (optical), child of keyframe_frame"),
}


def parameter_groups() -> dict:
    return {"": {**node_spec, **camera_input_spec, **managed_spec}, "keyframe": keyframe_spec, "geometry": pose_spec}


class KeyframeMatcherNode(ManagedNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.groups = parameter_groups()
        self._read_parameters()
        self.start()

    def _read_parameters(self) -> tuple:
        """(node settings, keyframe, geometry): declared at start, read again at configure."""
        return (declare(self, self.groups[""]), declare(self, keyframe_spec, "keyframe"),
                declare(self, pose_spec, "geometry"))

    def configure(self):
        """The matcher (built and warmed up in the worker thread), the tracker, publishers."""
        p, kf_conf, pose_conf = self._read_parameters()
        self.p = p
        self.errors = ErrorLog(self)
        self.worker = Worker(self._process, self.errors, "keyframe_matcher_worker")
        self.matcher, _ = self.worker.call(warm_matcher, p)  # all inference in the worker thread
        self.tracker = KeyframeTracker(self.matcher, KeyframeSelector(kf_conf), pose_conf)
        self.processed = self.keyframes = self.rotation_only = self.no_pose = self.time_resets = 0
        self._last_stamp = None  # of the last frame processed [ns]
        self.rate = RateMeter()
        self.stage_ms: dict = {}
        self.pub_corr = self.create_publisher(CorrespondenceSet, "~/correspondences", 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/relative_pose", 10)
        self.tf = TfBroadcaster(self)
        self.debug, self._keyframe_image = DebugImage(self), (None, None)  # (keyframe id, its image)
        self.param_updates = ParameterUpdates(self, self.groups, self._apply_parameters)
        self.get_logger().info(f"precision {self.matcher.precision}")
        self.get_logger().info(f"matcher={p['matcher']} device={self.matcher.device} "
                               f"max_keypoints={p['max_keypoints']}"
                               f" image_qos={p['image_qos']} image_transport={p['image_transport']}")

    def activate(self):
        """Camera subscriptions and diagnostics; the keyframe starts anew."""
        self.tracker.reset()
        self._last_stamp = None
        self.input = CameraInput(self, self.p, self.worker.put, self.errors, use_depth=self.p["use_depth"])
        self.diagnostics = Diagnostics(self, "keyframe matching", self.p["matcher"], self._diagnostic_status)

    def _process(self, item):
        frame = self.input.frame(item)
        if frame is None:
            return
        stamp = conv.stamp_to_ns(frame.header.stamp)
        if self._last_stamp is not None and stamp < self._last_stamp:  # a bag restarted, /clock jumped back
            self.get_logger().warning(f"image stamp jumped back {(self._last_stamp - stamp) * 1e-9:.3f} s: keyframe "
                                      "reset, this frame starts a new one")
            self.tracker.reset()
            self.time_resets += 1
        self._last_stamp = stamp
        t0 = time.monotonic()
        result = self.tracker.process(Frame(frame.image, conv.stamp_to_ns(frame.header.stamp), frame.header.frame_id,
                                            frame.K, frame.depth, frame.distortion))
        t1 = time.monotonic()
        header = frame.header
        self.pub_corr.publish(conv.correspondence_set(result, header, self.p["matcher"]))
        pose = result.pose
        if pose.valid:
            out = Header(stamp=header.stamp, frame_id=self.p["keyframe_frame"])
            self.pub_pose.publish(PoseWithCovarianceStamped(header=out, pose=PoseWithCovariance(
                pose=conv.matrix_to_pose(pose.T_ref_query), covariance=[float(x) for x in pose.covariance.ravel()])))
            if self.p["publish_tf"] and pose.translation_valid:
                self.tf.send([conv.matrix_to_transform(pose.T_ref_query, out, self.p["tracked_frame"])])
        self._draw(frame, result)
        self.rotation_only += int(pose.valid and not pose.translation_valid)
        self.no_pose += int(not pose.valid and len(result.matches) > 0)
        now = time.monotonic()
        self.stage_ms = {**result.timings_ms, "queue": 1e3 * (t0 - frame.received), "publish": 1e3 * (now - t1)}
        self.processed += 1
        self.keyframes += int(result.is_keyframe)
        self.rate.add(1e3 * (now - frame.received))

    def _draw(self, frame, result) -> None:
        """~/debug_image (only while someone subscribes): the keyframe and this frame, inliers green."""
        kf_id, kf_image = self._keyframe_image
        if self.debug.wanted() and kf_id == result.keyframe.id and len(result.matches):
            pose = result.pose
            verdict = ("full pose" if pose.translation_valid else "rotation only") if pose.valid else "no pose"
            text = (f"keyframe {kf_id}: {len(result.matches)} matches, {pose.num_inliers} inliers, {verdict}"
                    + (f"\n{pose.reason[:90]}" if pose.reason else ""))
            self.debug.publish(draw_matches(kf_image, frame.image, result.pts_ref, result.pts_query, pose.inliers,
                                            text), frame.header)
        if result.is_keyframe or kf_id is None:
            self._keyframe_image = (self.tracker.keyframe.id, frame.image)

    def _diagnostic_status(self):
        values = {"processed": self.processed, "keyframes": self.keyframes,
                  "rotation_only_poses": self.rotation_only, "no_pose": self.no_pose, "time_resets": self.time_resets,
                  "precision": self.matcher.precision,
                  **input_values(self.input, self.worker, self.errors), **self.rate.values(),
                  **{f"{k}_ms": float(v) for k, v in self.stage_ms.items()}}
        if self.input.K is None and self.input.received:
            return DiagnosticStatus.WARN, "no camera_info: matches without poses", values
        problem = input_problem(self.input, self.errors)
        if problem:
            return DiagnosticStatus.WARN, problem, values
        return DiagnosticStatus.OK, "tracking" if self.processed else "waiting for images", values

    def _apply_parameters(self, changes: dict) -> str:
        self.p.update(changes.get("", {}))
        if self.active:
            self.input.conf.update({k: v for k, v in changes.get("", {}).items() if k in camera_input_spec})
        self.tracker.update_conf(changes.get("keyframe"), changes.get("geometry"))
        return ""

    def cleanup(self) -> int:
        """The frame in progress finishes; the worker, the matcher and the tracker are released."""
        self.param_updates.remove()
        self.worker.stop(5.0)
        self.worker = self.matcher = self.tracker = None
        return 0


def main(args=None):
    run_node(KeyframeMatcherNode, args=args)


if __name__ == "__main__":
    main()
