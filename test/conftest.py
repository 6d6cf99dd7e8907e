"""Shared fixtures. DDS discovery stays on loopback for every test, whatever
the caller's environment: set before anything imports rclpy."""
import os
from pathlib import Path

import match_ros  # noqa: F401  (first: the process's thread settings, before numpy and torch load)
import numpy as np
import pytest

from match_ros.evaluation.graph import free_domain_id  # noqa: E402  (imports no ROS)

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# in-process graphs of this run: a domain id no other graph on the machine uses (a second test run, a demo, a
# robot's stack), whatever ROS_DOMAIN_ID the caller set; multi-process tests take their own with free_domain_id()
os.environ["ROS_DOMAIN_ID"] = str(free_domain_id())

DATA = Path(__file__).resolve().parent / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes, builds a workspace, runs big models or takes over "
                                       "1.5 s on 2 cores (slow tier)")


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


@pytest.fixture(scope="module")
def node(request):
    """An rclpy node in a context of its own, for a module's in-process ROS tests (named after the module)."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    n = rclpy.create_node(request.module.__name__.rpartition(".")[2], context=ctx)
    yield n
    n.destroy_node()
    rclpy.shutdown(context=ctx)


@pytest.fixture()
def graph():
    """graph(domain=None) -> an rclpy node in its own context, the test's side of a multi-process graph, on a
    domain id no other graph on this machine uses (or ``domain``); destroyed after the test."""
    import rclpy

    from match_ros.evaluation.graph import confine_to_loopback, free_domain_id

    nodes = []

    def make(domain=None):
        confine_to_loopback(free_domain_id() if domain is None else domain)
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        nodes.append((rclpy.create_node("e2e_test", context=ctx), ctx))
        return nodes[-1][0]

    yield make
    for n, ctx in nodes:
        n.destroy_node()
        rclpy.shutdown(context=ctx)


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
