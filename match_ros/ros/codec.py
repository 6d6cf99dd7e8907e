"""Decoding ROS messages into arrays: one codec for rclpy messages and for ``rosbags`` messages.

Both kinds carry the same field names (``msg.header.stamp.sec``, ``msg.data``, ``msg.k``...), so every function
here reads either; nothing imports rclpy, and tools that read bags use the same code as the nodes (replaces
cv_bridge). Every malformed input raises ``ConversionError`` (a ValueError) saying what is wrong.

Images come out as the matchers want them: uint8 RGB [H x W x 3] or mono [H x W]; depth as float32 metres
[H x W] (0 = invalid). ``sensor_msgs/CompressedImage`` (image_transport's ``compressed`` plugin: jpeg / png)
decodes to the same arrays.
"""
from __future__ import annotations

import cv2
import numpy as np

from match_ros.core.geometry.transforms import matrix_from_quaternion


class ConversionError(ValueError):
    """A message could not be converted; the text says why."""


# encoding -> (channels, numpy dtype); colour images come out as RGB
ENCODINGS = {
    "rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "rgba8": (4, np.uint8), "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8), "8UC1": (1, np.uint8), "8UC3": (3, np.uint8),
    "mono16": (1, np.uint16), "16UC1": (1, np.uint16), "32FC1": (1, np.float32),
}
DEPTH_ENCODINGS = ("32FC1", "16UC1", "mono16")


def _bytes(data) -> np.ndarray:
    """msg.data (bytes, array.array, list or numpy array) -> uint8 numpy view."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
    if isinstance(data, list):
        return np.asarray(data, np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_array(msg) -> np.ndarray:
    """sensor_msgs/Image -> [H x W x C] array in the message's own encoding and dtype (native byte order)."""
    if msg.encoding not in ENCODINGS:
        raise ConversionError(f"unsupported encoding '{msg.encoding}', expected one of {sorted(ENCODINGS)}")
    channels, dtype = ENCODINGS[msg.encoding]
    if msg.width == 0 or msg.height == 0:
        raise ConversionError(f"empty image ({msg.width}x{msg.height})")
    row_bytes = msg.width * channels * np.dtype(dtype).itemsize
    if msg.step < row_bytes:
        raise ConversionError(f"step {msg.step} < width*channels*bytes {row_bytes} for {msg.encoding}")
    data = _bytes(msg.data)
    if data.size != msg.step * msg.height:
        raise ConversionError(f"data has {data.size} bytes, expected step*height = {msg.step * msg.height}")
    rows = data.reshape(msg.height, msg.step)[:, :row_bytes]
    wire = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(wire).astype(dtype, copy=False)  # to native byte order
    return arr.reshape(msg.height, msg.width, channels)


def image_to_numpy(msg) -> np.ndarray:
    """sensor_msgs/Image -> uint8 [H x W] (mono) or [H x W x 3] RGB for the matchers.

    16-bit mono images are scaled to 8 bit by their maximum; depth-like float images are rejected.
    """
    if msg.encoding == "32FC1":
        raise ConversionError("32FC1 is a depth encoding, not a camera image")
    arr = image_array(msg)
    if msg.encoding in ("bgr8", "bgra8"):
        arr = arr[:, :, 2::-1]
    elif msg.encoding == "rgba8":
        arr = arr[:, :, :3]
    if arr.dtype == np.uint16:
        top = max(int(arr.max()), 1)
        arr = (arr.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()  # a view of the message's bytes is read-only


def compressed_to_numpy(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, image_transport 'compressed') -> uint8 RGB or mono.

    The format field is e.g. "jpeg", "png", "rgb8; jpeg compressed bgr8" or "mono8; png compressed ";
    the decoded image is what the codec stored (OpenCV's BGR for colour), returned as RGB.
    """
    fmt = (msg.format or "").lower()
    if "compresseddepth" in fmt:
        raise ConversionError(f"'{msg.format}' is a compressed depth image, not a camera image")
    data = _bytes(msg.data)
    if data.size == 0:
        raise ConversionError("empty compressed image")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConversionError(f"cannot decode compressed image (format '{msg.format}', {data.size} bytes)")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) * (255.0 / max(int(img.max()), 1))).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def depth_to_numpy(msg) -> np.ndarray:
    """Depth image (32FC1 metres or 16UC1/mono16 millimetres) -> float32 [H x W] metres, 0 = invalid."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ConversionError(f"unsupported depth encoding '{msg.encoding}' (32FC1, 16UC1)")
    arr = image_array(msg)[:, :, 0].astype(np.float32)
    if msg.encoding != "32FC1":
        arr *= 1e-3
    arr[~np.isfinite(arr)] = 0.0
    return arr


def camera_matrix(info) -> np.ndarray:
    """sensor_msgs/CameraInfo -> [3 x 3] K. ConversionError for an uncalibrated (zero) K.

    Distortion (info.d) is not applied: the matchers and the pose solver work on the image as received, so
    feed rectified images (image_rect) for exact poses.
    """
    K = np.array(info.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
        raise ConversionError(f"camera_info has no valid K (fx={K[0, 0]}, fy={K[1, 1]})")
    return K


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def pose_to_matrix(p) -> np.ndarray:
    """geometry_msgs/Pose or Transform -> [4 x 4] float64."""
    t, q = (p.position, p.orientation) if hasattr(p, "position") else (p.translation, p.rotation)
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion([q.x, q.y, q.z, q.w])
    T[:3, 3] = [t.x, t.y, t.z]
    return T


transform_to_matrix = pose_to_matrix
