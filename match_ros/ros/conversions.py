"""Arrays -> rclpy messages, and the decoding of ``codec`` (re-exported), with one error type (replaces cv_bridge).

Decoding (image, compressed image, depth, camera_info, stamps, poses) lives in ``match_ros.ros.codec`` and reads
rclpy and rosbags messages alike; this module adds what needs the rclpy message classes.
"""
from __future__ import annotations

import array
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


def correspondence_message(header, matcher: str, matches, pts_ref: np.ndarray, pts_query: np.ndarray,
                           inliers: np.ndarray, *, reference_stamp_ns: int, reference_frame_id: str, reference_id: int,
                           query_id: int, num_keypoints_ref: int, num_keypoints_query: int, pose_valid: bool,
                           T_ref_query: np.ndarray, scale_known: bool, num_inliers: int, parallax_deg: float = 0.0,
                           is_keyframe: bool = False, translation_valid: bool = True, pose_reason: str = "",
                           covariance: np.ndarray | None = None):
    """match_ros/CorrespondenceSet from arrays: matches (core Matches, indices [M x 2] = (reference, query)),
    pts_ref / pts_query [M x 2] pixels, inliers [M] bool; stamped with the query image's header."""
    from match_ros.msg import CorrespondenceSet

    msg = CorrespondenceSet(header=header, reference_stamp=ns_to_stamp(reference_stamp_ns),
                            reference_frame_id=reference_frame_id, reference_id=int(reference_id),
                            query_id=int(query_id), matcher=matcher, num_keypoints_ref=int(num_keypoints_ref),
                            num_keypoints_query=int(num_keypoints_query))
    m = matches
    n = len(m)
    inl = inliers if len(inliers) == n else np.zeros(n, bool)
    dist = m.distinctiveness if m.distinctiveness is not None else np.full(n, math.nan, np.float32)
    msg.points_ref = _array("f", np.asarray(pts_ref).reshape(n, 2))
    msg.points_query = _array("f", np.asarray(pts_query).reshape(n, 2))
    msg.index_ref, msg.index_query = _array("I", m.indices[:, 0]), _array("I", m.indices[:, 1])
    msg.score, msg.distinctiveness = _array("f", m.scores), _array("f", dist)
    msg.inlier = np.asarray(inl, bool).tolist()
    msg.pose_valid = bool(pose_valid)
    msg.relative_pose = matrix_to_pose(T_ref_query)
    msg.scale_known = bool(scale_known)
    msg.translation_valid = bool(translation_valid)
    msg.pose_reason = str(pose_reason)
    if covariance is not None:
        msg.relative_pose_covariance = [float(x) for x in np.asarray(covariance, np.float64).ravel()]
    msg.num_inliers = int(num_inliers)
    msg.parallax_deg = float(parallax_deg)
    msg.is_keyframe = bool(is_keyframe)
    return msg


def correspondence_set(result, header, matcher_name: str):
    """core.tracking.TrackResult -> match_ros/CorrespondenceSet stamped with the query header."""
    kf, pose = result.keyframe, result.pose
    return correspondence_message(
        header, matcher_name, result.matches, result.pts_ref, result.pts_query, pose.inliers,
        reference_stamp_ns=kf.stamp_ns, reference_frame_id=kf.frame_id, reference_id=kf.id, query_id=result.query_id,
        num_keypoints_ref=len(kf.features), num_keypoints_query=result.num_query_keypoints, pose_valid=pose.valid,
        T_ref_query=pose.T_ref_query, scale_known=pose.scale_known, num_inliers=pose.num_inliers,
        parallax_deg=pose.parallax_deg, is_keyframe=result.is_keyframe, translation_valid=pose.translation_valid,
        pose_reason=pose.reason, covariance=pose.covariance if pose.valid else None)


def correspondence_arrays(msg) -> dict:
    """CorrespondenceSet -> dict of numpy arrays (pts_ref [M x 2], pts_query [M x 2], scores, inliers, ...)."""
    return {
        "pts_ref": np.asarray(msg.points_ref, np.float64).reshape(-1, 2),
        "pts_query": np.asarray(msg.points_query, np.float64).reshape(-1, 2),
        "indices": np.column_stack([np.asarray(msg.index_ref, np.int64), np.asarray(msg.index_query, np.int64)]),
        "scores": np.asarray(msg.score, np.float32),
        "distinctiveness": np.asarray(msg.distinctiveness, np.float32),
        "inliers": np.asarray(msg.inlier, bool),
    }


def _array(typecode: str, values: np.ndarray) -> array.array:
    """A numpy array as the array.array rclpy keeps for a primitive sequence field (one copy, no per-item work)."""
    dtype = {"f": np.float32, "I": np.uint32}[typecode]
    out = array.array(typecode)
    out.frombytes(np.ascontiguousarray(values, dtype).tobytes())
    return out
