"""rosbag2 tools: written content, playback into real rclpy subscribers, user errors.

DDS stays on loopback (conftest sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST); this module's
graphs use a free ROS_DOMAIN_ID (``free_domain_id``), in process and in the player subprocess.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from match_ros.evaluation.graph import free_domain_id
from match_ros.sim import Camera, make_sequence
from match_ros.tools import bag_play, bag_write, render
from match_ros.ros.codec import depth_to_numpy
from match_ros.ros.codec import pose_to_matrix as pose_from_msg
from match_ros.ros.codec import stamp_to_ns as stamp_ns_of
from match_ros.tools.bagio import BagError, find_msg_dir, make_typestore, open_reader, read_topic

pytestmark = pytest.mark.slow  # starts processes or builds a workspace (slow tier)

DOMAIN_ID = free_domain_id()
N = 10
TOPICS = {"/camera/image_raw": "sensor_msgs/msg/Image", "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
          "/camera/depth": "sensor_msgs/msg/Image", "/ground_truth/pose": "geometry_msgs/msg/PoseStamped",
          "/tf": "tf2_msgs/msg/TFMessage"}


@pytest.fixture(scope="module")
def sequence():
    return make_sequence("room", n_frames=N, camera=Camera().scaled(0.5), seed=4)


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def bag(request, tmp_path_factory, sequence):
    path = tmp_path_factory.mktemp(request.param) / "bag"
    counts = bag_write.write_sequence_bag(path, sequence, storage=request.param, with_depth=True)
    assert counts == {t: N for t in TOPICS}
    return path


def _raw_messages(path, topic):
    reader = open_reader(path)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, bytes(raw)) for _, t, raw in reader.messages(connections=conns)]
    finally:
        reader.close()


def test_bag_content_matches_ground_truth(bag, sequence):
    storage = "mcap" if list(bag.glob("*.mcap")) else "sqlite3"
    reader = open_reader(bag)
    assert {c.topic: c.msgtype for c in reader.connections} == TOPICS
    assert reader.message_count == 5 * N
    reader.close()
    ts = make_typestore()
    stamps = sequence.stamps_ns
    images = read_topic(bag, "/camera/image_raw", ts)
    assert [t for t, _ in images] == stamps, storage
    for (t, msg), frame in zip(images, sequence):
        assert stamp_ns_of(msg.header.stamp) == t and msg.header.frame_id == "camera_optical_frame"
        assert msg.encoding == "rgb8" and (msg.width, msg.height, msg.step) == (320, 240, 960)
        assert bytes(msg.data) == frame.rgb.tobytes()  # byte for byte
    for (t, msg), frame in zip(read_topic(bag, "/camera/depth", ts), sequence):
        assert msg.encoding == "32FC1" and np.array_equal(depth_to_numpy(msg), frame.depth)
    for (t, msg), frame in zip(read_topic(bag, "/camera/camera_info", ts), sequence):
        assert stamp_ns_of(msg.header.stamp) == t and msg.distortion_model == "plumb_bob"
        assert np.allclose(np.reshape(msg.k, (3, 3)), sequence.camera.K) and not np.any(msg.d)
        assert np.allclose(np.reshape(msg.p, (3, 4))[:, :3], sequence.camera.K)
    for (t, msg), frame in zip(read_topic(bag, "/ground_truth/pose", ts), sequence):
        assert msg.header.frame_id == "map" and stamp_ns_of(msg.header.stamp) == t
        assert np.allclose(pose_from_msg(msg.pose), frame.T_world_cam, atol=1e-12)
    for (t, msg), frame in zip(read_topic(bag, "/tf", ts), sequence):
        (tf,) = msg.transforms
        assert (tf.header.frame_id, tf.child_frame_id) == ("map", "camera_optical_frame")
        assert stamp_ns_of(tf.header.stamp) == t
        assert np.allclose(pose_from_msg(tf.transform), frame.T_world_cam, atol=1e-12)


def test_match_ros_types_registered_with_rosidl_hashes():
    """rosbags' registration equals the rosidl build: same type hash, bytes readable by rclpy."""
    ts = make_typestore()
    msg_dir = find_msg_dir()
    for name in ("CorrespondenceSet",):
        json_file = Path(sys.prefix) / "share" / "match_ros" / "msg" / f"{name}.json"
        if json_file.is_file():
            expected = json.loads(json_file.read_text())["type_hashes"][0]["hash_string"]
            assert ts.hash_rihs01(f"match_ros/msg/{name}") == expected
    assert (msg_dir / "CorrespondenceSet.msg").is_file()
    pytest.importorskip("match_ros.msg")
    from rclpy.serialization import deserialize_message

    from match_ros.msg import CorrespondenceSet

    T = ts.types
    pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=1.0, y=0.0, z=0.0),
                                       orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    stamp = T["builtin_interfaces/msg/Time"](sec=5, nanosec=6)
    msg = T["match_ros/msg/CorrespondenceSet"](
        header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="cam"), reference_stamp=stamp,
        reference_frame_id="cam", reference_id=3, query_id=4, matcher="sift", num_keypoints_ref=10,
        num_keypoints_query=11, points_ref=np.array([1.5, 2.5, 1.5, 2.5], np.float32),
        points_query=np.array([3.5, 4.5, 3.5, 4.5], np.float32), index_ref=np.array([7, 7], np.uint32),
        index_query=np.array([9, 9], np.uint32), score=np.array([0.75, 0.75], np.float32),
        distinctiveness=np.array([np.nan, np.nan], np.float32), inlier=np.array([True, True]),
        pose_valid=True, relative_pose=pose, scale_known=False,
        num_inliers=2, parallax_deg=1.25, is_keyframe=False, translation_valid=False, pose_reason="parallax 0.2 deg",
        relative_pose_covariance=np.arange(36, dtype=np.float64))
    out = deserialize_message(bytes(ts.serialize_cdr(msg, "match_ros/msg/CorrespondenceSet")), CorrespondenceSet)
    assert out.matcher == "sift" and out.query_id == 4 and len(out.score) == 2
    assert out.index_query[1] == 9 and out.points_query[3] == 4.5 and list(out.inlier) == [True, True]
    assert out.relative_pose.position.x == 1.0 and out.parallax_deg == 1.25
    assert not out.translation_valid and out.pose_reason == "parallax 0.2 deg"
    assert list(out.relative_pose_covariance) == list(range(36))


# ----------------------------------------------------------------------------- playback
@pytest.fixture(scope="module")
def ros_context():
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    yield ctx
    rclpy.shutdown(context=ctx)


class _Listener:
    """A node in its own spinning thread recording raw images and /clock times."""

    def __init__(self, ctx, name):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image

        self.node = Node(name, context=ctx)
        self.images, self.clock, self.infos = [], [], []
        qos = QoSProfile(depth=100)  # reliable, volatile
        self.node.create_subscription(Image, "/camera/image_raw", self.images.append, qos, raw=True)
        self.node.create_subscription(CameraInfo, "/camera/camera_info", self.infos.append, qos)
        self.node.create_subscription(
            Clock, "/clock", lambda m: self.clock.append(m.clock.sec * 1_000_000_000 + m.clock.nanosec), qos)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_for(self, count, timeout_s):
        """Until count images, clock ticks and camera_infos have arrived (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while min(len(self.images), len(self.clock), len(self.infos)) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self):
        self.executor.shutdown()
        self.thread.join(5)
        self.node.destroy_node()


def test_player_publishes_bag_content_and_clock(bag, sequence, ros_context):
    from rclpy.node import Node
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    listener = _Listener(ros_context, "bag_test_listener")
    node = Node("bag_test_player", context=ros_context)
    player = bag_play.BagPlayer(node, bag, rate=1.0)
    try:
        assert set(player.topics) == set(TOPICS)
        assert player.wait_for_subscribers(15.0, ["/camera/image_raw", "/camera/camera_info", "/clock"])
        stats = player.play()
        listener.wait_for(N, 10.0)
    finally:
        player.close()
        node.destroy_node()
        listener.close()
    assert stats.counts == {t: N for t in TOPICS} and stats.passes == 1
    assert (N - 1) / 30.0 * 0.95 < stats.wall_s < (N - 1) / 30.0 + 1.0  # recorded timing at rate 1
    recorded = _raw_messages(bag, "/camera/image_raw")
    assert len(listener.images) == N  # reliable: complete
    assert listener.images == [raw for _, raw in recorded]  # the recorded bytes, unchanged
    for raw, frame in zip(listener.images, sequence):
        msg = deserialize_message(raw, Image)
        assert np.array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(240, 320, 3), frame.rgb)
    assert listener.clock == sequence.stamps_ns  # one /clock per bag time, monotonic
    assert all(b > a for a, b in zip(listener.clock, listener.clock[1:]))
    assert [i.header.stamp.sec * 10**9 + i.header.stamp.nanosec for i in listener.infos] == sequence.stamps_ns


def test_cli_roundtrip_render_write_play(tmp_path, ros_context):
    """match_ros_render -> match_ros_bag_write --from-folder -> match_ros_bag_play (subprocess)."""
    folder, bag_path = tmp_path / "frames", tmp_path / "bag"
    assert render.main([str(folder), "--scene", "corridor", "--frames", "6", "--width", "160", "--height", "120",
                        "--seed", "3"]) == 0
    frames = render.FolderSequence(folder)
    ref = make_sequence("corridor", n_frames=6, camera=frames.camera, seed=3)
    assert frames.stamps_ns == ref.stamps_ns and frames.camera == ref.camera
    for a, b in zip(frames, ref):
        assert np.array_equal(a.rgb, b.rgb) and np.allclose(a.T_world_cam, b.T_world_cam, atol=1e-8)
        assert np.abs(a.depth - b.depth).max() <= 0.5 / render.DEPTH_SCALE + 1e-6
    assert bag_write.main([str(bag_path), "--from-folder", str(folder), "--storage", "mcap", "--depth"]) == 0
    assert [t for t, _ in _raw_messages(bag_path, "/camera/depth")] == ref.stamps_ns

    listener = _Listener(ros_context, "bag_cli_listener")
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    try:
        proc = subprocess.run([sys.executable, "-m", "match_ros.tools.bag_play", str(bag_path), "--rate", "2",
                               "--wait-for-subscribers", "20"], env=env, capture_output=True, text=True, timeout=60)
        listener.wait_for(6, 5.0)
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr
    assert listener.images == [raw for _, raw in _raw_messages(bag_path, "/camera/image_raw")]
    assert listener.clock == ref.stamps_ns


# ----------------------------------------------------------------------------- user errors
def _broken_bags(tmp_path):
    garbage_meta = tmp_path / "garbage_meta"
    garbage_meta.mkdir()
    (garbage_meta / "metadata.yaml").write_text("rosbag2_bagfile_information: [\n")
    not_db = tmp_path / "random.db3"
    not_db.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(b"\x89MCAP0\r\n" + b"\0" * 64)  # mcap magic, then nothing valid
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    return [tmp_path / "missing", garbage_meta, not_db, truncated, empty_dir]


def test_broken_bags_give_one_line_errors(tmp_path, bag, capsys):
    for path in _broken_bags(tmp_path):
        with pytest.raises(BagError):
            open_reader(path)
        assert bag_play.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("match_ros_bag_play: error: ") and err.count("\n") == 1 and "Traceback" not in err
    # an existing output is not overwritten; a non-bag folder is never replaced, even with --force
    assert bag_write.main([str(bag), "--frames", "1"]) == 2
    assert bag_write.main([str(tmp_path / "empty"), "--frames", "1", "--force"]) == 2
    assert bag_write.main([str(tmp_path / "x"), "--from-folder", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err


def test_contract_errors(bag, sequence, tmp_path, ros_context):
    from rclpy.node import Node

    with pytest.raises(ValueError):
        bag_write.write_sequence_bag(tmp_path / "b", sequence, layout=bag_write.BagLayout(depth="/camera/image_raw"),
                                     with_depth=True)
    with pytest.raises(ValueError):
        bag_write.write_sequence_bag(tmp_path / "b", sequence, storage="rosbag1")
    assert not (tmp_path / "b").exists()
    with pytest.raises(BagError, match="not installed"):
        bag_play.resolve_message_class("no_such_msgs/msg/Thing")
    assert bag_play.resolve_message_class("sensor_msgs/Image").__name__ == "Image"
    node = Node("bag_contract_player", context=ros_context)
    try:
        with pytest.raises(BagError, match="not in the bag"):
            bag_play.BagPlayer(node, bag, topics=["/nope"])
        with pytest.raises(ValueError):
            bag_play.BagPlayer(node, bag, rate=0)
    finally:
        node.destroy_node()
