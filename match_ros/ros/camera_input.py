"""Camera input of the nodes: ``CameraInput(node, conf, on_frame)`` subscribes to ``image`` (sensor_msgs/Image, or
CompressedImage on ``image/compressed`` with ``image_transport: compressed``), ``camera_info`` and optionally
``depth``; checks what arrives (encoding, sizes, camera matrix plausibility, camera_info for another image size,
depth range), refuses images above ``max_input_pixels`` (compressed ones by their header, before decoding) and
downscales those above ``max_image_pixels`` (the camera matrix with them); counts frames the middleware lost before
the node (QoS ``message_lost`` events and gaps in the publishers' sequence numbers). ``input_values`` and
``input_problem``: what every camera node reports about its input in /diagnostics.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from match_ros.core.config import Param
from match_ros.core.geometry.camera import Distortion, calibration_change, calibration_per_width
from match_ros.ros import codec
from match_ros.ros.diagnostics import ErrorLog
from match_ros.ros.worker import Worker


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
