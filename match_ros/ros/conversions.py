"""Arrays -> rclpy messages, and the decoding of ``codec`` (re-exported), with one error type (replaces cv_bridge).

Decoding (image, compressed image, depth, camera_info, stamps, poses) lives in ``match_ros.ros.codec`` and reads
rclpy and rosbags messages alike; this module adds what needs the rclpy message classes.
"""
from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import Image

from match_ros.core.geometry.transforms import quaternion_from_matrix
from match_ros.ros.codec import (ENCODINGS, ConversionError, camera_matrix, compressed_to_numpy,  # noqa: F401
                                 depth_to_numpy, image_to_numpy, pose_to_matrix, stamp_to_ns, transform_to_matrix)


def numpy_to_image(arr: np.ndarray, encoding: str, header=None) -> Image:
    """[H x W] or [H x W x C] array -> Image with the given encoding (data copied as is)."""
    if encoding not in ENCODINGS:
        raise ConversionError(f"unsupported encoding '{encoding}'")
    channels, dtype = ENCODINGS[encoding]
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ConversionError(f"array of shape {arr.shape} does not fit encoding {encoding}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * arr.dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def matrix_to_pose(T: np.ndarray) -> Pose:
    q = quaternion_from_matrix(T[:3, :3])
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
    p.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return p


def matrix_to_transform(T: np.ndarray, header, child_frame_id: str) -> TransformStamped:
    q = quaternion_from_matrix(T[:3, :3])
    ts = TransformStamped()
    ts.header = header
    ts.child_frame_id = child_frame_id
    ts.transform = Transform(translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                             rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
    return ts


def correspondence_set(result, header, matcher_name: str):
    """core.frontend.TrackResult -> match_ros/CorrespondenceSet stamped with the query header."""
    from match_ros.msg import Correspondence, CorrespondenceSet

    msg = CorrespondenceSet()
    msg.header = header
    kf = result.keyframe
    msg.reference_stamp = ns_to_stamp(kf.stamp_ns)
    msg.reference_frame_id = kf.frame_id
    msg.reference_id = int(kf.id)
    msg.query_id = int(result.query_id)
    msg.matcher = matcher_name
    msg.num_keypoints_ref = len(kf.features)
    msg.num_keypoints_query = int(result.num_query_keypoints)
    m = result.matches
    inl = result.pose.inliers if len(result.pose.inliers) == len(m) else np.zeros(len(m), bool)
    dist = m.distinctiveness if m.distinctiveness is not None else np.full(len(m), math.nan, np.float32)
    rows = zip(result.pts_ref.tolist(), result.pts_query.tolist(), m.indices.tolist(),
               m.scores.tolist(), dist.tolist(), inl.tolist())
    corr = []
    for (xr, yr), (xq, yq), (ir, iq), s, d, ok in rows:
        c = Correspondence()
        c.x_ref, c.y_ref, c.x_query, c.y_query = xr, yr, xq, yq
        c.index_ref, c.index_query, c.score, c.distinctiveness, c.inlier = ir, iq, s, d, ok
        corr.append(c)
    msg.correspondences = corr
    pose = result.pose
    msg.pose_valid = bool(pose.valid)
    msg.relative_pose = matrix_to_pose(pose.T_ref_query)
    msg.scale_known = bool(pose.scale_known)
    msg.num_inliers = int(pose.num_inliers)
    msg.parallax_deg = float(pose.parallax_deg)
    msg.is_keyframe = bool(result.is_keyframe)
    return msg


def correspondence_arrays(msg) -> dict:
    """CorrespondenceSet -> dict of numpy arrays (pts_ref [M x 2], pts_query [M x 2], scores, inliers, ...)."""
    c = msg.correspondences
    return {
        "pts_ref": np.array([[x.x_ref, x.y_ref] for x in c], np.float64).reshape(-1, 2),
        "pts_query": np.array([[x.x_query, x.y_query] for x in c], np.float64).reshape(-1, 2),
        "indices": np.array([[x.index_ref, x.index_query] for x in c], np.int64).reshape(-1, 2),
        "scores": np.array([x.score for x in c], np.float32),
        "distinctiveness": np.array([x.distinctiveness for x in c], np.float32),
        "inliers": np.array([x.inlier for x in c], bool),
    }
