"""TfBuffer (pure: tree lookups, interpolation, errors, pruning) and TfListener over
/tf + /tf_static in one process on loopback (a free domain id)."""
import threading
import time

import numpy as np
import pytest

from match_ros.core.geometry.transforms import invert
from match_ros.evaluation.graph import free_domain_id
from match_ros.ros.tf_buffer import TfBuffer, TfLookupError

pytestmark = pytest.mark.slow  # starts processes or builds a workspace (slow tier)

S = 1_000_000_000  # ns per second


def rot(axis, angle):
    """Rodrigues rotation about axis by angle [rad] (independent of the module's quaternion code)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def make(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def random_T(rng):
    return make(rot(rng.normal(size=3), rng.uniform(-np.pi, np.pi)), rng.normal(size=3))


def angle_of(R):
    return float(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


# ----------------------------------------------------------------------------- pure buffer
def test_tree_lookups_match_matrix_products():
    rng = np.random.default_rng(0)
    # map -> odom -> base_link -> {camera, laser}; map -> other -> arm (static and dynamic edges mixed)
    edges = [("map", "odom", False), ("odom", "base_link", False), ("base_link", "camera", True),
             ("base_link", "laser", True), ("map", "other", False), ("other", "arm", True)]
    buf = TfBuffer()
    T_parent = {}
    for parent, child, static in edges:
        T_parent[child] = (parent, random_T(rng))
        buf.set_transform(parent, child, 5 * S, T_parent[child][1], static=static)

    def T_map(frame):
        T = np.eye(4)
        while frame != "map":
            parent, T_pc = T_parent[frame]
            T, frame = T_pc @ T, parent
        return T

    frames = ["map", "odom", "base_link", "camera", "laser", "other", "arm"]
    for a in frames:
        for b in frames:
            T_ab = buf.lookup(a, b, 5 * S)
            np.testing.assert_allclose(T_ab, invert(T_map(a)) @ T_map(b), atol=1e-12)
            np.testing.assert_allclose(T_ab @ buf.lookup(b, a, 5 * S), np.eye(4), atol=1e-12)
    # sibling frames, and the convention: T_camera_laser maps a point in laser to camera
    p_laser = np.array([1.0, -2.0, 3.0, 1.0])
    p_base = T_parent["laser"][1] @ p_laser
    np.testing.assert_allclose(buf.lookup("camera", "laser", 5 * S) @ p_laser,
                               invert(T_parent["camera"][1]) @ p_base, atol=1e-12)
    assert buf.lookup("/odom", "base_link", 0).shape == (4, 4)  # leading slash ignored, stamp 0 = latest
    assert buf.frames() == sorted(frames)


def test_interpolation_translation_and_slerp():
    rng = np.random.default_rng(1)
    buf = TfBuffer()
    R0, R1 = rot(rng.normal(size=3), 0.3), rot(rng.normal(size=3), 2.5)
    t0, t1 = np.array([1.0, 2.0, 3.0]), np.array([3.0, -2.0, 4.0])
    buf.set_transform("odom", "base_link", 1 * S, make(R0, t0))
    buf.set_transform("odom", "base_link", 3 * S, make(R1, t1))
    D = R0.T @ R1  # relative rotation; slerp gives R0 @ D**a
    mid = buf.lookup("odom", "base_link", 2 * S)
    np.testing.assert_allclose(mid[:3, 3], (t0 + t1) / 2, atol=1e-12)
    H = R0.T @ mid[:3, :3]
    np.testing.assert_allclose(H @ H, D, atol=1e-9)
    assert angle_of(H) == pytest.approx(angle_of(D) / 2, abs=1e-9)
    q = buf.lookup("odom", "base_link", int(1.5 * S))  # a = 0.25
    np.testing.assert_allclose(q[:3, 3], 0.75 * t0 + 0.25 * t1, atol=1e-12)
    Q = R0.T @ q[:3, :3]
    np.testing.assert_allclose(Q @ Q @ Q @ Q, D, atol=1e-9)
    assert angle_of(Q) == pytest.approx(angle_of(D) / 4, abs=1e-9)
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 3 * S), make(R1, t1), atol=1e-12)  # at a sample
    np.testing.assert_allclose(buf.lookup("base_link", "odom", 2 * S), invert(mid), atol=1e-12)


def test_static_valid_any_time_and_latest_common_time():
    buf = TfBuffer()
    T_bc = make(rot([0, 1, 0], 0.5), [0.1, 0.0, 0.2])
    buf.set_transform("base_link", "camera", 5 * S, T_bc, static=True)
    for stamp in (0, 1, 5 * S, 10**6 * S):
        np.testing.assert_allclose(buf.lookup("base_link", "camera", stamp), T_bc, atol=1e-12)
    # stamp 0: the newest time all dynamic edges on the path have data for (here 2 s)
    for k in range(1, 4):
        buf.set_transform("odom", "base_link", k * S, make(np.eye(3), [k, 0, 0]))
    buf.set_transform("map", "odom", 1 * S, make(np.eye(3), [0, 10, 0]))
    buf.set_transform("map", "odom", 2 * S, make(np.eye(3), [0, 20, 0]))
    np.testing.assert_allclose(buf.lookup("map", "camera", 0), buf.lookup("map", "camera", 2 * S), atol=1e-12)
    np.testing.assert_allclose(buf.lookup("map", "camera", 0)[:3, 3], [0.1 + 2, 20, 0.2], atol=1e-12)
    np.testing.assert_allclose(buf.lookup("odom", "camera", 0)[:3, 3], [0.1 + 3, 0, 0.2], atol=1e-12)


def test_extrapolation_errors_and_tolerance():
    buf = TfBuffer(tolerance_s=0.001)
    buf.set_transform("odom", "base_link", 1 * S, make(np.eye(3), [1, 0, 0]))
    buf.set_transform("odom", "base_link", 2 * S, make(np.eye(3), [2, 0, 0]))
    with pytest.raises(TfLookupError, match=r"into the past.* 0\.500000000 s before the earliest"):
        buf.lookup("odom", "base_link", S // 2)
    with pytest.raises(TfLookupError, match=r"into the future.* 0\.250000000 s after the latest.*'odom' -> "
                                            r"'base_link'"):
        buf.lookup("base_link", "odom", 2 * S + S // 4)
    assert not buf.can_transform("odom", "base_link", 3 * S)
    # within the tolerance the end sample is used
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 2 * S + 500_000)[:3, 3], [2, 0, 0])
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 1 * S - 900_000)[:3, 3], [1, 0, 0])
    # a single sample is valid only at its stamp (+- tolerance)
    buf.set_transform("base_link", "laser", 5 * S, np.eye(4))
    assert buf.can_transform("base_link", "laser", 5 * S)
    with pytest.raises(TfLookupError, match="into the past"):
        buf.lookup("base_link", "laser", 4 * S)


def test_unknown_disconnected_and_invalid():
    buf = TfBuffer()
    buf.set_transform("odom", "base_link", S, np.eye(4))
    buf.set_transform("world", "marker", S, np.eye(4))
    with pytest.raises(TfLookupError, match="unknown frame 'nope'"):
        buf.lookup("odom", "nope", S)
    with pytest.raises(TfLookupError, match="not connected.*rooted at 'odom'.*rooted at 'world'"):
        buf.lookup("world", "base_link", S)
    assert not buf.can_transform("marker", "base_link", S)
    assert isinstance(TfLookupError("x"), LookupError)
    np.testing.assert_array_equal(buf.lookup("marker", "marker", 123), np.eye(4))
    with pytest.raises(ValueError):
        buf.set_transform("a", "a", S, np.eye(4))
    with pytest.raises(ValueError):
        buf.set_transform("a", "b", S, np.diag([1.0, 1.0, 2.0, 1.0]))  # not a rotation
    with pytest.raises(ValueError):
        buf.set_transform("a", "", S, np.eye(4))
    with pytest.raises(ValueError):
        buf.lookup("odom", "base_link", -1)
    buf.set_transform("x", "y", S, np.eye(4))
    buf.set_transform("y", "x", S, np.eye(4))
    with pytest.raises(TfLookupError, match="loop"):
        buf.lookup("x", "odom", S)


def test_buffer_pruned_beyond_cache_time():
    buf = TfBuffer(cache_time_s=2.0, tolerance_s=0.0)
    for k in range(11):
        buf.set_transform("odom", "base_link", k * S, make(np.eye(3), [k, 0, 0]))
    with pytest.raises(TfLookupError, match="into the past"):
        buf.lookup("odom", "base_link", int(7.5 * S))
    np.testing.assert_allclose(buf.lookup("odom", "base_link", int(8.5 * S))[:3, 3], [8.5, 0, 0])
    buf.set_transform("odom", "base_link", 3 * S, np.eye(4))  # older than the cache keeps: dropped
    assert not buf.can_transform("odom", "base_link", 3 * S)
    buf.set_transform("odom", "base_link", int(9.5 * S), make(np.eye(3), [100, 0, 0]))  # out of order, kept
    np.testing.assert_allclose(buf.lookup("odom", "base_link", int(9.5 * S))[:3, 3], [100, 0, 0])


def test_time_that_jumps_back_restarts_the_buffer():
    """A bag played again: /tf stamps 100 s earlier, one after another. tf2 drops a single stale sample, and
    tf2_ros clears its buffer when time jumps back; before, every sample after the jump was dropped and no lookup
    ever succeeded again."""
    buf = TfBuffer(cache_time_s=2.0, tolerance_s=0.0)
    for k in range(100, 111):
        buf.set_transform("odom", "base_link", k * S, make(np.eye(3), [k, 0, 0]))
    for k in range(0, 5):  # the replay: 100 s back
        buf.set_transform("odom", "base_link", k * S, make(np.eye(3), [-k, 0, 0]))
    assert buf.jumps == 1
    np.testing.assert_allclose(buf.lookup("odom", "base_link", int(3.5 * S))[:3, 3], [-3.5, 0, 0])
    assert not buf.can_transform("odom", "base_link", 105 * S)  # the history before the jump is gone


# ----------------------------------------------------------------------------- ROS listener
def test_listener_receives_tf_and_latched_tf_static():
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from std_msgs.msg import Header
    from tf2_msgs.msg import TFMessage

    from match_ros.ros.conversions import matrix_to_transform, ns_to_stamp
    from match_ros.ros.tf import TfBroadcaster
    from match_ros.ros.tf_buffer import TfListener

    rng = np.random.default_rng(2)
    T_base_cam = random_T(rng)
    stamps = [100 * S + k * S // 10 for k in range(6)]
    T_odom_base = {s: random_T(rng) for s in stamps}

    def tf(T, parent, child, stamp):
        return matrix_to_transform(T, Header(stamp=ns_to_stamp(stamp), frame_id=parent), child)

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=free_domain_id())
    executor, thread, nodes = None, None, []
    try:
        pub_node = Node("tf_test_publisher", context=ctx)
        nodes.append(pub_node)
        static_pub = pub_node.create_publisher(TFMessage, "/tf_static", QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
        # the static transform goes out before any listener exists: only latching can deliver it
        static_pub.publish(TFMessage(transforms=[tf(T_base_cam, "base_link", "camera_optical_frame", stamps[0])]))
        broadcaster = TfBroadcaster(pub_node)

        node = Node("tf_test_listener", context=ctx)
        nodes.append(node)
        listener = TfListener(node)
        waited, entered = [], threading.Event()

        def lookup_in_callback():  # in the node's default group: blocks while TF arrives in its own group
            timer.cancel()
            entered.set()
            try:
                waited.append(listener.lookup("odom", "camera_optical_frame", stamps[-1], timeout_s=8.0))
            except TfLookupError as e:
                waited.append(e)

        timer = node.create_timer(0.05, lookup_in_callback)
        executor = MultiThreadedExecutor(num_threads=2, context=ctx)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()

        deadline = time.monotonic() + 8.0
        while broadcaster._pub is not None and broadcaster._pub.get_subscription_count() == 0:
            assert time.monotonic() < deadline, "listener never matched /tf"
            time.sleep(0.02)
        assert entered.wait(8.0), "the timer callback never ran"
        time.sleep(0.1)  # and is now waiting inside lookup(): what follows arrives while it waits
        for s in stamps:
            broadcaster.send([tf(T_odom_base[s], "odom", "base_link", s)])
        deadline = time.monotonic() + 8.0
        while not waited and time.monotonic() < deadline:
            time.sleep(0.02)

        expected = T_odom_base[stamps[-1]] @ T_base_cam
        assert waited and not isinstance(waited[0], Exception), waited
        np.testing.assert_allclose(waited[0], expected, atol=1e-9)
        for s in stamps:  # every sample arrived (reliable, depth 100)
            T = listener.lookup("odom", "camera_optical_frame", s, timeout_s=2.0)
            np.testing.assert_allclose(T, T_odom_base[s] @ T_base_cam, atol=1e-9)
        np.testing.assert_allclose(listener.lookup("camera_optical_frame", "base_link", 0), invert(T_base_cam),
                                   atol=1e-9)
        t0 = time.monotonic()
        with pytest.raises(TfLookupError, match="into the future"):
            listener.lookup("odom", "camera_optical_frame", stamps[-1] + S, timeout_s=0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert listener.can_transform("odom", "camera_optical_frame", stamps[2])
        listener.destroy()
    finally:
        if executor is not None:
            executor.shutdown()
        if thread is not None:
            thread.join(5)
        for n in nodes:
            n.destroy_node()
        rclpy.shutdown(context=ctx)
