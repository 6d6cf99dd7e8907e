"""The OpenCV chessboard stereo sequence as a relocalization scene with real images (test/data/chessboard).

13 left/right image pairs (640x480) of a 9x6 chessboard with 25 mm squares, moved in front of a fixed stereo rig.
The board is the world ("map" frame: its plane is z = 0); every image's camera pose in it comes from the board
corners (sub-pixel corners, PnP on the undistorted image): the ground truth. The map is built from the LEFT
images, with the board plane as depth (only board pixels get 3D points: the room behind it moves with the camera,
not with the board); the queries are the RIGHT images, another camera with its own calibration (the left one
from left_intrinsics.yml, the right one calibrated here from its 13 views), seeing the board from 7 cm away.
A hard case on purpose: a repetitive pattern, few keyframes, large viewpoint changes between the views.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from match_ros.core.geometry.transforms import invert, make_T

BOARD = (9, 6)  # inner corners
SQUARE_M = 0.025
INDICES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)


def default_data_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "test" / "data"
    if not (path / "chessboard").is_dir():
        raise FileNotFoundError(f"chessboard images not found in {path}: run from a source checkout of match_ros")
    return path


def _board_points() -> np.ndarray:
    g = np.mgrid[0:BOARD[0], 0:BOARD[1]].T.reshape(-1, 2).astype(np.float64) * SQUARE_M
    return np.column_stack([g, np.zeros(len(g))])


def _corners(gray: np.ndarray):
    ok, c = cv2.findChessboardCorners(gray, BOARD)
    if not ok:
        return None
    return cv2.cornerSubPix(gray, c, (11, 11), (-1, -1),
                            (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)).reshape(-1, 2)


def calibrations(data_dir: Path) -> dict:
    """{"left": (K, dist), "right": (K, dist)}: the left camera from left_intrinsics.yml, the right one calibrated
    from its 13 views."""
    fs = cv2.FileStorage(str(data_dir / "left_intrinsics.yml"), cv2.FILE_STORAGE_READ)
    K_l, d_l = fs.getNode("camera_matrix").mat(), fs.getNode("distortion_coefficients").mat().ravel()
    fs.release()
    obj, img = [], []
    for i in INDICES:
        gray = cv2.imread(str(data_dir / "chessboard" / f"right{i:02d}.jpg"), cv2.IMREAD_GRAYSCALE)
        c = _corners(gray)
        if c is not None:
            obj.append(_board_points().astype(np.float32))
            img.append(c.astype(np.float32))
    _, K_r, d_r, _, _ = cv2.calibrateCamera(obj, img, (640, 480), None, None)
    return {"left": (K_l, d_l), "right": (K_r, d_r.ravel())}


def board_view(path: Path, K: np.ndarray, dist: np.ndarray):
    """(undistorted RGB image, T_board_cam [4 x 4], board-plane depth [H x W] float32 m) of one view, or None
    when the board is not found. Depth covers the board's squares (one square beyond the inner corners)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(cv2.undistort(bgr, K, dist), cv2.COLOR_BGR2RGB)
    c = _corners(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    if c is None:
        return None
    ok, rvec, tvec = cv2.solvePnP(_board_points(), c, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
    T_cam_board = make_T(cv2.Rodrigues(rvec)[0], tvec)
    # depth of the board plane (z = 0 in the board frame) at every pixel inside the board outline
    h, w = rgb.shape[:2]
    n_cam = T_cam_board[:3, 2]  # plane normal in the camera frame
    d = float(n_cam @ T_cam_board[:3, 3])  # plane: n . X = d
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = d / (rays @ n_cam)
    outline = np.array([[-1, -1, 0], [BOARD[0], -1, 0], [BOARD[0], BOARD[1], 0], [-1, BOARD[1], 0]], float)
    uv, _ = cv2.projectPoints(outline * SQUARE_M, rvec, tvec, K, None)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, np.round(uv.reshape(-1, 2)).astype(np.int32), 1)
    depth = np.where((mask > 0) & np.isfinite(z) & (z > 0), z, 0.0).astype(np.float32)
    return rgb, invert(T_cam_board), depth


class _Views:
    """A sequence-like list of views for the bag writer: camera, len(), [i] -> frame with rgb, depth, pose."""

    def __init__(self, frames, K, start_ns: int):
        from match_ros.sim import Camera, Frame

        self.camera = Camera(640, 480, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        self._frames = [Frame(i, start_ns + i * 100_000_000, T, rgb, depth)
                        for i, (rgb, T, depth) in enumerate(frames)]
        self.stamps_ns = [f.stamp_ns for f in self._frames]
        self.poses = [(f.stamp_ns, f.T_world_cam) for f in self._frames]

    def __len__(self):
        return len(self._frames)

    def __getitem__(self, i):
        return self._frames[i]

    def __iter__(self):
        return iter(self._frames)


def chessboard_bags(out_dir, data_dir=None) -> tuple[Path, Path]:
    """(map bag of the left views with board depth, query bag of the right views) in ``out_dir`` (made once)."""
    from match_ros.tools.bag_write import BagLayout, write_sequence_bag

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    map_bag, query_bag = out_dir / "chessboard_map_left", out_dir / "chessboard_query_right"
    if map_bag.exists() and query_bag.exists():
        return map_bag, query_bag
    cal = calibrations(data_dir)
    starts = {"left": 1_700_000_000_000_000_000, "right": 1_700_000_100_000_000_000}
    for side, bag in (("left", map_bag), ("right", query_bag)):
        start = starts[side]
        K, dist = cal[side]
        views = [board_view(data_dir / "chessboard" / f"{side}{i:02d}.jpg", K, dist) for i in INDICES]
        seq = _Views([v for v in views if v is not None], K, start)
        layout = BagLayout(camera_frame=f"{side}_camera_optical_frame")
        write_sequence_bag(bag, seq, with_depth=side == "left", layout=layout)
    return map_bag, query_bag
