"""map_builder node: build a relocalization map live from posed camera images.

Subscribes:  image (or image/compressed), camera_info, depth (with use_depth), and the camera pose in map_frame
             from /tf (pose_source: tf) or a PoseStamped topic of the camera optical frame (its name)
Publishes:   /diagnostics (1 Hz: frames, keyframes, 3D points, saves)
Services:    ~/save_map (match_ros/SaveMap): atomic save with the visual vocabulary
The map is saved at shutdown (Ctrl-C, SIGTERM; a second SIGINT does not interrupt the save) and every
autosave_period_s, so neither a crash nor a kill loses more than that. A failed save (full disk, no permission)
is reported and the map stays in memory for the next try; a failed save at shutdown says where the map could not
go and the process exits with status 1. A file this node did not write in this run (the map of an earlier run at
the same map_path) is never replaced unless overwrite_map is true. Relative paths resolve in map_directory.
Managed with lifecycle: true (``ros.managed``): cleanup saves the map as a shutdown does.
"""
from __future__ import annotations

import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from match_ros.core.config import Param, make_conf
from match_ros.core.relocalization.global_desc import GlobalDescriptor
from match_ros.core.relocalization.mapfile import check_save_path
from match_ros.core.relocalization.mapping import MapBuilder, mapping_spec
from match_ros.core.relocalization.mapstore import MapError
from match_ros.ros import conversions as conv
from match_ros.ros.camera_input import CameraInput, camera_input_spec, input_problem, input_values
from match_ros.ros.diagnostics import Diagnostics, ErrorLog, log_outcome, steady_clock
from match_ros.ros.managed import ManagedNode, managed_spec
from match_ros.ros.matcher_params import matcher_spec, warm_matcher
from match_ros.ros.params import ParameterUpdates, declare
from match_ros.ros.runtime import run_node
from match_ros.ros.services import MapFolder, map_folder_spec
from match_ros.ros.tf_buffer import TfBuffer, TfListener, TfLookupError, wait_for
from match_ros.ros.worker import Worker
from match_ros.srv import SaveMap

NODE_NAME = "map_builder"
POSE_TOPIC_FRAME = "pose_source"  # child frame under which poses from the pose topic are kept
node_spec = {
    "map_path": Param("", "Where ~/save_map, autosaves and the shutdown save write the map (relative: in "
                      "map_directory)"),
    **map_folder_spec,
    **matcher_spec("Local features of the map (the relocalizer must use the same)", "Keypoints per keyframe",
                   cpu_bf16="false"),
    "use_depth": Param(False, "Use aligned depth (32FC1 m / 16UC1 mm) for 3D points; otherwise triangulate",
                       read_only=True),
    "pose_source": Param("tf", "'tf' (look up map_frame <- image frame) or the name of a PoseStamped topic with the "
                         "camera optical frame's pose", read_only=True),
    "map_frame": Param("map", "Frame of the camera poses and of the map"),
    "tf_timeout_s": Param(0.2, "Wait for the camera pose at the image stamp (transform, or poses on pose_source "
                          "around it: interpolated between the two either side)", "s", 0.0, 5.0),
    "save_on_shutdown": Param(True, "Save the map to map_path at shutdown"),
    "autosave_period_s": Param(60.0, "Save the map to map_path this often while mapping (0: never)", "s", 0.0,
                               86400.0),
    "overwrite_map": Param(False, "Let saves replace a file this node did not write in this run (e.g. the map of an "
                           "earlier run at map_path); false: such a save fails and the file is kept"),
}


def parameter_groups() -> dict:
    return {"": {**node_spec, **camera_input_spec, **managed_spec}, "mapping": mapping_spec}


class MapBuilderNode(ManagedNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.groups = parameter_groups()
        self._read_parameters()
        self.start()

    def _read_parameters(self) -> tuple:
        """(node settings, mapping settings): declared at start, read again at configure."""
        return declare(self, self.groups[""]), declare(self, mapping_spec, "mapping")

    def configure(self):
        """The matcher and an empty map (built in the worker thread), ~/save_map, autosaves."""
        p, conf = self._read_parameters()
        self.p = p
        self.errors = ErrorLog(self)
        self.worker = Worker(self._process, self.errors, "map_builder_worker")
        self.builder = self.worker.call(self._make_builder, p, conf)  # all inference in the worker thread
        self._lock = threading.Lock()  # the builder: worker vs saves
        self.saves = {"saved": 0, "failed": 0, "last": ""}
        self._saved_keyframes, self._last_save = 0, time.monotonic()
        self._written: set = set()  # absolute paths this node saved a map to (it may replace those)
        self.failure = ""  # why the last failed save failed
        self.maps = MapFolder(p)
        self.create_service(SaveMap, "~/save_map", self._srv_save, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(5.0, self._autosave, callback_group=MutuallyExclusiveCallbackGroup(), clock=steady_clock())
        self.param_updates = ParameterUpdates(self, self.groups, self._apply_parameters)
        if p["map_path"] and self.maps.resolve(p["map_path"]).exists() and not p["overwrite_map"]:
            self.get_logger().warning(f"map_path {p['map_path']} exists: this node will not replace it (parameter "
                                      "overwrite_map is false), so its saves there will fail")

    def activate(self):
        """Pose source (TF or the pose topic), camera subscriptions, diagnostics."""
        p = self.p
        self.tf = TfListener(self) if p["pose_source"] == "tf" else None
        self._poses = TfBuffer(cache_time_s=10.0) if self.tf is None else None  # poses on pose_source
        if self.tf is None:
            self.create_subscription(PoseStamped, p["pose_source"], self._on_pose, 50,
                                     callback_group=MutuallyExclusiveCallbackGroup())
        self.input = CameraInput(self, p, self.worker.put, self.errors, use_depth=p["use_depth"])
        self.diagnostics = Diagnostics(self, "mapping", p["matcher"], self._diagnostic_status)

    def _on_pose(self, msg) -> None:
        try:
            self._poses.set_transform(self.p["map_frame"], POSE_TOPIC_FRAME, conv.stamp_to_ns(msg.header.stamp),
                                      conv.pose_to_matrix(msg.pose))
        except ValueError as e:
            self.errors("pose", f"pose on {self.p['pose_source']} ignored: {e}")

    def _pose_at(self, header):
        """The camera's pose at the image stamp, waited for up to tf_timeout_s (as poses arrive after images)."""
        stamp = conv.stamp_to_ns(header.stamp)
        try:
            if self.tf is not None:
                return self.tf.lookup(self.p["map_frame"], header.frame_id, stamp, timeout_s=self.p["tf_timeout_s"])
            return wait_for(lambda: self._poses.lookup(self.p["map_frame"], POSE_TOPIC_FRAME, stamp),
                            self.p["tf_timeout_s"])
        except (TfLookupError, ValueError) as e:
            source = "" if self.tf is not None else f" on {self.p['pose_source']}"
            self.errors("pose", f"no pose{source} for the image: {e}")
            return None

    @staticmethod
    def _make_builder(p: dict, conf: dict) -> MapBuilder:
        matcher, _ = warm_matcher(p)
        return MapBuilder(matcher, GlobalDescriptor(device=matcher.device), conf)

    def _process(self, item):
        frame = self.input.frame(item)
        if frame is None:
            return
        if frame.K is None:
            self.errors("camera_info", "no usable camera_info yet: frame skipped")
            return
        T = self._pose_at(frame.header)
        if T is None:
            return
        with self._lock:
            try:
                added = self.builder.add_frame(frame.image, T, frame.K, conv.stamp_to_ns(frame.header.stamp),
                                               frame.depth, frame.header.frame_id, frame.distortion)
            except ValueError as e:
                self.errors("frame", str(e))
                return
        if added:
            self.get_logger().info(f"keyframe {self.builder.stats['keyframes'] - 1} added", throttle_duration_sec=1.0)

    def save(self, path: str, with_vocabulary: bool = True) -> tuple[bool, str]:
        """Save the map; (ok, message). The map stays in memory whatever happens."""
        if not path:
            return False, "no path given and map_path is empty"
        with self._lock:
            if self.builder.map is None:
                return False, "the map is empty: no keyframe yet"
            target = self.maps.resolve(path).absolute()
            if target.exists() and target not in self._written and not self.p["overwrite_map"]:
                return self._failed(f"{target} exists and was not written by this node in this run; it is kept (set "
                                    "parameter overwrite_map to true to replace it, or save elsewhere)")
            try:
                target = check_save_path(self.maps.for_save(path))
                self.builder.build().save(target, with_vocabulary=with_vocabulary)
            except (MapError, OSError) as e:
                return self._failed(f"previous file untouched: {e}")
            n = len(self.builder.map)
            self._written.add(target)
        self.saves["saved"] += 1
        self._saved_keyframes, self._last_save = n, time.monotonic()
        self.saves["last"] = f"saved {n} keyframes to {target}"
        return True, self.saves["last"]

    def _failed(self, reason: str) -> tuple[bool, str]:
        self.saves["failed"] += 1
        self.failure = reason
        self.saves["last"] = f"save failed, map kept in memory: {reason}"
        return False, self.saves["last"]

    def _srv_save(self, req, res):
        res.success, res.message = self.save(req.path or self.p["map_path"])
        log_outcome(self, res.success, res.message)
        return res

    def _autosave(self):
        period = self.p["autosave_period_s"]
        n = self.builder.stats["keyframes"]
        if period > 0 and self.p["map_path"] and n > self._saved_keyframes \
                and time.monotonic() - self._last_save >= period:
            ok, text = self.save(self.p["map_path"], with_vocabulary=False)
            log_outcome(self, ok, f"autosave: {text}")

    def _diagnostic_status(self):
        values = {**self.builder.stats, **input_values(self.input, self.worker, self.errors),
                  "saves": self.saves["saved"], "failed_saves": self.saves["failed"], "last_save": self.saves["last"]}
        if self.saves["failed"] and self.saves["last"].startswith("save failed"):
            return DiagnosticStatus.ERROR, self.saves["last"], values
        problem = input_problem(self.input, self.errors)
        if problem:
            return DiagnosticStatus.WARN, problem, values
        return DiagnosticStatus.OK, f"{self.builder.stats['keyframes']} keyframes", values

    def _apply_parameters(self, changes: dict) -> str:
        self.p.update(changes.get("", {}))
        if self.active:
            self.input.conf.update({k: v for k, v in changes.get("", {}).items() if k in camera_input_spec})
        if "mapping" in changes:
            with self._lock:
                self.builder.conf = make_conf(mapping_spec, {**self.builder.conf, **changes["mapping"]}, "MapBuilder")
        return ""

    def cleanup(self) -> int:
        """Finish the current frame, then save (save_on_shutdown): Ctrl-C (or a lifecycle cleanup) never loses the
        map silently. Returns the process's exit status: 1 when the final save failed (the message says where the
        map could not go)."""
        self.param_updates.remove()
        self.worker.stop(30.0)
        if self.p["save_on_shutdown"] and self.p["map_path"] and self.builder.map is not None:
            ok, text = self.save(self.p["map_path"], with_vocabulary=False)
            # printed: the ROS logger may already be shut down here
            if not ok:
                print(f"map_builder: the map ({len(self.builder.map)} keyframes) could not be saved to "
                      f"{self.p['map_path']} and is lost with this process: {self.failure}", file=sys.stderr,
                      flush=True)
                return 1
            print(text, flush=True)
        return 0


def main(args=None):
    run_node(MapBuilderNode, threads=3, args=args)


if __name__ == "__main__":
    main()
