"""Ready-made scenes, trajectories and sequences built from real photos (pure: numpy + OpenCV).

Scenes (world frame REP 103, metres) and the trajectory each one is designed for:
- "room":     4 x 4 m room, 2.5 m high: textured floor and four walls     -> "orbit"
- "corridor": 10 x 2 m corridor, 2.5 m high: walls, floor, ceiling, ends  -> "forward"
- "facade":   a 20 m wide, 6 m high facade at x = 8 m, ground, three panels
              standing at 4-6 m (several depths)                          -> "sweep"
Every plane shows a photo from ``test/data/textures`` (a random crop, sometimes mirrored,
drawn from the seed); neighbouring planes always show different photos.
Trajectories move a few cm and turn about 2 deg per frame (at 30 Hz) and keep the camera
looking at textured surfaces; they are smooth and periodic, so any number of frames stays
inside the scene.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .scene import Camera, Plane, Scene, Sequence, pose_from_ypr

TEXTURES_ENV = "MATCH_ROS_TEXTURES_DIR"
DEFAULT_START_NS = 1_700_000_000_000_000_000  # first stamp of generated sequences (2023-11-14T22:13:20Z)
SCENES = ("room", "corridor", "facade")
TRAJECTORIES = ("orbit", "forward", "sweep")
DEFAULT_TRAJECTORY = {"room": "orbit", "corridor": "forward", "facade": "sweep"}
_PHOTOS = ("aero1", "baboon", "board", "building", "fruits", "home", "leuvenA", "messi5", "starry_night")


def default_textures_dir() -> Path:
    """Folder of the texture photos: $MATCH_ROS_TEXTURES_DIR, else the repository's test/data/textures."""
    env = os.environ.get(TEXTURES_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "test" / "data" / "textures"
    if not path.is_dir():
        raise FileNotFoundError(f"texture photos not found in {path}: run from a source checkout of match_ros "
                                f"or set {TEXTURES_ENV} to a folder with {', '.join(p + '.jpg' for p in _PHOTOS)}")
    return path


def load_photos(textures_dir=None) -> dict:
    """{name: [H x W x 3] uint8 RGB} for the photos the scenes use."""
    folder = Path(textures_dir) if textures_dir is not None else default_textures_dir()
    photos = {}
    for name in _PHOTOS:
        bgr = cv2.imread(str(folder / f"{name}.jpg"), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"texture photo {folder / (name + '.jpg')} is missing or unreadable")
        photos[name] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return photos


def _texture(photo: np.ndarray, width_m: float, height_m: float, texels_per_m: float,
             rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``photo`` with the plane's aspect, maybe mirrored, resized to the texel density."""
    h, w = photo.shape[:2]
    aspect = width_m / height_m
    ch, cw = (h, h * aspect) if w / h > aspect else (w / aspect, w)
    scale = rng.uniform(0.75, 1.0)
    ch, cw = max(8, int(ch * scale)), max(8, int(cw * scale))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tw = int(min(2048, max(16, round(width_m * texels_per_m / 8) * 8)))
    th = int(min(2048, max(16, round(height_m * texels_per_m / 8) * 8)))
    interp = cv2.INTER_AREA if tw < cw else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (tw, th), interpolation=interp)


class _Builder:
    """Adds planes with photos taken in turn from ``order`` (crops and mirroring from the seed)."""

    def __init__(self, photos: dict, order, texels_per_m: float, seed: int):
        self.photos, self.order, self.density = photos, list(order), texels_per_m
        self.rng = np.random.default_rng(seed)
        self.planes: list = []

    def _add(self, origin, edge_u, edge_v, name):
        photo = self.photos[self.order[len(self.planes) % len(self.order)]]
        tex = _texture(photo, np.linalg.norm(edge_u), np.linalg.norm(edge_v), self.density, self.rng)
        self.planes.append(Plane(origin, edge_u, edge_v, tex, name=name))

    def wall(self, left_xy, right_xy, z0: float, z1: float, name: str):
        """Vertical wall between two floor points as seen from its textured side (left, right)."""
        (xl, yl), (xr, yr) = left_xy, right_xy
        self._add((xl, yl, z1), (xr - xl, yr - yl, 0.0), (0.0, 0.0, z0 - z1), name)

    def floor(self, x0, x1, y0, y1, z: float, name: str, facing_up: bool = True):
        """Horizontal rectangle x in [x0, x1], y in [y0, y1] at height z, textured towards +z or -z."""
        if facing_up:
            self._add((x1, y1, z), (0.0, y0 - y1, 0.0), (x0 - x1, 0.0, 0.0), name)
        else:
            self._add((x0, y0, z), (x1 - x0, 0.0, 0.0), (0.0, y1 - y0, 0.0), name)


def make_scene(name: str = "room", textures_dir=None, seed: int = 0) -> Scene:
    """One of SCENES, textured with the photos in ``textures_dir`` (default: default_textures_dir())."""
    if name not in SCENES:
        raise ValueError(f"unknown scene '{name}', expected one of {SCENES}")
    photos = load_photos(textures_dir)
    if name == "room":
        b = _Builder(photos, ("aero1", "starry_night", "fruits", "baboon", "board"), 256, seed)
        b.floor(-2, 2, -2, 2, 0.0, "floor")
        b.wall((2, 2), (2, -2), 0.0, 2.5, "wall_front")
        b.wall((-2, 2), (2, 2), 0.0, 2.5, "wall_left")
        b.wall((-2, -2), (-2, 2), 0.0, 2.5, "wall_back")
        b.wall((2, -2), (-2, -2), 0.0, 2.5, "wall_right")
    elif name == "corridor":
        order = ("building", "fruits", "leuvenA", "baboon", "home", "starry_night", "board", "messi5", "aero1")
        b = _Builder(photos, order, 256, seed)
        for k in range(4):
            b.wall((2.5 * k, 1), (2.5 * k + 2.5, 1), 0.0, 2.5, f"wall_left_{k}")
            b.wall((2.5 * k + 2.5, -1), (2.5 * k, -1), 0.0, 2.5, f"wall_right_{k}")
        for k in range(2):
            b.floor(5 * k, 5 * k + 5, -1, 1, 0.0, f"floor_{k}")
            b.floor(5 * k, 5 * k + 5, -1, 1, 2.5, f"ceiling_{k}", facing_up=False)
        b.wall((10, 1), (10, -1), 0.0, 2.5, "end_wall")
        b.wall((0, -1), (0, 1), 0.0, 2.5, "start_wall")
    else:
        order = ("building", "leuvenA", "home", "starry_night", "fruits", "aero1", "messi5", "baboon", "board")
        b = _Builder(photos, order, 96, seed)
        for k in range(5):
            b.wall((8, 10 - 4 * k), (8, 6 - 4 * k), 0.0, 6.0, f"facade_{k}")
        b.floor(0, 8, 0, 10, 0.0, "ground_left")
        b.floor(0, 8, -10, 0, 0.0, "ground_right")
        b.density = 192
        b.wall((5.0, 3.0), (5.0, 1.0), 0.0, 2.2, "panel_0")
        b.wall((4.0, -0.5), (4.0 + 1.8 * math.sin(0.5), -0.5 - 1.8 * math.cos(0.5)), 0.0, 1.8, "panel_1")
        b.wall((6.0, -2.5), (6.0, -5.0), 0.0, 2.6, "panel_2")
    return Scene(b.planes, background=(0, 0, 0), name=name)


def make_trajectory(kind: str, n_frames: int, seed: int = 0) -> list:
    """n_frames poses T_world_cam [4 x 4] float64 (one per frame at 30 Hz) of trajectory ``kind``.

    "orbit" (room): circles 0.5 m around the room centre looking outwards, 2 deg per frame.
    "forward" (corridor): walks 6 m along the corridor and back (cosine profile, <= 3 cm per frame).
    "sweep" (facade): slides +-2.5 m sideways facing the facade (sine profile, <= 2.5 cm per frame).
    All add slow head wobble (yaw, pitch, roll, height) with phases drawn from ``seed``.
    """
    if kind not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory '{kind}', expected one of {TRAJECTORIES}")
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    rng = np.random.default_rng([seed, 1])
    ph = rng.uniform(0, 2 * math.pi, 6)
    i = np.arange(n_frames, dtype=np.float64)
    wob = [np.sin(2 * math.pi * i / p + q) for p, q in zip((150, 210, 270, 330, 190, 250), ph)]
    deg = math.pi / 180
    if kind == "orbit":
        direction = 1.0 if rng.random() < 0.5 else -1.0
        theta = rng.uniform(0, 2 * math.pi) + direction * 2.0 * deg * i
        pos = np.stack([0.5 * np.cos(theta), 0.5 * np.sin(theta), 1.3 + 0.05 * wob[3]], axis=1)
        yaw, pitch, roll = theta + 12 * deg * wob[0], (12 + 3 * wob[1]) * deg, 2 * deg * wob[2]
    elif kind == "forward":
        period = math.pi * 6.0 / 0.03
        x = 1.0 + 3.0 * (1.0 - np.cos(2 * math.pi * i / period + rng.uniform(0, 0.3)))
        pos = np.stack([x, 0.25 * wob[3], 1.4 + 0.05 * wob[4]], axis=1)
        yaw, pitch, roll = 15 * deg * wob[0], (3 + 2 * wob[1]) * deg, 2 * deg * wob[2]
    else:
        period = 2 * math.pi * 2.5 / 0.025
        y = 2.5 * np.sin(2 * math.pi * i / period + rng.uniform(0, 2 * math.pi))
        pos = np.stack([0.5 + 0.3 * wob[3], y, 1.6 + 0.1 * wob[4]], axis=1)
        yaw, pitch, roll = 8 * deg * wob[0], (2 + 2 * wob[1]) * deg, 1.5 * deg * wob[2]
    yaw, pitch, roll = (np.broadcast_to(a, i.shape) for a in (yaw, pitch, roll))
    return [pose_from_ypr(pos[k], yaw[k], pitch[k], roll[k]) for k in range(n_frames)]


def make_sequence(scene: str = "room", trajectory: Optional[str] = None, n_frames: int = 60, *,
                  rate_hz: float = 30.0, camera: Optional[Camera] = None, seed: int = 0,
                  start_ns: int = DEFAULT_START_NS, photometric: bool = False, noise_sigma: float = 0.0,
                  textures_dir=None, scene_seed: Optional[int] = None) -> Sequence:
    """Scene ``scene`` seen along ``trajectory`` (default DEFAULT_TRAJECTORY[scene]), stamped at ``rate_hz``.

    Frame i has stamp start_ns + round(i * 1e9 / rate_hz) [ns].
    photometric: a sequence-wide gain in [0.75, 1.25] and gamma in [0.8, 1.25] drawn from ``seed``.
    noise_sigma: per-frame Gaussian noise [gray levels], seeded per frame.
    scene_seed: seed of the scene's textures (default: seed); the same scene_seed with another
    seed gives another trajectory through the same scene (mapping vs query sequences).
    """
    if scene not in SCENES:
        raise ValueError(f"unknown scene '{scene}', expected one of {SCENES}")
    if rate_hz <= 0:
        raise ValueError("rate_hz must be > 0")
    poses = make_trajectory(trajectory or DEFAULT_TRAJECTORY[scene], n_frames, seed=seed)
    stamps = [int(start_ns) + int(round(k * 1e9 / rate_hz)) for k in range(n_frames)]
    gain = gamma = 1.0
    if photometric:
        rng = np.random.default_rng([seed, 7])
        gain, gamma = float(rng.uniform(0.75, 1.25)), float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    scene_seed = seed if scene_seed is None else scene_seed
    return Sequence(make_scene(scene, textures_dir, seed=scene_seed), camera or Camera(), list(zip(stamps, poses)),
                    gain=gain, gamma=gamma, noise_sigma=noise_sigma, seed=seed)
