"""The node runtime in process (an rclpy node, no other process): input sanity (camera_info for another image
size, implausible camera matrices, absurd depth, oversized images downscaled with their calibration), compressed
images, error accounting, parameter declaration from the specs, configuration files generated from the specs."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from match_ros.core.config import Param
from match_ros.ros import codec
from match_ros.sim import Camera, make_sequence

REPO = Path(__file__).resolve().parents[1]


def _camera_input(node, use_depth=False):
    from match_ros.core.config import defaults
    from match_ros.ros.camera_input import CameraInput, camera_input_spec
    from match_ros.ros.diagnostics import ErrorLog

    items, errors = [], ErrorLog(node)
    conf = {**defaults(camera_input_spec), "max_image_pixels": 400_000, "depth_wait_s": 0.0}
    return CameraInput(node, conf, items.append, errors, use_depth=use_depth), items, errors


@pytest.fixture()
def camera_input(node):
    return _camera_input(node)


def _image_msg(rgb, stamp_ns=1_000, frame="cam"):
    from match_ros.ros import conversions as conv

    m = conv.numpy_to_image(rgb, "rgb8")
    m.header.stamp, m.header.frame_id = conv.ns_to_stamp(stamp_ns), frame
    return m


def _info(K, w, h):
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(k=np.asarray(K, float).ravel().tolist(), width=w, height=h)


def test_camera_info_for_another_image_size_gives_no_pose(camera_input):
    inp, items, errors = camera_input
    cam = Camera()
    inp._on_info(_info(cam.K, 1280, 960))
    inp._on_image(_image_msg(np.zeros((480, 640, 3), np.uint8)))
    frame = inp.frame(items[-1])
    assert frame.K is None and errors.by_kind["camera_info"] == 1 and "1280x960" in errors.last


def test_a_changed_calibration_is_refused_and_the_one_in_use_kept(camera_input):
    """One camera_info with the focal length doubled (plausible, wrong) sent visual_odometry 1.28 m off: once a
    calibration is in use, a change beyond max_calibration_change is refused with the reason and the one in use
    kept; the same camera at another resolution (K scaled with the image) is no change."""
    inp, items, errors = camera_input
    K = Camera().K
    inp._on_info(_info(K, 640, 480))
    K2 = K.copy()
    K2[:2, :2] *= 2.0
    inp._on_info(_info(K2, 640, 480))
    assert errors.by_kind["camera_info"] == 1 and "calibration changed by 100 %" in errors.last
    inp._on_image(_image_msg(np.zeros((480, 640, 3), np.uint8)))
    assert np.allclose(inp.frame(items[-1]).K, K)
    half = K.copy()
    half[:2] *= 0.5
    inp._on_info(_info(half, 320, 240))
    assert errors.by_kind["camera_info"] == 1 and inp.info_size == (320, 240)


@pytest.mark.parametrize("K, why", [
    ([[1e-3, 0, 320], [0, 1e-3, 240], [0, 0, 1]], "field of view"),
    ([[5e6, 0, 320], [0, 5e6, 240], [0, 0, 1]], "field of view"),
    ([[525, 0, 2000], [0, 525, 240], [0, 0, 1]], "principal point"),
    ([[525, 0, 320], [0, 100, 240], [0, 0, 1]], "focal lengths"),
])
def test_implausible_camera_matrices_are_refused(camera_input, K, why):
    inp, items, errors = camera_input
    inp._on_info(_info(K, 640, 480))
    inp._on_image(_image_msg(np.zeros((480, 640, 3), np.uint8)))
    assert inp.frame(items[-1]).K is None and why in errors.last


def test_oversized_images_are_downscaled_with_their_calibration(camera_input):
    inp, items, errors = camera_input
    seq = make_sequence("room", n_frames=1, camera=Camera().scaled(2.0))  # 1280 x 960 > 400 000 px
    f = seq[0]
    inp._on_info(_info(seq.camera.K, 1280, 960))
    inp._on_image(_image_msg(f.rgb))
    frame = inp.frame(items[-1])
    h, w = frame.image.shape[:2]
    assert w * h <= 400_000 and abs(w / h - 4 / 3) < 0.01 and frame.scale < 1.0
    # a 3D point projects onto the same image content at both scales
    X = np.array([0.3, -0.2, 2.0])
    uv_full = (seq.camera.K @ X)[:2] / X[2]
    uv_small = (frame.K @ X)[:2] / X[2]
    np.testing.assert_allclose((uv_full + 0.5) * np.array([w / 1280, h / 960]) - 0.5, uv_small, atol=1e-9)


def test_depth_outside_its_range_or_of_another_size_is_not_used(node):
    from match_ros.ros import conversions as conv

    inp, items, errors = _camera_input(node, use_depth=True)
    depth = np.full((480, 640), 2.0, np.float32)
    depth[:10] = 1e30
    d = conv.numpy_to_image(depth, "32FC1")
    d.header.stamp = conv.ns_to_stamp(5_000)
    inp._on_depth(d)
    inp._on_image(_image_msg(np.zeros((480, 640, 3), np.uint8), stamp_ns=5_000))
    frame = inp.frame(items[-1])
    assert frame.depth is not None and np.all(frame.depth[:10] == 0) and np.all(frame.depth[10:] == 2.0)
    small = conv.numpy_to_image(np.full((240, 320), 2.0, np.float32), "32FC1")
    small.header.stamp = conv.ns_to_stamp(6_000)
    inp._on_depth(small)
    inp._on_image(_image_msg(np.zeros((480, 640, 3), np.uint8), stamp_ns=6_000))
    assert inp.frame(items[-1]).depth is None and "depth is 320x240" in errors.last


def test_compressed_images_decode_to_the_same_pixels():
    from sensor_msgs.msg import CompressedImage

    rgb = make_sequence("room", n_frames=1, camera=Camera().scaled(0.5))[0].rgb
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format="rgb8; png compressed bgr8", data=png.tobytes())
    assert np.array_equal(codec.compressed_to_numpy(msg), rgb)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = codec.compressed_to_numpy(CompressedImage(format="jpeg", data=jpg.tobytes()))
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 3.0
    with pytest.raises(codec.ConversionError, match="cannot decode"):
        codec.compressed_to_numpy(CompressedImage(format="jpeg", data=b"not an image"))
    with pytest.raises(codec.ConversionError, match="compressed depth"):
        codec.compressed_to_numpy(CompressedImage(format="16UC1; compressedDepth png", data=png.tobytes()))


def test_errors_are_counted_by_kind_and_recent_ones_expire(node):
    from match_ros.ros.diagnostics import ErrorLog

    log = ErrorLog(node, recent_s=0.2)
    for i in range(5):
        log("image", f"empty image ({i}x0)")
    log("depth", "no depth")
    assert log.count == 6 and log.by_kind == {"image": 5, "depth": 1} and log.recent() == 6
    import time

    time.sleep(0.3)
    assert log.recent() == 0 and log.count == 6


def test_worker_runs_calls_in_its_own_thread_between_frames(node):
    """Worker.call: set-up work (model building, map loading) runs in the processing thread, its exception
    reaches the caller, frames keep flowing, and after stop() a call runs inline."""
    import threading

    from match_ros.ros.diagnostics import ErrorLog
    from match_ros.ros.worker import Worker

    seen = []
    worker = Worker(lambda item: seen.append((item, threading.current_thread().name)), ErrorLog(node), "test_worker")
    try:
        assert worker.call(lambda: threading.current_thread().name) == "test_worker"
        with pytest.raises(ZeroDivisionError):
            worker.call(lambda: 1 / 0)
        worker.put("frame")
        assert worker.call(lambda: 42) == 42
        for _ in range(100):
            if seen:
                break
            threading.Event().wait(0.01)
        assert seen == [("frame", "test_worker")]
    finally:
        worker.stop(2.0)
    assert worker.call(lambda: threading.current_thread().name) == threading.current_thread().name


def test_warm_matcher_builds_a_warm_backend_with_its_thread_count():
    """warm_matcher: the backend the parameters name (cpu_bf16 / max_keypoints only where the backend has them),
    warmed up, torch's intra-op threads set when torch_threads > 0 (restored here: the setting is process-wide)."""
    import torch

    from match_ros.core.config import defaults
    from match_ros.ros.matcher_params import matcher_spec, warm_matcher

    before = torch.get_num_threads()
    try:
        p = {**defaults(matcher_spec()), "matcher": "orb_teblid", "max_keypoints": 300, "device": "cpu",
             "torch_threads": 1}
        matcher, probe = warm_matcher(p)
        assert matcher.name == "orb_teblid" and "cpu_bf16" not in matcher.conf
        assert 0 < len(probe) <= 300 and torch.get_num_threads() == 1
        xfeat, _ = warm_matcher({**p, "matcher": "xfeat_mnn", "cpu_bf16": "false", "torch_threads": 0})
        assert xfeat.conf["cpu_bf16"] is False and xfeat.conf["max_keypoints"] == 300
        assert xfeat.precision == "float32 (cpu_bf16: false)"
        # LightGlue's early exit reaches the backend; visual_odometry defaults to it, keyframe_matcher does not
        glue, _ = warm_matcher({**p, "matcher": "xfeat_lighterglue", "cpu_bf16": "false", "depth_confidence": 0.95})
        assert glue.conf["depth_confidence"] == 0.95 and "depth_confidence" not in xfeat.conf
        from match_ros.nodes import keyframe_matcher, relocalizer, visual_odometry

        assert keyframe_matcher.node_spec["depth_confidence"].default == -1.0
        assert visual_odometry.node_spec["depth_confidence"].default == 0.95
        assert relocalizer.node_spec["depth_confidence"].default == p["depth_confidence"] == -1.0
        # a dense backend takes no max_keypoints: every node's parameter must not stop it from starting
        dense, grid = warm_matcher({**p, "matcher": "nemf_dense", "torch_threads": 0})
        assert dense.name == "nemf_dense" and "max_keypoints" not in dense.conf and len(grid) == 80 * 60
        # with cpu_bf16 forced on every backend builds and runs
        for name in ("a2net_align", "nemf_dense", "coam_xfeat"):
            assert warm_matcher({**p, "matcher": name, "cpu_bf16": "true", "torch_threads": 0})[0].name == name
    finally:
        torch.set_num_threads(before)


def test_parameters_are_declared_from_the_spec_with_ranges(node):
    from match_ros.ros.params import ParameterError, declare

    spec = {"rate": Param(2.0, "Queries per second", "Hz", 0.0, 100.0), "mode": Param("a", "Mode", choices=("a", "b")),
            "fixed": Param(3, "Cannot change", min=1, max=5, read_only=True)}
    values = declare(node, spec, "test")
    assert values == {"rate": 2.0, "mode": "a", "fixed": 3}
    d = node.describe_parameter("test.rate")
    assert "Unit: Hz" in d.description and d.floating_point_range[0].to_value == 100.0
    assert node.describe_parameter("test.fixed").read_only
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    made = []

    def node_with(name, value):
        made.append(rclpy.create_node("params_test", context=ctx,
                                      parameter_overrides=[rclpy.parameter.Parameter(name, value=value)]))
        return made[-1]

    try:
        with pytest.raises(ParameterError, match="test.mode must be one of"):
            declare(node_with("test.mode", "c"), spec, "test")
        # `rate: 3` in a YAML file (an INTEGER) for a floating-point setting: read as 3.0, range still checked
        got = declare(node_with("test.rate", 3), spec, "test")["rate"]
        assert got == 3.0 and isinstance(got, float)
        with pytest.raises(ParameterError, match="test.rate = 101.0 is above its maximum 100"):
            declare(node_with("test.rate", 101), spec, "test")
        with pytest.raises(ParameterError, match="test.rate must be a number"):
            declare(node_with("test.rate", "fast"), spec, "test")
    finally:
        for n in made:
            n.destroy_node()
        rclpy.shutdown(context=ctx)


def test_shipped_configuration_files_are_generated_from_the_specs():
    from match_ros.tools.config_files import shipped_configs

    for name, text in shipped_configs().items():
        assert (REPO / "config" / name).read_text() == text, \
            f"config/{name}: run python -m match_ros.tools.config_files --write config"


@pytest.mark.slow
def test_frames_lost_before_the_node_are_counted_and_reported():
    """640x480 images at 30 Hz, best effort, default Fast DDS transports in both processes (the case the shipped
    profile fixes; measured 95 % lost, match_ros.evaluation.bench_transport): the loss is counted and reported."""
    import os
    import subprocess
    import sys
    import time

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from match_ros.core.config import defaults
    from match_ros.evaluation.bench_transport import _PUBLISHER
    from match_ros.evaluation.graph import confine_to_loopback, free_domain_id
    from match_ros.ros.camera_input import CameraInput, camera_input_spec
    from match_ros.ros.diagnostics import ErrorLog

    confine_to_loopback(free_domain_id())
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DEFAULT_PROFILES_FILE")}
    pub = subprocess.Popen([sys.executable, "-c", _PUBLISHER, "30", "3", "best_effort"], env=env,
                           stdout=subprocess.PIPE)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("loss_test", context=ctx)
    try:
        inp = CameraInput(node, defaults(camera_input_spec), lambda item: None, ErrorLog(node))
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        end = time.monotonic() + 60
        while pub.poll() is None and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        sent = int(pub.stdout.read().split()[0])
        assert sent >= 60 and inp.lost > 0 and inp.received + inp.lost <= sent + 5
        assert "lost before the node" in inp.loss_warning()
        assert inp.loss_warning() == ""  # nothing new lost since the last look
        ex.shutdown()
    finally:
        if pub.poll() is None:
            pub.kill()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
