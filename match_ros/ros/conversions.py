"""All message <-> array conversions, with one error type (replaces cv_bridge).

sensor_msgs/Image -> numpy follows REP 104 encodings; only the encodings the
matchers can use are accepted, every other input raises ConversionError with
a message saying what was wrong.
"""
from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, Image

from match_ros.core.geometry.transforms import matrix_from_quaternion, quaternion_from_matrix


class ConversionError(ValueError):
    """A message could not be converted; the text says why."""


# encoding -> (channels, numpy dtype); colour images come out as RGB
_ENCODINGS = {
    "rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "rgba8": (4, np.uint8), "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8), "8UC1": (1, np.uint8), "8UC3": (3, np.uint8),
    "mono16": (1, np.uint16), "16UC1": (1, np.uint16), "32FC1": (1, np.float32),
}


def _image_array(msg: Image) -> np.ndarray:
    """Image message -> [H x W x C] array in the message's own encoding and dtype."""
    if msg.encoding not in _ENCODINGS:
        raise ConversionError(f"unsupported encoding '{msg.encoding}', expected one of {sorted(_ENCODINGS)}")
    channels, dtype = _ENCODINGS[msg.encoding]
    if msg.width == 0 or msg.height == 0:
        raise ConversionError(f"empty image ({msg.width}x{msg.height})")
    row_bytes = msg.width * channels * np.dtype(dtype).itemsize
    if msg.step < row_bytes:
        raise ConversionError(f"step {msg.step} < width*channels*bytes {row_bytes} for {msg.encoding}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != msg.step * msg.height:
        raise ConversionError(f"data has {data.size} bytes, expected step*height = {msg.step * msg.height}")
    rows = data.reshape(msg.height, msg.step)[:, :row_bytes]
    wire = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(wire).astype(dtype, copy=False)  # to native byte order
    return arr.reshape(msg.height, msg.width, channels)


def image_to_numpy(msg: Image) -> np.ndarray:
    """Image -> uint8 [H x W] (mono) or [H x W x 3] RGB for the matchers.

    16-bit mono images are scaled to 8 bit by their maximum; depth-like float
    images are rejected (use depth_to_numpy).
    """
    if msg.encoding == "32FC1":
        raise ConversionError("32FC1 is a depth encoding, not a camera image")
    arr = _image_array(msg)
    enc = msg.encoding
    if enc in ("bgr8", "bgra8"):
        arr = arr[:, :, 2::-1]
    elif enc in ("rgba8",):
        arr = arr[:, :, :3]
    if arr.dtype == np.uint16:
        top = max(int(arr.max()), 1)
        arr = (arr.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return np.ascontiguousarray(arr)


def depth_to_numpy(msg: Image) -> np.ndarray:
    """Depth image (32FC1 metres or 16UC1/mono16 millimetres) -> float32 [H x W] metres, 0 = invalid."""
    if msg.encoding not in ("32FC1", "16UC1", "mono16"):
        raise ConversionError(f"unsupported depth encoding '{msg.encoding}' (32FC1, 16UC1)")
    arr = _image_array(msg)[:, :, 0].astype(np.float32)
    if msg.encoding != "32FC1":
        arr *= 1e-3
    arr[~np.isfinite(arr)] = 0.0
    return arr


def numpy_to_image(arr: np.ndarray, encoding: str, header=None) -> Image:
    """[H x W] or [H x W x C] array -> Image with the given encoding (data copied as is)."""
    if encoding not in _ENCODINGS:
        raise ConversionError(f"unsupported encoding '{encoding}'")
    channels, dtype = _ENCODINGS[encoding]
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


def camera_matrix(info: CameraInfo) -> np.ndarray:
    """CameraInfo -> [3 x 3] K. Raises ConversionError for an uncalibrated (zero) K.

    Distortion (info.d) is not applied: the matchers and the pose solver work on
    the image as received, so feed rectified images (image_rect) for exact poses.
    """
    K = np.array(info.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
        raise ConversionError(f"camera_info has no valid K (fx={K[0, 0]}, fy={K[1, 1]})")
    return K


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def matrix_to_pose(T: np.ndarray) -> Pose:
    q = quaternion_from_matrix(T[:3, :3])
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
    p.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return p


def pose_to_matrix(p: Pose) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])
    T[:3, 3] = [p.position.x, p.position.y, p.position.z]
    return T


def matrix_to_transform(T: np.ndarray, header, child_frame_id: str) -> TransformStamped:
    q = quaternion_from_matrix(T[:3, :3])
    ts = TransformStamped()
    ts.header = header
    ts.child_frame_id = child_frame_id
    ts.transform = Transform(translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                             rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
    return ts


def transform_to_matrix(t: Transform) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion([t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])
    T[:3, 3] = [t.translation.x, t.translation.y, t.translation.z]
    return T


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
