"""match_ros_bag_write: write a rosbag2 bag (sqlite3 or mcap) of a ground-truth camera sequence.

The sequence is rendered on the fly (--scene/--trajectory/--frames ...) or read from a folder
written by match_ros_render (--from-folder). Per frame, all with the frame's stamp (header stamp
= bag log time):
  /camera/image_raw    sensor_msgs/msg/Image       rgb8, frame_id camera_optical_frame
  /camera/camera_info  sensor_msgs/msg/CameraInfo  plumb_bob, zero distortion
  /camera/depth        sensor_msgs/msg/Image       32FC1 z-depth [m], 0 = no surface (with --depth)
  /ground_truth/pose   geometry_msgs/msg/PoseStamped  optical frame pose in frame map
  /tf                  tf2_msgs/msg/TFMessage      map -> camera_optical_frame (ground truth)
Pure: no rclpy (rosbags serialises the messages).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from match_ros.tools.bagio import (STORAGES, BagError, camera_info_msg, image_msg, make_typestore, open_writer,
                                   pose_stamped_msg, qos, tf_msg)


@dataclass(frozen=True)
class BagLayout:
    """Topic names and frame ids of a written bag; an empty topic name leaves that topic out."""

    image: str = "/camera/image_raw"
    camera_info: str = "/camera/camera_info"
    depth: str = "/camera/depth"
    pose: str = "/ground_truth/pose"
    tf: str = "/tf"
    camera_frame: str = "camera_optical_frame"
    map_frame: str = "map"
    tf_frame: str = ""                    # parent frame of /tf (empty: map_frame), e.g. "odom"
    T_tf_map: Optional[np.ndarray] = None  # [4 x 4] pose of map_frame in tf_frame (None: identity)
    pose_delay_ns: int = 0                # the pose topic is recorded this long after its image (a late mocap/SLAM)


def _frame_message(ts, key: str, frame, camera, layout: BagLayout, T_tf_cam=None):
    t, fid = frame.stamp_ns, layout.camera_frame
    if key == "image":
        return image_msg(ts, frame.rgb, t, fid)
    if key == "camera_info":
        return camera_info_msg(ts, camera, t, fid)
    if key == "depth":
        if frame.depth is None:
            raise ValueError("depth requested but the sequence has no depth")
        return image_msg(ts, frame.depth, t, fid)
    if key == "pose":
        return pose_stamped_msg(ts, frame.T_world_cam, t, layout.map_frame)
    if T_tf_cam is None:
        T_tf_cam = frame.T_world_cam if layout.T_tf_map is None else layout.T_tf_map @ frame.T_world_cam
    return tf_msg(ts, T_tf_cam, t, layout.tf_frame or layout.map_frame, fid)


def write_sequence_bag(path, sequence, *, storage: str = "sqlite3", with_depth: bool = False,
                       layout: BagLayout = BagLayout(), typestore=None, progress: bool = False,
                       tf_poses: Optional[list] = None) -> dict:
    """Write ``sequence`` (camera, len(), seq[i] -> Frame) into a new bag folder ``path``.

    tf_poses: one [4 x 4] per frame, the camera pose the /tf message carries (e.g. drifting odometry);
    None: the ground truth (moved by layout.T_tf_map).

    Returns {topic: message count}. Raises BagError when the bag cannot be created, ValueError
    when depth is asked for but the sequence has none. On failure the partial bag is removed.
    """
    from tqdm import tqdm

    if not layout.image:
        raise ValueError("the image topic cannot be left out")
    ts = typestore or make_typestore()
    wanted = {
        "image": (layout.image, "sensor_msgs/msg/Image", qos(True, 10)),
        "camera_info": (layout.camera_info, "sensor_msgs/msg/CameraInfo", qos(True, 10)),
        "depth": (layout.depth if with_depth else "", "sensor_msgs/msg/Image", qos(True, 10)),
        "pose": (layout.pose, "geometry_msgs/msg/PoseStamped", qos(True, 10)),
        "tf": (layout.tf, "tf2_msgs/msg/TFMessage", qos(True, 100)),
    }
    topics = [topic for topic, _, _ in wanted.values() if topic]
    if len(set(topics)) != len(topics):
        raise ValueError(f"topic names must differ, got {topics}")
    writer = open_writer(path, storage)
    try:
        conns = {key: writer.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=[profile])
                 for key, (topic, msgtype, profile) in wanted.items() if topic}
        if tf_poses is not None and len(tf_poses) != len(sequence):
            raise ValueError(f"{len(tf_poses)} tf poses for {len(sequence)} frames")
        for i, frame in enumerate(tqdm(sequence, total=len(sequence), desc="bag", unit="frame", disable=not progress)):
            for key, c in conns.items():
                msg = _frame_message(ts, key, frame, sequence.camera, layout,
                                     None if tf_poses is None else tf_poses[i])
                delay = layout.pose_delay_ns if key == "pose" else 0
                writer.write(c, frame.stamp_ns + delay, ts.serialize_cdr(msg, c.msgtype))
    except BaseException:
        try:
            writer.close()
        finally:
            shutil.rmtree(path, ignore_errors=True)
        raise
    writer.close()
    return {c.topic: writer.counts[c.id] for c in conns.values()}


def main(argv=None) -> int:
    from match_ros.tools.render import FolderSequence, add_sequence_arguments, sequence_from_args

    parser = argparse.ArgumentParser(prog="match_ros_bag_write", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="output bag folder (must not exist unless --force)")
    parser.add_argument("--storage", choices=STORAGES, default="sqlite3", help="rosbag2 storage (default: sqlite3)")
    parser.add_argument("--from-folder", metavar="DIR", default=None,
                        help="read the sequence from a match_ros_render folder instead of rendering it")
    parser.add_argument("--depth", action="store_true", help="also write the depth topic (32FC1, metres)")
    parser.add_argument("--force", action="store_true", help="replace an existing bag folder at BAG")
    d = BagLayout()
    t = parser.add_argument_group("topics and frames (an empty topic name leaves the topic out)")
    t.add_argument("--image-topic", default=d.image, help=f"rgb8 image topic (default: {d.image})")
    t.add_argument("--camera-info-topic", default=d.camera_info, help=f"CameraInfo topic (default: {d.camera_info})")
    t.add_argument("--depth-topic", default=d.depth, help=f"depth image topic (default: {d.depth})")
    t.add_argument("--pose-topic", default=d.pose, help=f"ground-truth PoseStamped topic (default: {d.pose})")
    t.add_argument("--tf-topic", default=d.tf, help=f"ground-truth TF topic (default: {d.tf})")
    t.add_argument("--camera-frame", default=d.camera_frame,
                   help=f"frame_id of the images, child frame of the TF (default: {d.camera_frame})")
    t.add_argument("--map-frame", default=d.map_frame, help=f"frame of the ground-truth pose (default: {d.map_frame})")
    add_sequence_arguments(parser)
    args = parser.parse_args(argv)
    layout = BagLayout(args.image_topic, args.camera_info_topic, args.depth_topic, args.pose_topic, args.tf_topic,
                       args.camera_frame, args.map_frame)
    out = Path(args.bag)
    try:
        if out.exists() and args.force:
            if not (out.is_dir() and (out / "metadata.yaml").is_file()):
                raise BagError(f"{out} exists and is not a rosbag2 folder; not replacing it")
            shutil.rmtree(out)
        sequence = FolderSequence(args.from_folder) if args.from_folder else sequence_from_args(args)
        counts = write_sequence_bag(out, sequence, storage=args.storage, with_depth=args.depth, layout=layout,
                                    progress=True)
    except (BagError, ValueError, OSError) as exc:
        print(f"match_ros_bag_write: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.storage}): " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
