"""The runtime the three nodes share: camera input, worker thread, error accounting, diagnostics, shutdown.

- ``CameraInput(node, conf, on_frame)``: subscribes to ``image`` (sensor_msgs/Image, or CompressedImage on
  ``image/compressed`` with ``image_transport: compressed``), ``camera_info`` and optionally ``depth``; checks what
  arrives (encoding, sizes, camera matrix plausibility, camera_info for another image size, depth range), refuses
  images above ``max_input_pixels`` (compressed ones by their header, before decoding) and downscales those above
  ``max_image_pixels`` (the camera matrix with them); counts frames the middleware lost
  before the node (QoS ``message_lost`` events and gaps in the publishers' sequence numbers).
- ``Worker``: the newest frame only (drop-oldest slot) handed to one processing thread; the executor never waits.
  ``Worker.call`` runs set-up work (model building, warm-up, map loading) in that same thread: every torch
  computation of a node happens in one thread (see ``Worker.call``).
- ``ErrorLog``: errors counted by kind, logged at most every 2 s per kind, the recent ones kept for diagnostics.
- ``Diagnostics``: /diagnostics at 1 Hz with levels that recover (WARN while errors or frame loss are recent).
- ``run_node``: init, spin, and one shutdown path for Ctrl-C, SIGTERM and external shutdown that runs the node's
  ``shutdown()`` (e.g. saving a map) once, ignoring the second SIGINT ``ros2 launch`` forwards.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # the builtin TimeoutError only from Python 3.11
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from match_ros.core.geometry.camera import Distortion, calibration_change, calibration_per_width
from match_ros.core.config import Param
from match_ros.ros import codec
from match_ros.ros.latest import LatestSlot

IMAGE_QOS_CHOICES = ("sensor_data", "reliable")

camera_input_spec = {
    "image_qos": Param("sensor_data", "QoS of image, camera_info and depth: sensor_data (best effort, keep last 5: "
                       "receives from any publisher) or reliable", choices=IMAGE_QOS_CHOICES, read_only=True),
    "image_transport": Param("raw", "raw: sensor_msgs/Image on 'image'; compressed: sensor_msgs/CompressedImage "
                             "(jpeg, png) on 'image/compressed'", choices=("raw", "compressed"), read_only=True),
    "max_image_pixels": Param(1_500_000, "Larger images are downscaled to this many pixels (the camera matrix with "
                              "them)", "px", 4096, 100_000_000),
    "max_input_pixels": Param(25_000_000, "Images with more pixels are refused; compressed ones by the size in their "
                              "PNG / JPEG header, before decoding (a 2.5 MB PNG can hold gigabytes of pixels)", "px",
                              4096, 1_000_000_000),
    "max_calibration_change": Param(0.05, "Once a calibration is in use, a camera_info whose focal lengths or "
                                    "principal point (per pixel of width) differ by more than this share is refused "
                                    "and the one in use kept (a wrong camera_info gave poses metres off); 0 accepts "
                                    "any", min=0.0, max=10.0),
    "min_depth_m": Param(0.05, "Depth below this is invalid", "m", 0.0, 1000.0),
    "max_depth_m": Param(50.0, "Depth above this is invalid", "m", 0.01, 100000.0),
    "depth_wait_s": Param(0.2, "How long a frame waits for the depth image with its stamp", "s", 0.0, 10.0),
}


def image_qos(name: str):
    """'sensor_data' (best effort, keep last 5) or 'reliable' (keep last 5)."""
    from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy,
                           qos_profile_sensor_data)

    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                          durability=QoSDurabilityPolicy.VOLATILE)
    raise ValueError(f"unknown image QoS '{name}', expected one of {IMAGE_QOS_CHOICES}")


@dataclass
class CameraFrame:
    """A checked camera frame: header (stamp and frame_id of the input), image [H x W (x 3)] uint8 RGB, K [3 x 3]
    (None: no usable calibration), depth [H x W] float32 m (None), scale applied to the input, arrival time,
    distortion of the (raw) image from camera_info (None: none, or no K; the core undistorts the keypoints)."""

    header: object
    image: np.ndarray
    K: Optional[np.ndarray]
    depth: Optional[np.ndarray]
    scale: float
    received: float
    distortion: Optional[Distortion] = None


def check_camera_matrix(K: np.ndarray, width: int, height: int) -> str:
    """Why a camera matrix cannot belong to a width x height camera ("" when plausible)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if not (0 <= cx <= width and 0 <= cy <= height):
        return f"principal point ({cx:.1f}, {cy:.1f}) outside the {width}x{height} image"
    if not 0.5 <= fx / fy <= 2.0:
        return f"focal lengths fx={fx:.1f}, fy={fy:.1f} differ too much"
    fov = 2.0 * np.degrees(np.arctan(width / (2.0 * fx)))
    if not 1.0 <= fov <= 170.0:
        return f"focal length fx={fx:.3g} gives a {fov:.3g} deg field of view for a {width} px wide image"
    return ""


def log_outcome(node, ok: bool, text: str) -> None:
    """Log a success as info and a failure as error (one call site per severity: rclpy refuses to change the
    severity of a call site)."""
    if ok:
        node.get_logger().info(text)
    else:
        node.get_logger().error(text)


class ErrorLog:
    """Errors counted by kind (digits ignored), each kind logged at most every ``period_s``."""

    def __init__(self, node, period_s: float = 2.0, recent_s: float = 10.0):
        self.node, self.period_s, self.recent_s = node, period_s, recent_s
        self.count, self.by_kind, self.last = 0, {}, ""
        self._logged_at: dict = {}
        self._times: deque = deque(maxlen=1000)
        self._lock = threading.Lock()

    def __call__(self, kind: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            self.last = f"{kind}: {text}"
            self._times.append(now)
            key = kind + re.sub(r"[0-9.]+", "#", text)
            if now - self._logged_at.get(key, -1e9) < self.period_s:
                return
            self._logged_at[key] = now
        self.node.get_logger().error(f"{kind}: {text}")

    def recent(self) -> int:
        """Errors within the last ``recent_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._times if now - t <= self.recent_s)


class CameraInput:
    """Image (+ camera_info, + depth) input of a node (module docstring); ``on_frame(CameraFrame)`` is called in
    the subscription callback, so it must be quick (hand the frame to a ``Worker``)."""

    def __init__(self, node, conf: dict, on_frame: Callable, errors: ErrorLog, use_depth: bool = False):
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        self.node, self.conf, self.on_frame, self.errors = node, dict(conf), on_frame, errors
        self.use_depth = use_depth
        self.K, self.info_size, self.distortion = None, None, None
        self.received, self.lost_events, self.lost_gaps = 0, 0, 0
        self._said: set = set()
        self._last_seq: dict = {}
        self._depths: deque = deque(maxlen=8)
        self._depth_cond = threading.Condition()
        qos = image_qos(conf["image_qos"])
        events = self._loss_events()
        compressed = conf["image_transport"] == "compressed"
        image_type, topic = (CompressedImage, "image/compressed") if compressed else (Image, "image")
        node.create_subscription(image_type, topic, self._image_callback(), qos, event_callbacks=events)
        node.create_subscription(CameraInfo, "camera_info", self._on_info, qos)
        if use_depth:
            node.create_subscription(Image, "depth", self._on_depth, qos)

    # ------------------------------------------------------------------ frame loss before the node
    def _loss_events(self):
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks

        def lost(info):
            self.lost_events += int(info.total_count_change)

        return SubscriptionEventCallbacks(message_lost=lost)

    def _image_callback(self):
        from rclpy.subscription import Subscription

        if not hasattr(Subscription, "CallbackType"):  # Humble: no message info in Python callbacks
            return self._on_image

        def with_info(msg, info):
            info = dict(info) if not isinstance(info, dict) else info
            seq = int(info.get("publication_sequence_number", 0) or 0)
            gid = bytes(info.get("publisher_gid", {}).get("data", b"")) if isinstance(
                info.get("publisher_gid"), dict) else str(info.get("publisher_gid", ""))
            last = self._last_seq.get(gid)
            if seq and last is not None and seq > last + 1:
                self.lost_gaps += seq - last - 1
            if seq:
                self._last_seq[gid] = seq
            self._on_image(msg)

        return with_info

    @property
    def lost(self) -> int:
        """Frames lost between the publishers and this node (the larger of the two counts)."""
        return max(self.lost_events, self.lost_gaps)

    def loss_warning(self) -> str:
        """A warning while frames are being lost before the node (since the last call), else ""."""
        lost, received = self.lost, self.received
        new_lost, new_received = lost - getattr(self, "_lost_seen", 0), received - getattr(self, "_received_seen", 0)
        self._lost_seen, self._received_seen = lost, received
        if new_lost and new_lost > 0.05 * (new_lost + new_received):
            share = 100.0 * new_lost / (new_lost + new_received)
            return (f"{share:.0f} % of the images lost before the node: give the camera driver the Fast DDS profile "
                    f"(share/match_ros/config/fastdds_shm.xml) or use image_qos reliable")
        return ""

    # ------------------------------------------------------------------ inputs
    def _once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.node.get_logger().warning(text)

    def _on_info(self, msg) -> None:
        try:
            K = codec.camera_matrix(msg)
            distortion = codec.camera_distortion(msg)  # an unsupported model: the calibration is not used at all
        except codec.ConversionError as e:
            self.errors("camera_info", str(e))
            return
        size = (int(msg.width), int(msg.height))
        change = 0.0  # against the calibration in use (per pixel of width: another resolution is no change)
        if self.K is not None and self.info_size and self.info_size[0] and size[0]:
            change = float(np.max(calibration_change(calibration_per_width(self.K, self.info_size[0]),
                                                     calibration_per_width(K, size[0]))))
        tol = float(self.conf["max_calibration_change"])
        if tol > 0 and change > tol:
            self.errors("camera_info", f"calibration changed by {100 * change:.0f} % (> {100 * tol:.0f} %, "
                        f"max_calibration_change): refused, still using fx {self.K[0, 0]:.1f} px; restart the node or "
                        f"set max_calibration_change to 0 if the camera really changed")
            return
        self.K, self.info_size, self.distortion = K, size, distortion

    def _on_depth(self, msg) -> None:
        with self._depth_cond:
            self._depths.append((codec.stamp_to_ns(msg.header.stamp), msg))
            self._depth_cond.notify_all()

    def _on_image(self, msg) -> None:
        self.received += 1
        limit = self.conf["max_input_pixels"]
        try:
            if hasattr(msg, "format"):
                image = codec.compressed_to_numpy(msg, max_pixels=limit)
            elif msg.width * msg.height > limit:
                raise codec.ImageTooLarge(f"image of {msg.width}x{msg.height} exceeds the limit of "
                                          f"{limit / 1e6:.1f} Mpx")
            else:
                image = codec.image_to_numpy(msg)
        except codec.ImageTooLarge as e:
            self.errors("image", f"{e} (parameter max_input_pixels)")
            return
        except codec.ConversionError as e:
            self.errors("image", str(e))
            return
        self.on_frame((time.monotonic(), msg.header, image))

    def frame(self, item) -> Optional[CameraFrame]:
        """Turn a received (time, header, image) into a checked CameraFrame (in the worker thread)."""
        received, header, image = item
        h, w = image.shape[:2]
        if min(h, w) < 16:
            self.errors("image", f"image too small: {w}x{h}")
            return None
        K, distortion = self.K, self.distortion  # (distortion acts on normalised coordinates: kept when scaled)
        if K is not None and self.info_size and all(self.info_size) and self.info_size != (w, h):
            self.errors("camera_info", f"camera_info is for {self.info_size[0]}x{self.info_size[1]} images, the "
                        f"image is {w}x{h}: no pose from this frame")
            K = None
        if K is not None:
            why = check_camera_matrix(K, w, h)
            if why:
                self.errors("camera_info", f"implausible camera matrix: {why}")
                K = None
        depth = self._depth_for(codec.stamp_to_ns(header.stamp), (h, w)) if self.use_depth else None
        scale = 1.0
        if w * h > self.conf["max_image_pixels"]:
            scale = float(np.sqrt(self.conf["max_image_pixels"] / (w * h)))
            size = (max(16, int(w * scale)), max(16, int(h * scale)))
            self._once("downscale", f"images of {w}x{h} are downscaled to {size[0]}x{size[1]} (max_image_pixels)")
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            if depth is not None:
                depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
            sx, sy = size[0] / w, size[1] / h
            if K is not None:
                K = K.copy()
                K[0, 0], K[0, 2] = K[0, 0] * sx, (K[0, 2] + 0.5) * sx - 0.5
                K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
        return CameraFrame(header, image, K, depth, scale, received, distortion if K is not None else None)

    def _depth_for(self, stamp_ns: int, shape: tuple) -> Optional[np.ndarray]:
        deadline = time.monotonic() + self.conf["depth_wait_s"]
        with self._depth_cond:
            while True:
                msg = next((m for s, m in reversed(self._depths) if s == stamp_ns), None)
                left = deadline - time.monotonic()
                if msg is not None or left <= 0:
                    break
                self._depth_cond.wait(left)
        if msg is None:
            self.errors("depth", "no depth image with the image's stamp: this frame has no depth")
            return None
        try:
            depth = codec.depth_to_numpy(msg)
        except codec.ConversionError as e:
            self.errors("depth", str(e))
            return None
        if depth.shape != shape:
            self.errors("depth", f"depth is {depth.shape[1]}x{depth.shape[0]}, the image {shape[1]}x{shape[0]}")
            return None
        bad = (depth != 0) & ((depth < self.conf["min_depth_m"]) | (depth > self.conf["max_depth_m"]))
        if bad.any():
            self._once("depth_range", f"depth values outside [{self.conf['min_depth_m']}, {self.conf['max_depth_m']}] "
                       "m are treated as invalid")
            depth = np.where(bad, 0.0, depth).astype(np.float32)
        return depth


class Worker:
    """One processing thread fed by a drop-oldest slot: ``put`` never blocks, ``process(item)`` runs in order;
    an exception in ``process`` is counted by ``errors`` and the thread goes on."""

    def __init__(self, process: Callable, errors: ErrorLog, name: str):
        self.slot: LatestSlot = LatestSlot()
        self.process, self.errors = process, errors
        self.busy = False
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        self.slot.put(item)

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run in the worker thread (between frames); returns its result or raises its
        exception here. Inline when called from the worker itself or after stop(). The caller waits for the frame
        in progress, so it must not hold a lock that ``process`` takes (let ``fn`` take it).

        Why: PyTorch's CPU wheels use GNU OpenMP, which gives every thread that runs a parallel operation its own
        thread pool. A model built or warmed up in the executor thread and then run in the worker left two pools
        on 2 cores and made XFeat+LighterGlue 1.7x slower per frame (75 -> 127 ms, measured); so a node builds,
        warms up and feeds its models through this one thread.
        """
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        self.slot.wake()
        while True:
            try:
                return future.result(timeout=0.5)
            except FutureTimeout:
                if not self._thread.is_alive():  # the worker ended before taking it: run it here
                    self._run_calls()

    def _run_calls(self) -> None:
        while True:
            try:
                future, fn, args, kwargs = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # handed to the caller, which raises it
                future.set_exception(e)

    def _run(self) -> None:
        while not self.slot.closed:
            self._run_calls()
            item = self.slot.get(timeout=0.5)
            self._run_calls()
            if item is None:
                continue
            self.busy = True
            try:
                self.process(item)
            except Exception as e:  # a bad frame must never stop the node
                self.errors("processing", f"frame skipped: {e!r}")
            finally:
                self.busy = False
        self._run_calls()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)


def steady_clock():
    """A monotonic clock for timers that must run whatever /clock does (diagnostics, autosave)."""
    from rclpy.clock import Clock, ClockType

    return Clock(clock_type=ClockType.STEADY_TIME)


def matcher_spec(matcher_text: str = "Matching backend", keypoints_text: str = "Keypoints extracted per image",
                 cpu_bf16: str = "auto") -> dict:
    """The matcher, device, max_keypoints and cpu_bf16 parameters every node declares (read-only: they build the
    model). ``cpu_bf16``: "auto" (measured at start, ``core.precision``) only where its effect on the results was
    measured as nil (keyframe_matcher's two-view poses); "false" for visual odometry (drift 0.24-0.53 -> 0.32-0.58 %)
    and mapping / relocalization (1 wrong pose in 500 changed-day queries against a float32 map, none without)."""
    from match_ros.core.device import DEVICE_CHOICES
    from match_ros.core.features.matcher import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS, available_matchers

    return {
        "matcher": Param(DEFAULT_MATCHER, matcher_text, choices=tuple(available_matchers()), read_only=True),
        "device": Param("auto", "Inference device: auto (CUDA when present), cpu, cuda", choices=DEVICE_CHOICES,
                        read_only=True),
        "max_keypoints": Param(DEFAULT_MAX_KEYPOINTS, keypoints_text + " (not for nemf_dense, whose grid is fixed)",
                               min=16, max=16384, read_only=True),
        "torch_threads": Param(0, "Intra-op threads of torch (0: torch's default, one per core); where several "
                               "match_ros nodes share the cores give each its share (two nodes on 2 cores: 1 each)",
                               min=0, max=256, read_only=True),
        "cpu_bf16": Param(cpu_bf16, "XFeat backbone and LighterGlue in bfloat16 on a CPU with native bf16 (AMX / "
                          "AVX512-BF16; no effect elsewhere): auto times float32 against bf16 at start (once per CPU "
                          "model, cached) and uses bf16 only when it is >= 1.1x faster and keeps >= 90 % of the "
                          "matches (1.4-1.5x on a Xeon with AMX, nothing gained on an EPYC); true / false force it",
                          choices=("auto", "true", "false"), read_only=True),
    }


def warm_matcher(p: dict):
    """The matcher the ``matcher_spec`` parameters name, warmed up (the first real frame is not slower), and the
    features of the warm-up image. Run it in the node's worker thread: ``worker.call(warm_matcher, p)``."""
    import torch

    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf

    from match_ros.core.precision import choose_cpu_bf16

    if p["torch_threads"] > 0:
        torch.set_num_threads(int(p["torch_threads"]))
    device = resolve_device(p["device"])
    conf = shared_conf(p["matcher"], max_keypoints=p["max_keypoints"])
    if p["cpu_bf16"] == "auto":
        bf16, precision = choose_cpu_bf16(p["matcher"], conf, device, p["torch_threads"])
    else:
        bf16 = p["cpu_bf16"] == "true"
        precision = f"{'bf16' if bf16 else 'float32'} (cpu_bf16: {p['cpu_bf16']})"
    conf = shared_conf(p["matcher"], max_keypoints=p["max_keypoints"], cpu_bf16=bf16, cpu_bf16_glue=bf16)
    matcher = build_matcher(p["matcher"], conf, device)
    matcher.precision = precision  # logged and in /diagnostics
    probe = matcher.extract(np.random.default_rng(0).integers(0, 255, (480, 640), np.uint8))
    matcher.match(probe, probe)
    return matcher, probe


def input_values(camera_input: "CameraInput", worker: "Worker", errors: ErrorLog) -> dict:
    """The diagnostic values every camera node reports: frames received, lost before the node, dropped while
    busy, errors (by kind, the last one)."""
    return {"received": camera_input.received, "lost_before_node": camera_input.lost,
            "dropped_busy": worker.slot.dropped, "errors": errors.count,
            **{f"errors_{k}": v for k, v in errors.by_kind.items()}, "last_error": errors.last}


def input_problem(camera_input: "CameraInput", errors: ErrorLog) -> Optional[str]:
    """The WARN message every camera node shares (frames lost before it, then recent errors), or None."""
    loss = camera_input.loss_warning()
    if loss:
        return loss
    if errors.recent():
        return f"recent errors: {errors.last}"
    return None


class Diagnostics:
    """/diagnostics at 1 Hz: ``status()`` returns (level, message, values); ERROR/WARN/OK recover by themselves.
    The status is named after the node's fully qualified name (``/robot1/relocalizer: relocalization``), so that
    the same node in two namespaces gives two statuses."""

    def __init__(self, node, name: str, hardware_id: str, status: Callable):
        from diagnostic_msgs.msg import DiagnosticArray

        self.node, self.name, self.hardware_id, self.status = node, name, hardware_id, status
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(1.0, self.publish, clock=steady_clock())  # on wall time: also when /clock stops

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        level, message, values = self.status()
        st = DiagnosticStatus(name=f"{self.node.get_fully_qualified_name()}: {self.name}",
                              hardware_id=self.hardware_id, level=level, message=message,
                              values=[KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                                      for k, v in values.items()])
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)


class RateMeter:
    """Rate [Hz] and latency percentiles over the last ``window`` events."""

    def __init__(self, window: int = 300):
        self.times: deque = deque(maxlen=window)
        self.latencies_ms: deque = deque(maxlen=window)

    def add(self, latency_ms: float) -> None:
        self.times.append(time.monotonic())
        self.latencies_ms.append(latency_ms)

    def values(self) -> dict:
        t = list(self.times)
        rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0
        if time.monotonic() - (t[-1] if t else 0.0) > 5.0:
            rate = 0.0
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"rate_hz": rate, "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p95_ms": float(np.percentile(lat, 95))}


def fastdds_profile() -> Optional[Path]:
    """The shipped Fast DDS profile (16 MB shared-memory segment), beside this module or in share/match_ros."""
    here = Path(__file__).resolve().parent / "fastdds_shm.xml"
    return here if here.is_file() else None


def use_fastdds_profile() -> Optional[str]:
    """Point Fast DDS at the shipped profile unless the user chose one: FASTRTPS_DEFAULT_PROFILES_FILE for Fast DDS
    2 (Humble, Jazzy: ROS_DISTRO says so), FASTDDS_DEFAULT_PROFILES_FILE for Fast DDS 3 (Kilted and the pip wheels).
    Returns the variable set, or None."""
    profile = fastdds_profile()
    if profile is None or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or os.environ.get(
            "FASTRTPS_DEFAULT_PROFILES_FILE"):
        return None
    name = ("FASTRTPS_DEFAULT_PROFILES_FILE" if os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy")
            else "FASTDDS_DEFAULT_PROFILES_FILE")
    os.environ[name] = str(profile)
    return name


def _drain_pool(executor, timeout_s: float) -> None:
    """Let the callbacks a MultiThreadedExecutor's thread pool is still running end, and drop the queued ones,
    before ``executor.shutdown``: rclpy's shutdown destroys the executor's guard condition first and its pool after
    (ros2/rclpy#968), so a callback that ends in between fails on the guard ("The following exception was never
    retrieved: cannot use Destroyable because destruction was requested", on most Ctrl-C of an idle relocalizer,
    whose map -> odom timer runs at 20 Hz). Bounded: a callback that does not end within timeout_s is left."""
    pool = getattr(executor, "_executor", None)  # rclpy's ThreadPoolExecutor; absent in single-threaded ones
    if pool is None:
        return
    done = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    done.start()
    done.join(timeout_s)


def run_node(make_node: Callable, *, threads: int = 1, args=None) -> None:
    """Create the node, spin it, and shut down once: the first SIGINT / SIGTERM (or an external shutdown) ends
    the spin, the node's ``shutdown()`` runs (a map save finishes), later signals are ignored meanwhile. A
    ``shutdown()`` that returns a non-zero int (e.g. a final save failed) is the process's exit status. Service
    calls still waiting are answered first (``answer_pending("shutting down")``), so no caller waits for a node
    that is gone, and the executor's threads are free when the interpreter exits (it joins them)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    use_fastdds_profile()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stopping = threading.Event()
    node = executor = None
    status = 0

    def on_signal(signum, _frame):
        if stopping.is_set():
            return  # already shutting down: e.g. the SIGINT `ros2 launch` forwards after the terminal's
        stopping.set()  # the spin loop ends within its 0.2 s step; the shutdown runs there, not in the handler

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        while not stopping.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stopping.set()
        if node is not None and hasattr(node, "answer_pending"):
            node.answer_pending("shutting down")
        if executor is not None:
            _drain_pool(executor, 1.0)
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            try:
                if hasattr(node, "shutdown"):
                    result = node.shutdown()
                    status = result if isinstance(result, int) else 0
            finally:
                node.destroy_node()
        rclpy.try_shutdown()
        # Ignored from here on: a signal that arrives while the interpreter exits (e.g. the second SIGINT ros2
        # launch forwards after a quick save) must not turn a clean exit into death by SIGINT. Python resets
        # handlers written in Python to the default at finalization, but leaves SIG_IGN alone.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    if status:
        raise SystemExit(status)
