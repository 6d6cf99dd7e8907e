"""Decoding ROS messages into arrays: one codec for rclpy messages and for ``rosbags`` messages.

Both kinds carry the same field names (``msg.header.stamp.sec``, ``msg.data``, ``msg.k``...), so every function
here reads either; nothing imports rclpy, and tools that read bags use the same code as the nodes (replaces
cv_bridge). Every malformed input raises ``ConversionError`` (a ValueError) saying what is wrong.

Images come out as the matchers want them: uint8 RGB [H x W x 3] or mono [H x W]; depth as float32 metres
[H x W] (0 = invalid). ``sensor_msgs/CompressedImage`` (image_transport's ``compressed`` plugin: jpeg / png)
decodes to the same arrays; its size is read from the PNG / JPEG header first (``compressed_image_size``), so an
image too large for the caller is refused before decoding (a 2.5 MB PNG can hold gigabytes of pixels).
"""
from __future__ import annotations

import struct
from typing import Optional

import cv2
import numpy as np

from match_ros.core.geometry.camera import Distortion
from match_ros.core.geometry.transforms import matrix_from_quaternion


class ConversionError(ValueError):
    """A message could not be converted; the text says why."""


class ImageTooLarge(ConversionError):
    """An image with more pixels than the caller's limit (refused before decoding)."""


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers SOF0-SOF15 (their header has the size), except DHT, JPG and DAC in that range
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = {0x01} | set(range(0xD0, 0xD8))  # TEM, RST0-7: markers without a length field
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def compressed_image_size(data) -> tuple[int, int, str]:
    """(width, height, "png" | "jpeg") of a compressed image from its header alone: a PNG's IHDR chunk, or the
    frame header (SOFn) of a JPEG, found by walking its marker segments up to the scan data. ConversionError for
    anything else (image_transport's compressed plugin sends only these two) or a header without a size."""
    buf = memoryview(_bytes(data))
    n = len(buf)
    if bytes(buf[:8]) == PNG_SIGNATURE:
        if n < 24 or bytes(buf[12:16]) != b"IHDR":
            raise ConversionError("PNG without its IHDR header")
        width, height = struct.unpack(">II", buf[16:24])
        return width, height, "png"
    if bytes(buf[:2]) != b"\xff\xd8":
        raise ConversionError("not a JPEG or PNG image")
    i = 2
    while i + 1 < n:
        if buf[i] != 0xFF:
            raise ConversionError(f"JPEG header corrupt at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI) or i + 4 > n:
            break
        length = (buf[i + 2] << 8) | buf[i + 3]
        if length < 2:
            raise ConversionError(f"JPEG header corrupt at byte {i}")
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", buf[i + 5:i + 9])
            if height == 0:  # a DNL marker after the scan would give it: not supported by the decoder either
                raise ConversionError("JPEG frame header without a height")
            return width, height, "jpeg"
        i += 2 + length
    raise ConversionError("JPEG without a frame header (SOF) before its image data")


def compressed_to_numpy(msg, max_pixels: Optional[int] = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, image_transport 'compressed') -> uint8 RGB or mono.

    The format field is e.g. "jpeg", "png", "rgb8; jpeg compressed bgr8" or "mono8; png compressed ";
    the decoded image is what the codec stored (OpenCV's BGR for colour), returned as RGB. The size in the header
    is checked before decoding: an image of more than ``max_pixels`` pixels (None: no limit) is refused with
    ImageTooLarge (a ConversionError) and costs no memory.
    """
    fmt = (msg.format or "").lower()
    if "compresseddepth" in fmt:
        raise ConversionError(f"'{msg.format}' is a compressed depth image, not a camera image")
    data = _bytes(msg.data)
    if data.size == 0:
        raise ConversionError("empty compressed image")
    try:
        width, height, kind = compressed_image_size(data)
    except ConversionError as e:
        raise ConversionError(f"cannot decode compressed image (format '{msg.format}', {data.size} bytes): "
                              f"{e}") from None
    if width == 0 or height == 0:
        raise ConversionError(f"empty image ({width}x{height}) in the {kind.upper()} header")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{kind.upper()} image of {width}x{height} = {width * height / 1e6:.1f} Mpx (by its "
                            f"header, {data.size} bytes compressed) exceeds the limit of {max_pixels / 1e6:.1f} "
                            "Mpx: refused before decoding")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConversionError(f"cannot decode compressed image (format '{msg.format}', {data.size} bytes)")
    if img.dtype == np.uint16:  # scaled by its maximum to 8 bit, without a float copy
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(int(img.max()), 1))
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

    K is the calibration of the image as published (image_raw: the distorted image; image_rect: the rectified
    one, whose camera_info carries zero distortion). The distortion (info.d, info.distortion_model) is read by
    ``camera_distortion``: the core undistorts the keypoints with it (not the images).
    """
    K = np.array(info.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
        raise ConversionError(f"camera_info has no valid K (fx={K[0, 0]}, fy={K[1, 1]})")
    return K


def camera_distortion(info) -> Optional[Distortion]:
    """sensor_msgs/CameraInfo -> its lens distortion (``core.geometry.camera.Distortion``), or None when there is
    none (no coefficients, or all zero, whatever the model name).

    plumb_bob, rational_polynomial and equidistant are supported: the core undistorts the keypoints of the raw
    image with them. Any other model with non-zero coefficients (or coefficients a model cannot take) raises a
    ConversionError: feed image_proc's rectified image (``image_rect``) and its camera_info instead.
    """
    d = np.asarray(list(info.d), np.float64).reshape(-1)
    if not np.any(d):  # NaN counts as non-zero: refused below
        return None
    model = str(info.distortion_model or "")
    try:
        return Distortion(model, d)
    except ValueError as e:
        raise ConversionError(f"camera_info distortion cannot be undone on the keypoints ({e}): remap the images "
                              "with image_proc (rectify) and subscribe to its rectified topic image_rect with its "
                              "camera_info") from None


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
