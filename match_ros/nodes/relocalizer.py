"""relocalizer node: visual relocalization against a keyframe map (REP 105).

Subscribes:  image (or image/compressed), camera_info, initialpose (a prior in map_frame), /tf, /tf_static,
             odometry (nav_msgs/Odometry behind odom_frame, optional: where its covariance jumps, it broke;
             its covariance's growth since a fix widens the prediction where it exceeds the drift model)
Publishes:   ~/pose (PoseWithCovarianceStamped of base_frame in map_frame), ~/correspondences (the keyframe with
             the most inliers), ~/status (DiagnosticArray per query, stamped with the image: mode, inliers,
             timings, or why no pose), /tf map -> odom (map -> base_frame when odom_frame is empty), /diagnostics,
             ~/debug_image (the query's matches, only while subscribed), ~/map_keyframes (PoseArray) and
             ~/map_points (PointCloud2), both latched, in map_frame
Services:    ~/relocalize (a global query on the next image; each call waits on its own, answered within its
             timeout, and "shutting down" on Ctrl-C), ~/save_map, ~/load_map (paths relative to map_directory)
Managed with lifecycle: true (``ros.managed``): configure loads the matcher and the map, activate subscribes.
Continuous localization (``core.relocalization.continuous``): after a fix, the map -> odom estimate moved by the
odometry on /tf (odom_frame -> camera at the image stamp; the frame is held up to odom_wait_s for it, as tf2's
message filters do) is the prior, and the frame is tracked against the map around it; without odometry at the
stamp the last fix is the prior for max_fix_age_s (0 by default: never), and a pose tracked from it must be
confirmed by the retrieval; otherwise, and when tracking fails, the query searches the whole map. The status
says which prior was used.
Frames are processed as fast as they come (rate_hz 0, newest first); the status says "lost" after lost_after
failures in a row. A camera_info whose calibration differs from the map's is refused (the query says why).
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from match_ros.core.config import Param, make_conf
from match_ros.core.geometry.absolute_pose import covariance_of_attached_frame, pnp_spec
from match_ros.core.geometry.transforms import invert
from match_ros.core.relocalization.continuous import ContinuousLocalizer, continuous_spec
from match_ros.core.relocalization.localizer import Localizer, integrity_warning, localizer_spec
from match_ros.core.relocalization.mapfile import check_save_path
from match_ros.core.relocalization.mapstore import Map, MapError, matcher_identity
from match_ros.msg import CorrespondenceSet
from match_ros.ros import conversions as conv
from match_ros.ros.camera_input import CameraInput, camera_input_spec, input_problem, input_values
from match_ros.ros.diagnostics import Diagnostics, ErrorLog, RateMeter, log_outcome
from match_ros.ros.managed import ManagedNode, managed_spec
from match_ros.ros.matcher_params import matcher_spec, warm_matcher
from match_ros.ros.params import ParameterUpdates, declare
from match_ros.ros.runtime import run_node
from match_ros.ros.services import Answer, MapFolder, PendingCalls, map_folder_spec
from match_ros.ros.tf import TfBroadcaster
from match_ros.ros.tf_buffer import TfListener, TfLookupError
from match_ros.ros.visuals import DebugImage, draw_keypoints, latched_qos, map_messages
from match_ros.ros.worker import Worker
from match_ros.srv import LoadMap, Relocalize, SaveMap

NODE_NAME = "relocalizer"
MAX_SERVICE_TIMEOUT_S = 10.0
MAX_WAITING_CALLS = 12  # ~/relocalize calls waiting at once (each waits in an executor thread of its own)
ODOM_REPORTS_KEPT = 256  # odometry messages whose covariance is kept (8 s of a 30 Hz odometry)
ODOM_REPORT_SLACK_S = 0.5  # an odometry message farther than this from an image stamp does not stand for it
node_spec = {
    "map_path": Param("", "Map file loaded at start and by parameter changes (relative: in map_directory; empty: "
                      "start without a map); follows ~/load_map"),
    **map_folder_spec,
    **matcher_spec("Matching backend; the map must have been built with it",
                   "Keypoints per query image; must equal the map's", cpu_bf16="false"),
    "mode": Param("continuous", "continuous: localize the camera stream; on_request: only on ~/relocalize",
                  choices=("continuous", "on_request")),
    "rate_hz": Param(0.0, "Queries per second at most in continuous mode (0: as fast as they are processed)", "Hz",
                     0.0, 1000.0),
    "use_odometry": Param(True, "Track from the last fix moved by odom_frame -> camera on /tf at the image stamp "
                          "(else only from a young last fix, confirmed by retrieval)"),
    **continuous_spec,
    "map_frame": Param("map", "Map frame (REP 105)"),
    "odom_frame": Param("odom", "Odometry frame; empty: publish map -> base_frame instead of map -> odom"),
    "base_frame": Param("base_link", "Robot frame whose pose is published; empty or without TF to the camera: "
                        "the camera's own frame"),
    "publish_tf": Param(True, "Broadcast map -> odom (or map -> base_frame)"),
    # as slam_toolbox (transform_publish_period) and nav2's AMCL (transform_tolerance) do: sent only at fixes, a
    # tf2 lookup at an image stamp between two fixes extrapolated and failed (16 of 86 succeeded in a distro run)
    "map_odom_period_s": Param(0.05, "Re-broadcast the latest map -> odom this often, so lookups between fixes "
                               "succeed (0: only at fixes)", "s", 0.0, 10.0),
    "transform_tolerance_s": Param(0.1, "... stamped this far ahead of the clock, so the latest transform is valid "
                                   "until the next one, but never at or after the stamp of a frame that may still "
                                   "give a fix (the one being localized, the newest received)", "s", 0.0, 10.0),
    "map_odom_wait_s": Param(2.0, "A fix whose odometry was not there yet sets map -> odom when odom -> camera at "
                             "its stamp arrives within this time", "s", 0.0, 30.0),
    "tf_timeout_s": Param(0.1, "Wait for the base -> camera transform at the image stamp", "s", 0.0, 5.0),
    "odom_break_variance": Param(0.5, "A rise of the position variance (largest of x, y, z) on the odometry topic "
                                 "by this much from one message to the next marks a break (visual_odometry adds "
                                 "lost_variance, 1 m^2, where it loses track and where it restarts from the pose it "
                                 "held): across it the odometry is no prior and the old map -> odom is not "
                                 "re-broadcast (0: not read)", "m^2", 0.0, 1e6),
    "odom_wait_s": Param(0.5, "Hold a frame this long for the odometry at its stamp once odometry has been seen "
                         "(else it is tracked from the last fix or searched globally)", "s", 0.0, 5.0),
}


def parameter_groups() -> dict:
    return {"": {**node_spec, **camera_input_spec, **managed_spec}, "localizer": localizer_spec, "pnp": pnp_spec}


class RelocalizerNode(ManagedNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.groups = parameter_groups()
        self._read_parameters()
        self.calls = PendingCalls(MAX_WAITING_CALLS)  # ~/relocalize calls waiting for the next image
        # the map -> odom on /tf: (image stamp [ns], T) of the fix that set it, and the newest fix still waiting for
        # its odometry (stamp, T_map_cam, camera frame); worker and timer share them under _tf_lock
        self._tf_lock = threading.Lock()
        self._map_odom, self._pending_fix = None, None
        # stamps a fix may still come for: the newest image received, the one in the worker
        self._newest_image_ns, self._in_flight_ns = 0, None
        # stamp of a global fix that contradicted the odometry (held back): map -> odom is not asserted past it
        # until a fix is integrated again
        self._doubt_ns = None
        # odometry breaks (the odometry topic): those not yet handed to the tracker, the recent ones, and the last
        # message's (stamp, variance); the recent messages' (stamp, pose covariance, child frame)
        self._new_breaks, self._breaks, self._odom_last = [], [], None
        self._odom_reports = deque(maxlen=ODOM_REPORTS_KEPT)
        self.start()

    def _read_parameters(self) -> tuple:
        """(node settings, localizer, pnp): declared at start, read again at configure."""
        return (declare(self, self.groups[""]), declare(self, localizer_spec, "localizer"),
                declare(self, pnp_spec, "pnp"))

    def configure(self):
        """The matcher (built and warmed up in the worker thread), the map, publishers and services. A managed
        node's configure fails when map_path is set and the map does not load; a plain node starts without it
        (diagnostics say so) and takes one from ~/load_map."""
        p, loc_conf, pnp_conf = self._read_parameters()
        self.p = p
        self.errors = ErrorLog(self)
        self.worker = Worker(self._process, self.errors, "relocalizer_worker")
        self.matcher, probe = self.worker.call(warm_matcher, p)  # all inference in the worker thread
        self._identity = matcher_identity(p["matcher"], p["max_keypoints"], probe.descriptors.shape[1],
                                          probe.descriptors.dtype)
        self.localizer = Localizer(None, self.matcher, None, loc_conf, pnp_conf)
        unmeasured = integrity_warning(p["matcher"])
        if unmeasured:
            self.get_logger().warning(unmeasured)
        self.tracker = ContinuousLocalizer(self.localizer, {k: p[k] for k in continuous_spec})
        self.map = None
        self._lock = threading.Lock()  # map, localizer, tracker, initial pose: worker vs callbacks
        self.maps = MapFolder(p)
        self.counts = {"queries": 0, "accepted": 0, "tracked": 0, "rejected": 0}
        self.last_status, self._initial_pose = "no query yet", None
        self._warned_base, self._last_query = False, 0.0
        self._map_file = None  # absolute path of the loaded map
        self.rate = RateMeter()
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10)
        self.pub_corr = self.create_publisher(CorrespondenceSet, "~/correspondences", 10)
        self.pub_status = self.create_publisher(DiagnosticArray, "~/status", 10)
        self.pub_keyframes = self.create_publisher(PoseArray, "~/map_keyframes", latched_qos())
        self.pub_points = self.create_publisher(PointCloud2, "~/map_points", latched_qos())
        self.debug = DebugImage(self)
        self.tf = TfBroadcaster(self)
        if p["map_path"]:
            ok, text = self._load(p["map_path"])
            if not ok and self.managed:
                raise RuntimeError(text)
            log_outcome(self, ok, text)
        self.create_service(Relocalize, "~/relocalize", self._srv_relocalize, callback_group=ReentrantCallbackGroup())
        for srv, name, cb in ((SaveMap, "~/save_map", self._srv_save), (LoadMap, "~/load_map", self._srv_load)):
            self.create_service(srv, name, cb, callback_group=MutuallyExclusiveCallbackGroup())
        self.param_updates = ParameterUpdates(self, self.groups, self._apply_parameters)
        self.calls.open()

    def activate(self):
        """TF listener, camera and initialpose subscriptions, diagnostics; tracking starts from a global query."""
        self.tracker.reset()
        self._clear_map_odom()
        self.tf_listener = TfListener(self)
        self.input = CameraInput(self, self.p, self._on_frame, self.errors)
        self.create_subscription(PoseWithCovarianceStamped, "initialpose", self._on_initialpose, 10)
        if self.p["odom_break_variance"] > 0:
            self.create_subscription(Odometry, "odometry", self._on_odometry, 20)
        self.diagnostics = Diagnostics(self, "relocalization", self.p["matcher"], self._diagnostic_status)
        if self.p["publish_tf"] and self.p["odom_frame"] and self.p["map_odom_period_s"] > 0:
            self.create_timer(float(self.p["map_odom_period_s"]), self._rebroadcast_map_odom)

    def deactivate(self):
        self.calls.answer(self.calls.take(), Answer(False, "the node was deactivated"))

    # ------------------------------------------------------------ map
    def _load(self, path: str) -> tuple[bool, str]:
        path = self.maps.resolve(path)
        try:
            new_map = Map.load(path, self._identity)
        except (MapError, OSError) as e:
            return False, f"map not loaded: {e}"
        if not len(new_map):
            return False, f"map not loaded: {path} has no keyframes"
        self.worker.call(self._install_map, new_map)  # between two frames, in the thread that runs the models
        self._map_file = str(path)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.p["map_frame"])
        for pub, msg in zip((self.pub_keyframes, self.pub_points), map_messages(new_map, header)):
            pub.publish(msg)  # latched: rviz started later gets them
        return True, f"map {path} loaded: {len(new_map)} keyframes"

    def _install_map(self, new_map: Map) -> None:
        """Runs in the worker thread (``Worker.call``); the lock is taken there, never held while waiting for the
        worker (which takes it in every query)."""
        with self._lock:
            self.localizer.set_map(new_map)  # learns the vocabulary of a format-1 map
            self.tracker.reset()
            self.map = new_map
        self._clear_map_odom()

    def _srv_load(self, req, res):
        res.success, res.message = self._load(req.path)
        res.num_keyframes = len(self.map) if res.success else 0
        log_outcome(self, res.success, res.message)
        if res.success:  # the parameter follows (its callback sees the map is loaded already)
            self.set_parameters([Parameter("map_path", value=self._map_file)])
        return res

    def _srv_save(self, req, res):
        path = req.path or self.p["map_path"]
        res.success, res.message = False, "no map loaded" if self.map is None else "no path given"
        if self.map is not None and path:
            try:
                path = check_save_path(self.maps.for_save(path))
                with self._lock:
                    self.map.save(path)
                res.success, res.message = True, f"saved {len(self.map)} keyframes to {path}"
            except (MapError, OSError) as e:
                res.message = f"save failed, previous file untouched: {e}"
        log_outcome(self, res.success, res.message)
        return res

    # ------------------------------------------------------------ inputs and requests
    def _on_initialpose(self, msg: PoseWithCovarianceStamped):
        if msg.header.frame_id and msg.header.frame_id != self.p["map_frame"]:
            self.errors("initialpose", f"in frame '{msg.header.frame_id}', expected '{self.p['map_frame']}'")
            return
        with self._lock:
            self._initial_pose = conv.pose_to_matrix(msg.pose.pose)  # base_frame in the map, for the next query
        self.get_logger().info("prior pose received")

    def _on_odometry(self, msg: Odometry):
        """A break where the position variance rises by odom_break_variance: map -> odom is not re-broadcast past
        it, and the tracker links no earlier fix to a later frame (handed over in the worker, ``_query``)."""
        stamp = conv.stamp_to_ns(msg.header.stamp)
        covariance = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6)
        variance = float(np.max(np.diag(covariance)[:3]))
        with self._tf_lock:
            last, self._odom_last = self._odom_last, (stamp, variance)
            if last is not None and stamp < last[0]:  # a bag played again, /clock reset: the old breaks are ahead
                self._breaks, self._new_breaks = [], []
                self._odom_reports.clear()
            self._odom_reports.append((stamp, covariance, msg.child_frame_id))
            if last is None or stamp <= last[0] or variance < last[1] + self.p["odom_break_variance"]:
                return
            self._new_breaks.append(stamp)
            self._breaks = self._breaks[-31:] + [stamp]
            self._doubt_ns = stamp if self._doubt_ns is None else min(self._doubt_ns, stamp)
        self.get_logger().info(f"the odometry broke at {stamp * 1e-9:.3f} s (its position variance {last[1]:.3g} -> "
                               f"{variance:.3g} m^2): no prior across it")

    def _srv_relocalize(self, req, res):
        timeout = req.timeout_s if np.isfinite(req.timeout_s) and req.timeout_s > 0 else 2.0
        timeout = min(float(timeout), MAX_SERVICE_TIMEOUT_S)
        if not self.active:
            res.success, res.message = False, "the node is not active (lifecycle): no images are processed"
            return res
        answer = self.calls.wait(timeout, f"no image and solution within {timeout:.1f} s")
        res.success, res.message = answer.success, answer.message
        if answer.result is not None:
            res.pose, res.num_inliers = answer.result, answer.count
        return res

    # ------------------------------------------------------------ queries (worker thread)
    def _on_frame(self, item) -> None:
        with self._tf_lock:
            self._newest_image_ns = max(self._newest_image_ns, conv.stamp_to_ns(item[1].stamp))
        self.worker.put(item)

    def _process(self, item):
        requests = self.calls.take()
        p = self.p
        due = p["mode"] == "continuous" and (p["rate_hz"] <= 0 or time.monotonic() - self._last_query >= 1.0
                                             / p["rate_hz"])
        if not requests and not due:
            return
        self._last_query = time.monotonic()
        with self._tf_lock:
            self._in_flight_ns = conv.stamp_to_ns(item[1].stamp)
        frame = self.input.frame(item)
        answer = Answer()
        try:
            if frame is not None:
                self._query(frame, answer, global_only=bool(requests))
            else:
                answer.message = "the image could not be used (see /diagnostics)"
        finally:
            with self._tf_lock:
                self._in_flight_ns = None
            self.calls.answer(requests, answer)

    def _query(self, frame, answer: Answer, global_only: bool):
        p, header = self.p, frame.header
        if self.map is None or frame.K is None:
            answer.message = "no map loaded" if self.map is None else "no usable camera_info"
            self._status(header, DiagnosticStatus.ERROR, answer.message, {})
            return
        stamp = conv.stamp_to_ns(header.stamp)
        camera = header.frame_id
        T_base_cam = self._base_to_camera(camera, stamp)
        T_odom_cam = None if global_only else self._odometry(camera, stamp)
        odom_cov = None if T_odom_cam is None else self._reported_covariance(camera, stamp, T_odom_cam)
        with self._tf_lock:
            breaks, self._new_breaks = self._new_breaks, []
        with self._lock:
            for b in breaks:
                self.tracker.note_odometry_break(b)
            initial, self._initial_pose = self._initial_pose, None
            if initial is not None and not global_only:
                self.tracker.set_initial_pose(initial @ (T_base_cam if T_base_cam is not None else np.eye(4)))
            result = self.tracker.localize(frame.image, frame.K, stamp, T_odom_cam, global_only=global_only,
                                           distortion=frame.distortion, odom_covariance=odom_cov)
        self.counts["queries"] += 1
        self.rate.add(1e3 * (time.monotonic() - frame.received))
        values = {"mode": result.mode, "prior": result.stats.get("prior", "none"),
                  **{k: result.stats[k] for k in ("prior_sigma_m", "prior_drift") if k in result.stats},
                  "inliers": result.num_inliers,
                  "rmse_px": result.rmse_px, "query_ms": sum(result.timings_ms.values()),
                  **{f"{k}_ms": v for k, v in result.timings_ms.items()}}
        if "reset" in result.stats:
            self.get_logger().warning(result.stats["reset"])
            self._clear_map_odom()  # its stamp is ahead of the new time
        self._publish_correspondences(header, result)
        if self.debug.wanted():
            self._draw(frame, result)
        if not result.success:
            self.counts["rejected"] += 1
            answer.message = f"{'lost' if self.tracker.lost else 'no pose'}: {result.reason}"
            if result.stats.get("held_back") and p["odom_frame"]:
                with self._tf_lock:  # after an odometry restart the old map -> odom would put the robot elsewhere
                    self._doubt_ns = stamp if self._doubt_ns is None else min(self._doubt_ns, stamp)
                answer.message += f"; {p['map_frame']} -> {p['odom_frame']} not re-broadcast past this frame meanwhile"
            self._status(header, DiagnosticStatus.WARN, answer.message, values)
            return
        self.counts["accepted"] += 1
        self.counts["tracked"] += int(result.mode == "tracking")
        base_frame = p["base_frame"] if T_base_cam is not None and p["base_frame"] else camera
        T_base_cam = T_base_cam if base_frame != camera else np.eye(4)
        T_map_base = result.T_map_cam @ invert(T_base_cam)
        cov = covariance_of_attached_frame(result.covariance, result.T_map_cam, T_map_base)
        out = Header(stamp=header.stamp, frame_id=p["map_frame"])
        pose = PoseWithCovarianceStamped(header=out)
        pose.pose.pose, pose.pose.covariance = conv.matrix_to_pose(T_map_base), cov.ravel().tolist()
        self.pub_pose.publish(pose)
        answer.success, answer.result, answer.count = True, pose, result.num_inliers
        answer.message = f"localized ({result.mode}) with {result.num_inliers} inliers"
        if "tracking_failed" in result.stats:
            answer.message += f"; tracking from the {values['prior'].removesuffix(' (failed)')} prior failed: " \
                              f"{result.stats['tracking_failed']}"
        level, text = DiagnosticStatus.OK, answer.message
        if T_odom_cam is None and p["odom_frame"]:  # it may have come during the query
            T_odom_cam = self._odometry_at(camera, stamp)
            if T_odom_cam is not None:
                self.tracker.anchor_odometry(result.T_map_cam, result.covariance, T_odom_cam, stamp,
                                             self._reported_covariance(camera, stamp, T_odom_cam))
        if p["publish_tf"]:
            if not p["odom_frame"]:
                self.tf.send([conv.matrix_to_transform(T_map_base, out, base_frame)])
            elif T_odom_cam is None:
                with self._tf_lock:
                    self._pending_fix = (stamp, result.T_map_cam, result.covariance, camera)
                level = DiagnosticStatus.WARN
                text = (f"{text}; no {p['odom_frame']} transform at the image stamp yet: map->odom waits for it up "
                        f"to {p['map_odom_wait_s']} s")
            else:
                self._set_map_odom(stamp, self.tracker.T_map_odom)
        self._status(header, level, text, values)

    def _clear_map_odom(self) -> None:
        with self._tf_lock:
            self._map_odom, self._pending_fix, self._newest_image_ns, self._doubt_ns = None, None, 0, None
            self._breaks, self._new_breaks, self._odom_last = [], [], None
            self._odom_reports.clear()

    def _set_map_odom(self, stamp: int, T_map_odom: np.ndarray) -> bool:
        """Broadcast map -> odom at ``stamp`` unless a newer fix has set it already."""
        with self._tf_lock:
            if self._map_odom is not None and self._map_odom[0] > stamp:
                return False
            self._map_odom = (stamp, T_map_odom)
            if self._pending_fix is not None and self._pending_fix[0] <= stamp:
                self._pending_fix = None
            if self._doubt_ns is not None and self._doubt_ns <= stamp:
                self._doubt_ns = None
        self._send_map_odom(stamp, T_map_odom)
        return True

    def _send_map_odom(self, stamp: int, T_map_odom: np.ndarray) -> None:
        header = Header(stamp=conv.ns_to_stamp(stamp), frame_id=self.p["map_frame"])
        self.tf.send([conv.matrix_to_transform(T_map_odom, header, self.p["odom_frame"])])

    def _rebroadcast_map_odom(self) -> None:
        """Timer: a fix waiting for its odometry takes it when it has come (or is dropped after map_odom_wait_s);
        then the latest map -> odom goes out again, stamped transform_tolerance_s ahead of the clock but before any
        frame that may still give a fix (the one in the worker, the newest received): tf2 keeps the first transform
        it gets for a stamp (a later one at the same stamp is dropped as repeated data) and interpolates between
        stamps, so an old map -> odom stamped at or after such a frame would stand for it in place of its own fix (a
        graph test at 1x: a re-broadcast at the stamp of the next fix, after visual_odometry had restarted, put
        map -> camera 0.38 m / 39 deg off)."""
        p = self.p
        with self._tf_lock:
            pending, latest = self._pending_fix, self._map_odom
            open_stamp = min(self._newest_image_ns, self._in_flight_ns or self._newest_image_ns,
                             self._doubt_ns or self._newest_image_ns)
        now = self.get_clock().now().nanoseconds
        if now <= 0:  # use_sim_time before the first /clock
            return
        if pending is not None:
            stamp, T_map_cam, covariance, camera = pending
            T_odom_cam = self._odometry_at(camera, stamp)
            if T_odom_cam is not None:
                if self._set_map_odom(stamp, T_map_cam @ invert(T_odom_cam)):
                    odom_cov = self._reported_covariance(camera, stamp, T_odom_cam)
                    with self._lock:
                        self.tracker.anchor_odometry(T_map_cam, covariance, T_odom_cam, stamp, odom_cov)
                return
            if now - stamp > p["map_odom_wait_s"] * 1e9:
                with self._tf_lock:
                    if self._pending_fix is pending:
                        self._pending_fix = None
        if latest is None:
            return
        # never stamped before the fix it carries (the clock may lag the images), nor at or after a frame that may
        # still give a fix (the one in the worker, the newest received)
        stamp = min(max(now, latest[0]) + int(p["transform_tolerance_s"] * 1e9), open_stamp - 1)
        if stamp > latest[0]:
            self._send_map_odom(stamp, latest[1])

    def _lookup(self, target: str, source: str, stamp: int, timeout_s: float = 0.0):
        try:
            return self.tf_listener.lookup(target, source, stamp, timeout_s=timeout_s)
        except (TfLookupError, ValueError):
            return None

    def _odometry(self, camera: str, stamp: int):
        """odom -> camera at the image stamp, waited for up to odom_wait_s once odometry has been seen at all (a
        robot without odometry is not slowed); None without it."""
        p = self.p
        if not (p["use_odometry"] and p["odom_frame"]):
            return None
        seen = self.tf_listener.can_transform(p["odom_frame"], camera, 0)
        return self._odometry_at(camera, stamp, p["odom_wait_s"] if seen else 0.0)

    def _odometry_at(self, camera: str, stamp: int, timeout_s: float = 0.0):
        """odom -> camera at ``stamp`` (waited for up to timeout_s), or None, also where tf2 interpolated it
        across a break of the odometry (lost, restarted from a held pose: the transform before the break and the
        one after it do not describe one motion; a distro check at 1x anchored a fix 1.3 s into such a gap)."""
        T = self._lookup(self.p["odom_frame"], camera, stamp, timeout_s)
        deadline = time.monotonic() + 0.1
        while T is not None and time.monotonic() < deadline:  # the odometry message at the stamp, sent before the
            with self._tf_lock:  # transform, may still be on its way (where odometry messages come at all)
                if self._odom_last is None or self._odom_last[0] >= stamp:
                    break
            time.sleep(0.005)
        with self._tf_lock:
            crossed = [b for b in self._breaks if b > stamp]
        if T is not None and crossed:
            self.get_logger().info(f"{self.p['odom_frame']} -> {camera} at {stamp * 1e-9:.3f} s spans the odometry's "
                                   f"break at {crossed[0] * 1e-9:.3f} s: not used", throttle_duration_sec=5.0)
            return None
        return T

    def _reported_covariance(self, camera: str, stamp: int, T_odom_cam: np.ndarray):
        """The odometry topic's covariance of odom -> camera at ``stamp`` (the first message at or after it, the
        one tf2 interpolates towards, else the last before it; within ODOM_REPORT_SLACK_S), moved from the message's
        child frame to the camera, or None (no odometry topic, no message near the stamp, no transform between the
        child frame and the camera). The tracker widens its drift model to cover its growth since the fix."""
        with self._tf_lock:
            reports = list(self._odom_reports)
        after = [r for r in reports if r[0] >= stamp]
        near = after[0] if after else (reports[-1] if reports else None)
        if near is None or abs(near[0] - stamp) > ODOM_REPORT_SLACK_S * 1e9:
            return None
        _, covariance, child = near
        if child in ("", camera):
            return covariance
        T_child_cam = self._lookup(child, camera, stamp, 0.0)
        if T_child_cam is None:
            return None
        return covariance_of_attached_frame(covariance, T_odom_cam @ invert(T_child_cam), T_odom_cam)

    def _base_to_camera(self, camera: str, stamp: int):
        base = self.p["base_frame"]
        if not base or base == camera:
            return np.eye(4)
        T = self._lookup(base, camera, stamp, self.p["tf_timeout_s"])
        if T is None and not self._warned_base:
            self._warned_base = True
            self.get_logger().warning(f"no TF from base_frame '{base}' to the camera frame '{camera}': publishing the "
                                      f"pose of '{camera}' instead (set base_frame, or publish the transform)")
        return T

    # ------------------------------------------------------------ outputs
    def _publish_correspondences(self, header, result):
        if not result.matched:
            return
        km = result.matched[0]
        kf = self.map[km.keyframe_id]
        self.pub_corr.publish(conv.correspondence_message(
            header, self.p["matcher"], km.matches, km.pts_ref, km.pts_query, km.inliers,
            reference_stamp_ns=kf.stamp_ns, reference_frame_id=kf.frame_id, reference_id=kf.id,
            query_id=self.counts["queries"], num_keypoints_ref=len(kf.keypoints),
            num_keypoints_query=result.num_query_keypoints, pose_valid=result.success,
            T_ref_query=invert(kf.T_world_cam) @ result.T_map_cam, scale_known=True,
            num_inliers=int(km.inliers.sum())))

    def _draw(self, frame, result) -> None:
        """~/debug_image: the query with its matches to the best keyframe (inliers of the pose green)."""
        km = result.matched[0] if result.matched else None
        pts = km.pts_query if km is not None else np.zeros((0, 2))
        text = (f"{result.mode}: {result.num_inliers} inliers" if result.success
                else f"no pose: {result.reason[:80]}")
        if km is not None:
            text += f"\nkeyframe {km.keyframe_id}: {len(pts)} matches"
        self.debug.publish(draw_keypoints(frame.image, pts, km.inliers if km is not None else None, text),
                           frame.header)

    def _status(self, header, level: int, message: str, values: dict):
        self.last_status = message
        st = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: query", level=level, message=message,
                              values=[KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                                      for k, v in values.items()])
        self.pub_status.publish(DiagnosticArray(header=header, status=[st]))

    def _diagnostic_status(self):
        values = {**self.counts, "keyframes": len(self.map) if self.map is not None else 0,
                  **input_values(self.input, self.worker, self.errors), **self.rate.values()}
        if self.map is None:
            return DiagnosticStatus.ERROR, "no map loaded", values
        if self.tracker.lost:
            return DiagnosticStatus.WARN, f"lost: {self.last_status}", values
        problem = input_problem(self.input, self.errors)
        if problem:
            return DiagnosticStatus.WARN, problem, values
        return DiagnosticStatus.OK, self.last_status, values

    def _apply_parameters(self, changes: dict) -> str:
        new_path = changes.get("", {}).get("map_path")
        if new_path and str(self.maps.resolve(new_path)) != self._map_file:
            ok, text = self._load(new_path)
            if not ok:
                return text
        self.p.update(changes.get("", {}))
        self.tracker.conf.update({k: v for k, v in changes.get("", {}).items() if k in continuous_spec})
        if self.active:
            self.input.conf.update({k: v for k, v in changes.get("", {}).items() if k in camera_input_spec})
        with self._lock:
            if "localizer" in changes:
                self.localizer.conf = make_conf(localizer_spec, {**self.localizer.conf, **changes["localizer"]},
                                                "localizer")
            if "pnp" in changes:
                self.localizer.pnp_conf = make_conf(pnp_spec, {**self.localizer.pnp_conf, **changes["pnp"]}, "PnP")
        return ""

    def answer_pending(self, message: str) -> None:
        """Ctrl-C: every ~/relocalize call still waiting gets ``message`` before the node goes (``run_node``)."""
        self.calls.close(message)

    def cleanup(self) -> int:
        """Waiting calls answered; the frame in progress finishes; worker, matcher and map are released."""
        self.calls.close("the node was cleaned up (lifecycle)")
        self.param_updates.remove()
        self.worker.stop(10.0)
        self.worker = self.matcher = self.localizer = self.tracker = self.map = None
        return 0


def main(args=None):
    run_node(RelocalizerNode, threads=4 + MAX_WAITING_CALLS, args=args)


if __name__ == "__main__":
    main()
