"""match_ros_build_map: build a relocalization map from a rosbag2 bag.

The bag needs images, camera_info and the camera pose in the map frame, from a
PoseStamped topic (e.g. /ground_truth/pose, a SLAM or motion-capture pose of
the camera optical frame) or from /tf (map -> camera frame, any chain);
optionally aligned depth (32FC1 m / 16UC1 mm) for exact 3D points, otherwise
points are triangulated between keyframes with known poses.
Prints a summary: keyframes, 3D points, size on disk, time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def read_posed_frames(bag, image_topic, info_topic, depth_topic, pose_topic, map_frame):
    """Yield (stamp_ns, rgb, K, T_map_cam, depth or None) for every image with a pose."""
    from match_ros.ros.tf_buffer import TfBuffer, TfLookupError
    from match_ros.tools.bagio import image_from_msg, make_typestore, open_reader, pose_from_msg, stamp_ns_of

    ts = make_typestore()
    reader = open_reader(bag)
    try:
        topics = {c.topic for c in reader.connections}
        for t in (image_topic, info_topic):
            if t not in topics:
                raise SystemExit(f"match_ros_build_map: error: topic {t} not in the bag ({sorted(topics)})")
        use_tf = pose_topic not in topics
        if use_tf and "/tf" not in topics:
            raise SystemExit(f"match_ros_build_map: error: neither {pose_topic} nor /tf in the bag")
        tf, poses, K, depths, images = TfBuffer(cache_time_s=1e6), {}, None, {}, []
        wanted = [c for c in reader.connections if c.topic in
                  {image_topic, info_topic, depth_topic, pose_topic, "/tf", "/tf_static"}]
        for c, _, raw in reader.messages(connections=wanted):
            msg = ts.deserialize_cdr(raw, c.msgtype)
            if c.topic == image_topic:
                images.append((stamp_ns_of(msg.header.stamp), msg.header.frame_id, image_from_msg(msg)))
            elif c.topic == info_topic and K is None:
                K = np.array(msg.k, np.float64).reshape(3, 3)
            elif c.topic == depth_topic:
                depths[stamp_ns_of(msg.header.stamp)] = image_from_msg(msg)
            elif c.topic == pose_topic:
                poses[stamp_ns_of(msg.header.stamp)] = pose_from_msg(msg.pose)
            elif c.topic in ("/tf", "/tf_static") and use_tf:
                for tr in msg.transforms:
                    tf.set_transform(tr.header.frame_id, tr.child_frame_id, stamp_ns_of(tr.header.stamp),
                                     pose_from_msg(tr.transform), static=c.topic == "/tf_static")
    finally:
        reader.close()
    if K is None:
        raise SystemExit("match_ros_build_map: error: no camera_info in the bag")
    for stamp, frame_id, rgb in images:
        if use_tf:
            try:
                T = tf.lookup(map_frame, frame_id, stamp)
            except TfLookupError:
                continue
        elif stamp in poses:
            T = poses[stamp]
        else:
            continue
        depth = depths.get(stamp)
        if depth is not None and depth.dtype == np.uint16:
            depth = depth.astype(np.float32) * 1e-3
        yield stamp, rgb, K, T, depth


def build_map_from_bag(bag, out, matcher_name="orb_teblid", max_keypoints=1024, device="auto",
                       image_topic="/camera/image_raw", info_topic="/camera/camera_info",
                       depth_topic="/camera/depth", pose_topic="/ground_truth/pose", map_frame="map",
                       use_depth=True, builder_conf=None, progress=True) -> dict:
    """Build and save a map; returns the summary (keyframes, points, bytes, seconds)."""
    from tqdm import tqdm

    from match_ros.core.device import resolve_device
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.mapping import MapBuilder
    from match_ros.core.features.matcher import build_matcher

    t0 = time.monotonic()
    dev = resolve_device(device)
    builder = MapBuilder(build_matcher(matcher_name, {"max_keypoints": max_keypoints}, dev),
                         GlobalDescriptor(device=dev), {"map_frame_id": map_frame, **(builder_conf or {})})
    frames = read_posed_frames(bag, image_topic, info_topic, depth_topic if use_depth else "", pose_topic, map_frame)
    bar = tqdm(frames, desc="map", unit="frame", disable=not progress)
    for stamp, rgb, K, T, depth in bar:
        builder.add_frame(rgb, T, K, stamp, depth)
        bar.set_postfix(keyframes=builder.stats["keyframes"], refresh=False)
    if builder.stats["keyframes"] == 0:
        raise SystemExit("match_ros_build_map: error: no image with a pose: nothing to map")
    m = builder.build()
    m.save(out)
    points = int(sum(np.isfinite(kf.points3d).all(axis=1).sum() for kf in m))
    return {"frames": builder.stats["frames"], "keyframes": len(m), "points3d": points,
            "bytes": Path(out).stat().st_size, "seconds": time.monotonic() - t0, "matcher": m.matcher_identity}


def main(argv=None) -> int:
    from match_ros.core.features.matcher import available_matchers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    ap.add_argument("out", help="map file to write (SQLite; replaced atomically)")
    ap.add_argument("--matcher", default="orb_teblid", choices=available_matchers(), help="local features")
    ap.add_argument("--max-keypoints", type=int, default=1024, help="keypoints per keyframe")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--image-topic", default="/camera/image_raw", help="image topic")
    ap.add_argument("--camera-info-topic", default="/camera/camera_info", help="camera_info topic")
    ap.add_argument("--depth-topic", default="/camera/depth", help="aligned depth topic (used when present)")
    ap.add_argument("--no-depth", action="store_true", help="ignore depth: triangulate between keyframes")
    ap.add_argument("--pose-topic", default="/ground_truth/pose",
                    help="PoseStamped of the camera in the map frame; when absent from the bag, /tf is used")
    ap.add_argument("--map-frame", default="map", help="map frame (for /tf lookups)")
    ap.add_argument("--min-translation", type=float, default=0.25, help="keyframe spacing [m]")
    ap.add_argument("--min-rotation", type=float, default=10.0, help="keyframe spacing [deg]")
    args = ap.parse_args(argv)
    from match_ros.tools.bagio import BagError

    try:
        s = build_map_from_bag(args.bag, args.out, args.matcher, args.max_keypoints, args.device, args.image_topic,
                               args.camera_info_topic, args.depth_topic, args.pose_topic, args.map_frame,
                               not args.no_depth, {"min_translation_m": args.min_translation,
                                                   "min_rotation_deg": args.min_rotation})
    except BagError as e:
        print(f"match_ros_build_map: error: {e}", file=sys.stderr)
        return 2
    print(f"map {args.out}: {s['keyframes']} keyframes from {s['frames']} frames, {s['points3d']} 3D points, "
          f"{s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s ({s['matcher']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
