"""Message <-> array conversions and message round trips (no ROS graph needed)."""
import math

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from match_ros.core.tracking.frontend import Keyframe, TrackResult
from match_ros.core.geometry.two_view import RelativePose
from match_ros.core.geometry.transforms import make_T
from match_ros.core.features.types import Features, Matches
from match_ros.msg import CorrespondenceSet
from match_ros.ros import conversions as conv


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC3"])
def test_image_round_trip_gives_rgb_or_mono(encoding):
    rng = np.random.default_rng(0)
    channels = {"rgba8": 4, "bgra8": 4, "mono8": 1}.get(encoding, 3)
    arr = rng.integers(0, 255, (30, 41, channels), dtype=np.uint8)
    msg = deserialize_message(serialize_message(conv.numpy_to_image(arr, encoding)), Image)
    out = conv.image_to_numpy(msg)
    if channels == 1:
        np.testing.assert_array_equal(out, arr[:, :, 0])
    elif encoding.startswith("bgr"):
        np.testing.assert_array_equal(out, arr[:, :, 2::-1])
    else:
        np.testing.assert_array_equal(out, arr[:, :, :3])


def test_padded_rows_and_big_endian_16bit():
    arr = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
    msg = Image(height=12, width=10, encoding="16UC1", is_bigendian=1, step=24)
    padded = np.zeros((12, 24), np.uint8)
    padded[:, :20] = arr.astype(">u2").view(np.uint8).reshape(12, 20)
    msg.data = padded.tobytes()
    np.testing.assert_allclose(conv.depth_to_numpy(msg), arr.astype(np.float32) * 1e-3)


@pytest.mark.parametrize("mutate, text", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding"),
    (lambda m: (setattr(m, "width", 0), setattr(m, "height", 0), setattr(m, "data", b"")), "empty image"),
    (lambda m: setattr(m, "step", 10), "step"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-7]), "bytes"),
])
def test_bad_images_raise_conversion_error(mutate, text):
    msg = conv.numpy_to_image(np.zeros((20, 20, 3), np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(conv.ConversionError, match=text):
        conv.image_to_numpy(msg)


def test_camera_info_without_calibration_is_rejected():
    with pytest.raises(conv.ConversionError):
        conv.camera_matrix(CameraInfo())
    info = CameraInfo(k=[500.0, 0.0, 320.0, 0.0, 501.0, 240.0, 0.0, 0.0, 1.0])
    assert conv.camera_matrix(info)[1, 1] == 501.0


def test_pose_and_transform_conversions_round_trip():
    import cv2

    T = make_T(cv2.Rodrigues(np.array([0.3, -0.2, 1.0]))[0], [1.0, -2.0, 0.5])
    np.testing.assert_allclose(conv.pose_to_matrix(conv.matrix_to_pose(T)), T, atol=1e-12)
    ts = conv.matrix_to_transform(T, Header(frame_id="a"), "b")
    np.testing.assert_allclose(conv.transform_to_matrix(ts.transform), T, atol=1e-12)
    assert conv.stamp_to_ns(conv.ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789


def test_correspondence_set_round_trip_keeps_every_field():
    import torch

    rng = np.random.default_rng(1)
    kp_ref = torch.tensor(rng.uniform(0, 600, (50, 2)), dtype=torch.float32)
    kp_q = torch.tensor(rng.uniform(0, 600, (60, 2)), dtype=torch.float32)
    f_ref = Features(kp_ref, torch.zeros(50, 8), torch.ones(50), (640, 480))
    f_q = Features(kp_q, torch.zeros(60, 8), torch.ones(60), (640, 480))
    idx = np.column_stack([rng.permutation(50)[:30], rng.permutation(60)[:30]])
    m = Matches(idx, rng.uniform(0, 1, 30), distinctiveness=rng.uniform(0, 1, 30))
    inl = rng.uniform(size=30) > 0.3
    T = make_T(np.eye(3), [0.6, 0.0, 0.8])
    pose = RelativePose(True, T, inl, int(inl.sum()), scale_known=False, parallax_deg=2.5)
    pr, pq = m.points(f_ref, f_q)
    kf = Keyframe(7, 1_000_000_123, "cam_opt", f_ref, None, None)
    res = TrackResult(42, kf, 60, m, pr, pq, pose, False, "tracking")
    msg = conv.correspondence_set(res, Header(frame_id="cam_opt"), "sift")
    back = deserialize_message(serialize_message(msg), CorrespondenceSet)
    arr = conv.correspondence_arrays(back)
    np.testing.assert_allclose(arr["pts_ref"], pr, atol=1e-3)
    np.testing.assert_allclose(arr["pts_query"], pq, atol=1e-3)
    np.testing.assert_array_equal(arr["indices"], idx)
    np.testing.assert_array_equal(arr["inliers"], inl)
    np.testing.assert_allclose(arr["distinctiveness"], m.distinctiveness, atol=1e-6)
    assert back.reference_id == 7 and back.query_id == 42 and back.matcher == "sift"
    assert back.reference_stamp.sec == 1 and back.reference_stamp.nanosec == 123
    assert back.num_inliers == inl.sum() and back.pose_valid and not back.scale_known
    np.testing.assert_allclose(conv.pose_to_matrix(back.relative_pose), T, atol=1e-6)
    # a matcher without distinctiveness publishes NaN
    m.distinctiveness = None
    assert all(math.isnan(d) for d in conv.correspondence_set(res, Header(), "x").distinctiveness)
    # no match: empty arrays, same shapes
    empty = conv.correspondence_arrays(conv.correspondence_message(
        Header(), "x", Matches.empty(), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, bool), reference_stamp_ns=0,
        reference_frame_id="a", reference_id=0, query_id=0, num_keypoints_ref=0, num_keypoints_query=0,
        pose_valid=False, T_ref_query=np.eye(4), scale_known=False, num_inliers=0))
    assert empty["pts_ref"].shape == (0, 2) and empty["indices"].shape == (0, 2) and empty["inliers"].shape == (0,)
