"""What a user looks at in rviz: the nodes' debug images and the map.

- ``DebugImage``: ``~/debug_image`` (sensor_msgs/Image, rgb8), drawn only while someone subscribes (the drawing
  costs a few ms per frame; nothing is drawn on a robot without a viewer).
- ``draw_matches``: reference and query side by side, inliers green, the other matches red, a caption.
- ``draw_keypoints``: one image with its matched keypoints (inliers green, others red) and a caption.
- ``map_messages``: the map as ``geometry_msgs/PoseArray`` (keyframe cameras) and ``sensor_msgs/PointCloud2`` (its
  3D points, xyz float32), published latched (transient local) so that rviz started later still gets them.
"""
from __future__ import annotations

import cv2
import numpy as np

GREEN, RED, WHITE = (40, 220, 40), (230, 40, 40), (255, 255, 255)
MAX_POINTS = 200_000  # of the map cloud


def latched_qos(depth: int = 1):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      reliability=ReliabilityPolicy.RELIABLE)


def _rgb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else np.ascontiguousarray(image)


def _caption(img: np.ndarray, text: str) -> None:
    scale = max(0.45, img.shape[0] / 900)
    for i, line in enumerate(text.split("\n")):
        y = int((20 + 22 * i) * scale / 0.45 * 0.8)
        cv2.putText(img, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, 1, cv2.LINE_AA)


def draw_keypoints(image: np.ndarray, pts: np.ndarray, inliers: np.ndarray | None, text: str = "") -> np.ndarray:
    """[H x W (x 3)] uint8, [N x 2] pixels, [N] bool (None: all red) -> RGB uint8 copy with circles and caption."""
    out = _rgb(image).copy()
    good = np.zeros(len(pts), bool) if inliers is None else np.asarray(inliers, bool)
    for (x, y), ok in zip(np.asarray(pts, np.float64), good):
        cv2.circle(out, (int(round(x)), int(round(y))), 3, GREEN if ok else RED, 1)
    if text:
        _caption(out, text)
    return out


def draw_matches(ref: np.ndarray, query: np.ndarray, pts_ref: np.ndarray, pts_query: np.ndarray,
                 inliers: np.ndarray | None, text: str = "", max_lines: int = 300) -> np.ndarray:
    """Reference | query side by side (the query scaled to the reference's height), a line per match (at most
    max_lines, inliers drawn last so they stay on top), caption on the left."""
    a, b = _rgb(ref), _rgb(query)
    s = a.shape[0] / b.shape[0]
    if s != 1.0:
        b = cv2.resize(b, (int(round(b.shape[1] * s)), a.shape[0]), interpolation=cv2.INTER_AREA)
    out = np.concatenate([a, b], axis=1)
    pr, pq = np.asarray(pts_ref, np.float64), np.asarray(pts_query, np.float64) * s + [a.shape[1], 0]
    good = np.zeros(len(pr), bool) if inliers is None else np.asarray(inliers, bool)
    order = np.concatenate([np.flatnonzero(~good), np.flatnonzero(good)])
    if len(order) > max_lines:
        order = order[np.linspace(0, len(order) - 1, max_lines).astype(int)]
    for i in order:
        color = GREEN if good[i] else RED
        p, q = tuple(int(round(v)) for v in pr[i]), tuple(int(round(v)) for v in pq[i])
        cv2.line(out, p, q, color, 1, cv2.LINE_AA)
        cv2.circle(out, p, 2, color, -1)
        cv2.circle(out, q, 2, color, -1)
    if text:
        _caption(out, text)
    return out


class DebugImage:
    """``~/debug_image``: ``wanted()`` says whether anyone subscribes; ``publish(rgb, header)``."""

    def __init__(self, node, topic: str = "~/debug_image"):
        from sensor_msgs.msg import Image

        self.pub = node.create_publisher(Image, topic, 2)

    def wanted(self) -> bool:
        return self.pub.get_subscription_count() > 0

    def publish(self, rgb: np.ndarray, header) -> None:
        from match_ros.ros.conversions import numpy_to_image

        self.pub.publish(numpy_to_image(rgb, "rgb8", header=header))


def cloud_message(points: np.ndarray, header):
    """[N x 3] float -> sensor_msgs/PointCloud2 (x, y, z float32, dense, little endian)."""
    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.ascontiguousarray(points, "<f4").reshape(-1, 3)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return PointCloud2(header=header, height=1, width=len(pts), fields=fields, is_bigendian=False, point_step=12,
                       row_step=12 * len(pts), data=pts.tobytes(), is_dense=True)


def map_messages(m, header, max_points: int = MAX_POINTS):
    """A map (``core.relocalization.mapstore.Map``) -> (PoseArray of its keyframe cameras, PointCloud2 of its
    points, at most max_points, evenly thinned), both in header.frame_id (the map frame)."""
    from geometry_msgs.msg import PoseArray

    from match_ros.ros.conversions import matrix_to_pose

    keyframes = list(m)
    poses = PoseArray(header=header, poses=[matrix_to_pose(kf.T_world_cam) for kf in keyframes])
    pts = [kf.points3d[np.all(np.isfinite(kf.points3d), axis=1)] for kf in keyframes]
    pts = np.concatenate(pts) if pts else np.zeros((0, 3), np.float32)
    if len(pts) > max_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(int)]
    return poses, cloud_message(pts, header)
