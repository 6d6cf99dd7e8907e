"""Shared fixtures. DDS discovery stays on loopback for every test, whatever
the caller's environment: set before anything imports rclpy."""
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "59")

DATA = Path(__file__).resolve().parent / "data"


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
