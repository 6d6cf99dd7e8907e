"""What rviz shows, saved as images from a real run: ``python -m match_ros.evaluation.rviz_snapshots --out DIR``.

Renders the room scene (mapping bag with depth, changed-day query frames), builds its map, starts the relocalizer
and the keyframe_matcher in a real ROS 2 graph (loopback, a free domain id), feeds them frames and saves:

- ``relocalizer_debug_image.png``: the relocalizer's ~/debug_image for a changed-day query (inliers green);
- ``keyframe_matcher_debug_image.png``: the keyframe_matcher's ~/debug_image (keyframe | frame);
- ``map.png``: the map as the relocalizer publishes it (~/map_keyframes, ~/map_points), seen from above and
  from the side, with the fix of that query and the ground truth.

The figures printed (inliers, fix error against the ground truth) are from the same run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER


def _save_rgb(msg, path: Path) -> np.ndarray:
    import cv2

    img = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return img


def _plot_map(keyframes, cloud, fix, truth, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from match_ros.ros.conversions import pose_to_matrix

    pts = np.frombuffer(bytes(cloud.data), "<f4").reshape(-1, 3)
    cams = np.array([pose_to_matrix(p)[:3, 3] for p in keyframes.poses])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (i, j, name) in zip(axes, ((0, 1, "from above (x, y)"), (0, 2, "from the side (x, z)"))):
        ax.scatter(pts[:, i], pts[:, j], s=0.3, c="0.55", label=f"map points ({len(pts)})")
        ax.plot(cams[:, i], cams[:, j], "o-", ms=3, lw=0.8, c="tab:blue", label=f"keyframes ({len(cams)})")
        ax.plot(truth[i], truth[j], "x", ms=10, mew=2, c="tab:green", label="query: ground truth")
        ax.plot(fix[i], fix[j], "+", ms=12, mew=2, c="tab:red", label="query: relocalizer fix")
        ax.set_title(name)
        ax.set_xlabel(["x", "y", "z"][i] + " [m]")
        ax.set_ylabel(["x", "y", "z"][j] + " [m]")
        ax.axis("equal")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle("match_ros map as published on ~/map_keyframes and ~/map_points (room scene)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, matcher: str = "xfeat_lighterglue") -> dict:
    from geometry_msgs.msg import PoseArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from match_ros.core.geometry.transforms import rotation_error_deg
    from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, free_domain_id, spin_until
    from match_ros.evaluation.reloc_scenes import make_query_sequence, scene_bags
    from match_ros.ros import conversions as conv
    from match_ros.ros.visuals import latched_qos
    from match_ros.srv import Relocalize
    from match_ros.tools.build_map import build_map_from_bag

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    map_bag, _ = scene_bags(work, "room", "changed_day", map_frames=180, query_frames=20, progress=False)
    db = work / f"room_{matcher}.db"
    if not db.exists():
        build_map_from_bag(map_bag, db, matcher, progress=False, log=lambda *_: None)
    seq = make_query_sequence("room", 20, kind="changed_day")
    confine_to_loopback(free_domain_id())
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("match_ros_rviz_snapshots", context=ctx)
    got: dict = {"keyframes": [], "points": [], "reloc": [], "kf": []}
    node.create_subscription(PoseArray, "/relocalizer/map_keyframes", got["keyframes"].append, latched_qos())
    node.create_subscription(PointCloud2, "/relocalizer/map_points", got["points"].append, latched_qos())
    node.create_subscription(Image, "/relocalizer/debug_image", got["reloc"].append, 2)
    node.create_subscription(Image, "/keyframe_matcher/debug_image", got["kf"].append, 2)
    image_pub = node.create_publisher(Image, "/camera/image_raw", 10)
    info_pub = node.create_publisher(CameraInfo, "/camera/camera_info", 10)
    reloc = node.create_client(Relocalize, "/relocalizer/relocalize")
    remaps = {"image": "/camera/image_raw", "camera_info": "/camera/camera_info"}
    figures: dict = {}

    def frame_messages(i):
        f = seq[i]
        info = CameraInfo(k=seq.camera.K.ravel().tolist(), width=640, height=480)
        info.header.stamp, info.header.frame_id = conv.ns_to_stamp(f.stamp_ns), "camera_optical_frame"
        return info, conv.numpy_to_image(f.rgb, "rgb8", header=info.header)

    try:
        params = {"map_path": str(db.absolute()), "matcher": matcher, "mode": "on_request", "image_qos": "reliable"}
        with NodeProcess("match_ros.nodes.relocalizer", params, remaps) as proc:
            if not spin_until(node, lambda: reloc.service_is_ready() and got["points"], 120):
                raise RuntimeError(f"relocalizer did not come up:\n{proc.log()[-2000:]}")
            q = 8
            future = reloc.call_async(Relocalize.Request(timeout_s=10.0))
            info, img = frame_messages(q)
            for _ in range(40):
                info_pub.publish(info)
                image_pub.publish(img)
                if spin_until(node, future.done, 0.5):
                    break
            spin_until(node, lambda: bool(got["reloc"]), 5)
            r = future.result()
            if r is None or not r.success or not got["reloc"]:
                raise RuntimeError(f"no fix: {r}\n{proc.log()[-2000:]}")
            T, G = conv.pose_to_matrix(r.pose.pose.pose), seq[q].T_world_cam
            figures.update(query=q, inliers=int(r.num_inliers), fix_error_m=float(np.linalg.norm(T[:3, 3] - G[:3, 3])),
                           fix_error_deg=float(rotation_error_deg(T[:3, :3], G[:3, :3])))
            _save_rgb(got["reloc"][-1], out / "relocalizer_debug_image.png")
            _plot_map(got["keyframes"][-1], got["points"][-1], T[:3, 3], G[:3, 3], out / "map.png")
        with NodeProcess("match_ros.nodes.keyframe_matcher", {"matcher": matcher, "image_qos": "reliable"},
                         remaps) as proc:
            if not spin_until(node, lambda: image_pub.get_subscription_count() > 0, 120):
                raise RuntimeError(f"keyframe_matcher did not come up:\n{proc.log()[-2000:]}")
            time.sleep(1.0)
            for i in (0, 3):
                info, img = frame_messages(i)
                info_pub.publish(info)
                image_pub.publish(img)
                spin_until(node, lambda: False, 1.5)
            if not spin_until(node, lambda: bool(got["kf"]), 10):
                raise RuntimeError(f"no debug image from keyframe_matcher:\n{proc.log()[-2000:]}")
            _save_rgb(got["kf"][-1], out / "keyframe_matcher_debug_image.png")
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m match_ros.evaluation.rviz_snapshots",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/rviz_snapshots", help="folder for the images (and the cached bags)")
    parser.add_argument("--matcher", default=DEFAULT_MATCHER, help="matching backend (default: the nodes')")
    args = parser.parse_args(argv)
    figures = run(Path(args.out), args.matcher)
    print(f"query frame {figures['query']}: {figures['inliers']} inliers, fix {100 * figures['fix_error_m']:.1f} cm /"
          f" {figures['fix_error_deg']:.2f} deg from the ground truth; images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
