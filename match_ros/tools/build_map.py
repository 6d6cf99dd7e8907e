"""match_ros_build_map: build a relocalization map from a rosbag2 bag.

The bag needs camera images (sensor_msgs/Image or CompressedImage), camera_info and the camera pose in the map
frame: a PoseStamped topic (e.g. /ground_truth/pose, a SLAM or motion-capture pose of the camera optical frame)
or /tf (map -> camera frame, any chain). Topics are found automatically (or named): an aligned depth image
(32FC1 m / 16UC1 mm) gives exact 3D points; without one, points are triangulated between keyframes with known
poses, and the tool says so. Prints what it used and a summary: keyframes, 3D points, size on disk, time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS

AUTO = "auto"


def build_map_from_bag(bag, out, matcher_name=DEFAULT_MATCHER, max_keypoints=DEFAULT_MAX_KEYPOINTS, device="auto",
                       image_topic=AUTO, info_topic=AUTO, depth_topic=AUTO, pose_topic=AUTO, map_frame="map",
                       use_depth=True, builder_conf=None, progress=True, log=print, matcher_conf=None) -> dict:
    """Build and save a map; returns the summary (keyframes, points, bytes, seconds, topics used).
    matcher_conf: backend settings on top of max_keypoints (evaluation of a backend's setting)."""
    from tqdm import tqdm

    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.mapping import MapBuilder
    from match_ros.tools.bagframes import BagFrames

    t0 = time.monotonic()
    frames = BagFrames(bag, image_topic, info_topic, depth_topic if use_depth else "", pose_topic, map_frame)
    used = frames.describe()
    log(f"images: {used['image']}, camera_info: {used['camera_info']}, poses: "
        f"{used['pose'] or ('/tf ' + map_frame + ' -> camera' if used['tf_map'] else 'NONE')}")
    if used["pose"] is None and not used["tf_map"]:
        raise SystemExit(f"match_ros_build_map: error: no camera pose in {bag}: neither a PoseStamped topic nor "
                         f"/tf with frame '{map_frame}' (name them with --pose-topic / --map-frame)")
    if used["depth"]:
        log(f"depth: {used['depth']} (3D points from depth)")
    elif use_depth:
        log("WARNING: no depth image in the bag: 3D points are TRIANGULATED between keyframes (less accurate; "
            "name a depth topic with --depth-topic if the bag has one)")
    else:
        log("depth ignored (--no-depth): 3D points are triangulated between keyframes")
    dev = resolve_device(device)
    conf = {**shared_conf(matcher_name, max_keypoints=max_keypoints), **(matcher_conf or {})}
    builder = MapBuilder(build_matcher(matcher_name, conf, dev),
                         GlobalDescriptor(device=dev), {"map_frame_id": map_frame, **(builder_conf or {})})
    skipped = 0
    bar = tqdm(frames, desc="map", unit="frame", disable=not progress)
    for f in bar:
        if f.T_map_cam is None:
            skipped += 1
            continue
        builder.add_frame(f.image, f.T_map_cam, f.K, f.stamp_ns, f.depth, f.frame_id)
        bar.set_postfix(keyframes=builder.stats["keyframes"], refresh=False)
    if builder.stats["keyframes"] == 0:
        raise SystemExit("match_ros_build_map: error: no image with a pose: nothing to map")
    if skipped:
        log(f"{skipped} images without a pose at their stamp were skipped")
    m = builder.build()
    m.save(out)
    points = int(sum(np.isfinite(kf.points3d).all(axis=1).sum() for kf in m))
    return {"frames": builder.stats["frames"], "keyframes": len(m), "points3d": points,
            "bytes": Path(out).stat().st_size, "seconds": time.monotonic() - t0, "matcher": m.matcher_identity,
            "topics": used, "depth": bool(used["depth"])}


def main(argv=None) -> int:
    from match_ros.core.features.matcher import available_matchers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    ap.add_argument("out", help="map file to write (SQLite; replaced atomically)")
    ap.add_argument("--matcher", default=DEFAULT_MATCHER, choices=available_matchers(),
                    help="local features (default: the relocalizer's, %(default)s)")
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS, help="keypoints per keyframe")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--image-topic", default=AUTO, help="image topic (Image or CompressedImage; default: found)")
    ap.add_argument("--camera-info-topic", default=AUTO, help="camera_info topic (default: found)")
    ap.add_argument("--depth-topic", default=AUTO, help="aligned depth topic (default: found when present)")
    ap.add_argument("--no-depth", action="store_true", help="ignore depth: triangulate between keyframes")
    ap.add_argument("--pose-topic", default=AUTO,
                    help="PoseStamped of the camera in the map frame (default: found; else /tf is used)")
    ap.add_argument("--map-frame", default="map", help="map frame (for /tf lookups)")
    ap.add_argument("--min-overlap", type=float, default=None,
                    help="new keyframe when the view shares less than this with every keyframe (0-1)")
    args = ap.parse_args(argv)
    from match_ros.tools.bagio import BagError

    conf = {} if args.min_overlap is None else {"min_overlap": args.min_overlap}
    try:
        s = build_map_from_bag(args.bag, args.out, args.matcher, args.max_keypoints, args.device, args.image_topic,
                               args.camera_info_topic, args.depth_topic, args.pose_topic, args.map_frame,
                               not args.no_depth, conf)
    except (BagError, ValueError, OSError) as e:
        print(f"match_ros_build_map: error: {e}", file=sys.stderr)
        return 2
    print(f"map {args.out}: {s['keyframes']} keyframes from {s['frames']} frames, {s['points3d']} 3D points "
          f"({'depth' if s['depth'] else 'triangulated'}), {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s "
          f"({s['matcher']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
