"""Shared fixtures. DDS discovery stays on loopback for every test, whatever
the caller's environment: set before anything imports rclpy."""
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "59")

DATA = Path(__file__).resolve().parent / "data"
# the slow tier: tests that start processes, build a workspace or run the big models many times; `make test`
# runs everything, `make test-fast` leaves these out
SLOW_MODULES = ("test_e2e_keyframe", "test_e2e_reloc", "test_colcon", "test_bags", "test_tf_buffer")
SLOW_TESTS = ("test_atomic_save_under_sigkill", "test_lighterglue_cached_forward_matches_kornia",
              "test_lighterglue_stale_state_is_recomputed", "test_packed_lighterglue_matches_kornia_on_a_subset",
              "test_graf_homography[omniglue_xfeat]", "test_flat_and_grayscale_images[omniglue_xfeat]",
              "test_no_wrong_pose_at_any_top_k[20]", "test_revisits_add_no_keyframes",
              "test_frames_lost_before_the_node_are_counted_and_reported",
              "test_rgbd_odometry_drift_on_a_rendered_room")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or item.name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes, builds a workspace or runs big models (slow tier)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread while a module's tests run (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core runner torch's spinning thread pool gets 5-10x slower when the other core is busy
    (measured: global descriptor 0.2 s vs 1.5 s per image)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def test_device() -> str:
    """The device the backend tests build their matchers on: cpu (CI), cuda under scripts/gpu_check.sh."""
    return os.environ.get("MATCH_ROS_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def graf_pair():
    """(graf1 RGB, graf3 RGB, H_1to3 3x3 float64): the Oxford graffiti homography pair."""
    import cv2

    fs = cv2.FileStorage(str(DATA / "H1to3p.xml"), cv2.FILE_STORAGE_READ)
    H = fs.getNode("H13").mat().astype(np.float64)
    fs.release()
    return _read_rgb(DATA / "graf1.png"), _read_rgb(DATA / "graf3.png"), H
