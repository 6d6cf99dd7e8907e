"""rosbag2 reading and writing helpers on the ``rosbags`` library (pure: no rclpy).

Bags are rosbag2 folders (metadata.yaml + .db3 or .mcap) or bare .db3/.mcap files.
Messages are built and decoded with a rosbags typestore for ROS 2 Kilted, extended with
match_ros/msg/CorrespondenceSet read from the package's .msg files, so
the type hashes equal those of the rosidl build.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from match_ros.core.geometry.transforms import quaternion_from_matrix

STORAGES = ("sqlite3", "mcap")
MATCH_ROS_MSGS = ("CorrespondenceSet",)  # in dependency order
_TF_MESSAGE_MSG = "geometry_msgs/TransformStamped[] transforms\n"


class BagError(Exception):
    """A bag could not be opened, read or written; the text says why (one line)."""


def find_msg_dir() -> Path:
    """Folder holding match_ros' .msg files: the source tree, else <prefix>/share/match_ros/msg."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sys.prefix]:
        if prefix:
            candidates.append(Path(prefix) / "share" / "match_ros" / "msg")
    for c in candidates:
        if all((c / f"{name}.msg").is_file() for name in MATCH_ROS_MSGS):
            return c
    raise FileNotFoundError(f"match_ros .msg files not found in any of {[str(c) for c in candidates]}")


def register_match_ros_types(typestore, msg_dir=None) -> list:
    """Register match_ros/msg/* (and tf2_msgs/msg/TFMessage if the store lacks it); returns the names added."""
    from rosbags.typesys import get_types_from_msg

    folder = Path(msg_dir) if msg_dir is not None else find_msg_dir()
    types = {}
    for name in MATCH_ROS_MSGS:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"match_ros/msg/{name}"))
    if "tf2_msgs/msg/TFMessage" not in typestore.fielddefs:
        types.update(get_types_from_msg(_TF_MESSAGE_MSG, "tf2_msgs/msg/TFMessage"))
    new = {k: v for k, v in types.items() if k not in typestore.fielddefs}
    typestore.register(new)
    return sorted(new)


def make_typestore():
    """A rosbags typestore for ROS 2 Kilted (Stores.ROS2_KILTED) with the match_ros types."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    register_match_ros_types(store)
    return store


# ----------------------------------------------------------------------------- messages
def stamp_msg(ts, stamp_ns: int):
    """builtin_interfaces/Time from nanoseconds."""
    return ts.types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                   nanosec=int(stamp_ns % 1_000_000_000))


def header_msg(ts, stamp_ns: int, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=stamp_msg(ts, stamp_ns), frame_id=frame_id)


def image_msg(ts, array: np.ndarray, stamp_ns: int, frame_id: str):
    """sensor_msgs/Image: [H x W x 3] uint8 -> rgb8, [H x W] float32 -> 32FC1 [m], [H x W] uint8 -> mono8."""
    a = np.ascontiguousarray(array)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        encoding = "rgb8"
    elif a.ndim == 2 and a.dtype == np.float32:
        encoding, a = "32FC1", a.astype("<f4", copy=False)
    elif a.ndim == 2 and a.dtype == np.uint8:
        encoding = "mono8"
    else:
        raise ValueError(f"image must be [H x W x 3] uint8, [H x W] float32 or uint8; got {a.shape} {a.dtype}")
    h, w = a.shape[:2]
    return ts.types["sensor_msgs/msg/Image"](
        header=header_msg(ts, stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=a.nbytes // h, data=np.frombuffer(a.tobytes(), dtype=np.uint8))


def camera_info_msg(ts, camera, stamp_ns: int, frame_id: str):
    """sensor_msgs/CameraInfo, plumb_bob with zero distortion, P = [K | 0]."""
    K = camera.K
    P = np.hstack([K, np.zeros((3, 1))])
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=header_msg(ts, stamp_ns, frame_id), height=camera.height, width=camera.width,
        distortion_model="plumb_bob", d=np.zeros(5), k=K.ravel().copy(), r=np.eye(3).ravel(), p=P.ravel(),
        binning_x=0, binning_y=0,
        roi=ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def pose_msg(ts, T: np.ndarray):
    """[4 x 4] -> geometry_msgs/Pose."""
    q = quaternion_from_matrix(T[:3, :3])
    t = T[:3, 3]
    return ts.types["geometry_msgs/msg/Pose"](
        position=ts.types["geometry_msgs/msg/Point"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=ts.types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                             w=float(q[3])))


def pose_stamped_msg(ts, T: np.ndarray, stamp_ns: int, frame_id: str):
    return ts.types["geometry_msgs/msg/PoseStamped"](header=header_msg(ts, stamp_ns, frame_id), pose=pose_msg(ts, T))


def tf_msg(ts, T: np.ndarray, stamp_ns: int, parent: str, child: str):
    """tf2_msgs/TFMessage with one transform parent -> child (T maps child-frame points to parent)."""
    p = pose_msg(ts, T)
    tr = ts.types["geometry_msgs/msg/Transform"](
        translation=ts.types["geometry_msgs/msg/Vector3"](x=p.position.x, y=p.position.y, z=p.position.z),
        rotation=p.orientation)
    stamped = ts.types["geometry_msgs/msg/TransformStamped"](header=header_msg(ts, stamp_ns, parent),
                                                             child_frame_id=child, transform=tr)
    return ts.types["tf2_msgs/msg/TFMessage"](transforms=[stamped])


# ----------------------------------------------------------------------------- bags
def qos(reliable: bool = True, depth: int = 10, transient_local: bool = False):
    """A rosbags Qos profile (recorded in metadata.yaml as the offered QoS)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def open_reader(path):
    """An opened rosbags Reader on ``path``; BagError (one line) when missing or unreadable."""
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if not p.exists():
        raise BagError(f"bag not found: {p}")
    if p.is_dir() and not (p / "metadata.yaml").is_file():
        raise BagError(f"{p} is not a rosbag2 folder (no metadata.yaml)")
    try:
        reader = Reader(p)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign file is a user error here
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BagError(f"cannot read bag {p}: {text}") from None
    if not reader.connections:
        reader.close()
        raise BagError(f"bag {p} has no topics")
    return reader


def open_writer(path, storage: str = "sqlite3"):
    """An opened rosbags Writer for a new bag folder ``path``: rosbag2 metadata version 8, which `ros2 bag` reads
    on Humble, Jazzy and Kilted (version 9 stores the offered QoS as a list that Humble cannot parse)."""
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got '{storage}'")
    p = Path(path)
    if p.exists():
        raise BagError(f"{p} exists already, not overwriting")
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    try:
        writer = Writer(p, version=8, storage_plugin=plugin)
        writer.open()
    except (WriterError, OSError) as exc:
        raise BagError(f"cannot create bag {p}: {exc}") from None
    return writer


def read_topic(path, topic: str, typestore=None) -> list:
    """[(log_time_ns, deserialized message)] of one topic (convenient for tests and small bags)."""
    ts: Optional[object] = typestore or make_typestore()
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, ts.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]
    finally:
        reader.close()
