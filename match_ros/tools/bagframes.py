"""Camera frames of a rosbag2 bag with what is known about them: calibration, depth, ground truth, odometry.

``BagFrames(bag)`` finds the topics itself (or takes them): the camera image (sensor_msgs/Image or
CompressedImage), its camera_info, an aligned depth image when the bag has one (a 32FC1 / 16UC1 image topic named
like depth), a pose of the camera in the map frame (a geometry_msgs/PoseStamped topic, or /tf map -> camera via
any chain), and odometry (/tf odom -> camera). Iterating streams the images (the bag is never held in memory):

    for f in BagFrames("run1"):          # f.image, f.K, f.depth (or None), f.T_map_cam, f.T_odom_cam (or None)
        ...

``describe()`` says which topics were chosen and what was not found, so a tool can say it loudly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from match_ros.ros import codec
from match_ros.ros.tf_buffer import TfBuffer, TfLookupError
from match_ros.tools.bagio import BagError, make_typestore, open_reader

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
AUTO = "auto"


@dataclass
class BagFrame:
    """One camera image: image [H x W (x 3)] uint8 RGB, K [3 x 3], depth [H x W] float32 m or None,
    T_map_cam / T_odom_cam [4 x 4] (camera optical frame in map / odom) or None when unknown."""

    stamp_ns: int
    frame_id: str
    image: np.ndarray
    K: np.ndarray
    depth: Optional[np.ndarray]
    T_map_cam: Optional[np.ndarray]
    T_odom_cam: Optional[np.ndarray]


class BagFrames:
    """Posed camera frames of a bag (module docstring). Topic arguments: a name, ``"auto"`` to detect, or ""
    to leave that source out. BagError when the bag or a named topic is missing."""

    def __init__(self, bag, image_topic: str = AUTO, info_topic: str = AUTO, depth_topic: str = AUTO,
                 pose_topic: str = AUTO, map_frame: str = "map", odom_frame: str = "odom",
                 use_tf: bool = True):
        self.bag, self.map_frame, self.odom_frame = bag, map_frame, odom_frame
        self.ts = make_typestore()
        reader = open_reader(bag)
        try:
            self.topics = {c.topic: c.msgtype for c in reader.connections}
            self.image_topic = self._pick(image_topic, "image", self._auto_image())
            self.info_topic = self._pick(info_topic, "camera_info", self._auto_info())
            self.depth_topic = self._pick(depth_topic, "depth", self._auto_depth(reader), required=False)
            self.pose_topic = self._pick(pose_topic, "pose", self._auto_pose(), required=False)
            self.tf = TfBuffer(cache_time_s=1e9)
            self.K_by_stamp: dict = {}
            self.poses: dict = {}
            self._read_small(reader, use_tf)
        finally:
            reader.close()
        if not self.K_by_stamp:
            raise BagError(f"no usable camera_info on {self.info_topic} in {bag}")

    # ------------------------------------------------------------------ topic choice
    def _pick(self, given: str, what: str, auto: Optional[str], required: bool = True) -> Optional[str]:
        if given == AUTO:
            if auto is None and required:
                raise BagError(f"no {what} topic found in {self.bag} (topics: {sorted(self.topics)}); name it")
            return auto
        if not given:
            return None
        if given not in self.topics:
            raise BagError(f"topic {given} ({what}) not in {self.bag} (topics: {sorted(self.topics)})")
        return given

    def _auto_image(self) -> Optional[str]:
        images = [t for t, m in self.topics.items() if m in IMAGE_TYPES and "depth" not in t.lower()]
        for preferred in ("/camera/image_raw", "/camera/image_rect", "/camera/image_raw/compressed"):
            if preferred in images:
                return preferred
        raw = [t for t in images if self.topics[t] == "sensor_msgs/msg/Image"]
        return sorted(raw or images)[0] if images else None

    def _auto_info(self) -> Optional[str]:
        infos = [t for t, m in self.topics.items() if m == "sensor_msgs/msg/CameraInfo"]
        if not infos:
            return None
        ns = self.image_topic.rsplit("/", 2)[0] if self.image_topic.endswith("/compressed") else \
            self.image_topic.rsplit("/", 1)[0]
        same = [t for t in infos if t.rsplit("/", 1)[0] == ns]
        return sorted(same or infos)[0]

    def _auto_depth(self, reader) -> Optional[str]:
        named = sorted(t for t, m in self.topics.items() if m == "sensor_msgs/msg/Image" and "depth" in t.lower())
        for t in named:  # the first message must carry a depth encoding
            conns = [c for c in reader.connections if c.topic == t]
            for c, _, raw in reader.messages(connections=conns):
                if self.ts.deserialize_cdr(raw, c.msgtype).encoding in codec.DEPTH_ENCODINGS:
                    return t
                break
        return None

    def _auto_pose(self) -> Optional[str]:
        poses = sorted(t for t, m in self.topics.items() if m == "geometry_msgs/msg/PoseStamped")
        for preferred in ("/ground_truth/pose", "/pose"):
            if preferred in poses:
                return preferred
        return poses[0] if len(poses) == 1 else None

    def _read_small(self, reader, use_tf: bool) -> None:
        """camera_info, poses and TF (small messages) into memory."""
        wanted = {self.info_topic, self.pose_topic} | ({"/tf", "/tf_static"} if use_tf else set())
        conns = [c for c in reader.connections if c.topic in wanted]
        for c, _, raw in reader.messages(connections=conns):
            msg = self.ts.deserialize_cdr(raw, c.msgtype)
            if c.topic == self.info_topic:
                try:
                    self.K_by_stamp[codec.stamp_to_ns(msg.header.stamp)] = codec.camera_matrix(msg)
                except codec.ConversionError:
                    continue
            elif c.topic == self.pose_topic:
                self.poses[codec.stamp_to_ns(msg.header.stamp)] = (msg.header.frame_id,
                                                                   codec.pose_to_matrix(msg.pose))
            else:
                for tr in msg.transforms:
                    self.tf.set_transform(tr.header.frame_id, tr.child_frame_id, codec.stamp_to_ns(tr.header.stamp),
                                          codec.transform_to_matrix(tr.transform), static=c.topic == "/tf_static")
        self._info_stamps = np.array(sorted(self.K_by_stamp), np.int64)

    def describe(self) -> dict:
        """Which topics serve which purpose (None: not in the bag)."""
        return {"image": self.image_topic, "camera_info": self.info_topic, "depth": self.depth_topic,
                "pose": self.pose_topic, "tf_map": self.map_frame in self.tf.frames(),
                "tf_odom": self.odom_frame in self.tf.frames()}

    # ------------------------------------------------------------------ frames
    def _K_at(self, stamp: int) -> np.ndarray:
        i = int(np.searchsorted(self._info_stamps, stamp, side="right")) - 1
        return self.K_by_stamp[int(self._info_stamps[max(i, 0)])]

    def _lookup(self, target: str, frame_id: str, stamp: int) -> Optional[np.ndarray]:
        try:
            return self.tf.lookup(target, frame_id, stamp)
        except (TfLookupError, ValueError):
            return None

    def ground_truth(self, stamp: int, frame_id: str) -> Optional[np.ndarray]:
        """Camera pose in the map frame at ``stamp``: the pose topic's (same stamp), else /tf map -> frame_id."""
        if stamp in self.poses:
            return self.poses[stamp][1]
        return self._lookup(self.map_frame, frame_id, stamp) if frame_id else None

    def __iter__(self) -> Iterator[BagFrame]:
        reader = open_reader(self.bag)
        try:
            topics = {self.image_topic} | ({self.depth_topic} if self.depth_topic else set())
            conns = [c for c in reader.connections if c.topic in topics]
            pending, depths = [], {}
            for c, _, raw in reader.messages(connections=conns):
                msg = self.ts.deserialize_cdr(raw, c.msgtype)
                stamp = codec.stamp_to_ns(msg.header.stamp)
                if c.topic == self.depth_topic:
                    depths[stamp] = msg
                else:
                    pending.append(msg)
                # an image is complete once its depth arrived or a later stamp's did (depth only sometimes)
                newest_depth = max(depths) if depths else None
                while pending and (self.depth_topic is None or stamp_done(pending[0], depths, newest_depth)):
                    yield self._frame(pending.pop(0), depths)
                for s in [s for s in depths if pending and s < codec.stamp_to_ns(pending[0].header.stamp)]:
                    del depths[s]
            for msg in pending:
                yield self._frame(msg, depths)
        finally:
            reader.close()

    def _frame(self, msg, depths: dict) -> BagFrame:
        stamp = codec.stamp_to_ns(msg.header.stamp)
        if hasattr(msg, "format"):  # sensor_msgs/CompressedImage
            image = codec.compressed_to_numpy(msg)
        else:
            image = codec.image_to_numpy(msg)
        d = depths.pop(stamp, None)
        depth = codec.depth_to_numpy(d) if d is not None else None
        fid = msg.header.frame_id
        T_odom = self._lookup(self.odom_frame, fid, stamp) if fid else None
        return BagFrame(stamp, fid, image, self._K_at(stamp), depth, self.ground_truth(stamp, fid), T_odom)


def stamp_done(msg, depths: dict, newest_depth: Optional[int]) -> bool:
    stamp = codec.stamp_to_ns(msg.header.stamp)
    return stamp in depths or (newest_depth is not None and newest_depth > stamp)


__all__ = ["AUTO", "BagError", "BagFrame", "BagFrames"]
