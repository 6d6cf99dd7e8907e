"""Ready-made scenes, trajectories and sequences built from real photos (pure: numpy + OpenCV).

Scenes (world frame REP 103, metres) and the trajectory each one is designed for:
- "room":     4 x 4 m room, 2.5 m high: textured floor and four walls     -> "orbit"
- "corridor": 10 x 2 m corridor, 2.5 m high: walls, floor, ceiling, ends  -> "forward"
- "facade":   a 20 m wide, 6 m high facade at x = 8 m, ground, three panels
              standing at 4-6 m (several depths)                          -> "sweep"
- "office":   6 x 5 m room, 2.6 m high, a free-standing partition and a
              cabinet in front of the walls (occlusions, several depths)  -> "loop"
- "street":   a 20 m wide, 8 m high facade at x = 10 m between two side
              buildings, ground, a parked van and a kiosk                 -> "stroll"
Every plane shows a photo from the package's ``textures`` folder (a random crop, sometimes
mirrored, drawn from the seed); neighbouring planes always show different photos. room,
corridor and facade use the photos the learned matchers were trained on (room and corridor
renders are training data); office and street use only photos that no training run saw
(UNSEEN_PHOTOS).
Trajectories move a few cm and turn about 2 deg per frame (at 30 Hz) and keep the camera
looking at textured surfaces; they are smooth and periodic, so any number of frames stays
inside the scene. "loop" and "stroll" scan left and right (+-35 deg) as a person mapping a
place would.

``make_changed_day_sequence`` renders a query sequence of a scene as a robot returning on another
day would see it: off the mapped path, looking up to 40 deg away from the mapped directions, dim
and uneven light, another camera response, motion blur and noise.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from match_ros.sim.scene import Camera, Lighting, Plane, Scene, Sequence, pose_from_ypr

TEXTURES_ENV = "MATCH_ROS_TEXTURES_DIR"
DEFAULT_START_NS = 1_700_000_000_000_000_000  # first stamp of generated sequences (2023-11-14T22:13:20Z)
SCENES = ("room", "corridor", "facade", "office", "street")
TRAJECTORIES = ("orbit", "forward", "sweep", "loop", "stroll")
DEFAULT_TRAJECTORY = {"room": "orbit", "corridor": "forward", "facade": "sweep", "office": "loop",
                      "street": "stroll"}
CHANGED_DAY_SCENES = ("office", "street")  # textures no training run saw: the changed-day benchmark scenes
# photo name -> file in the textures folder (see its LICENSE.md)
_PHOTO_FILES = {
    "aero1": "aero1.jpg", "baboon": "baboon.jpg", "board": "board.jpg", "building": "building.jpg",
    "fruits": "fruits.jpg", "home": "home.jpg", "leuvenA": "leuvenA.jpg", "messi5": "messi5.jpg",
    "starry_night": "starry_night.jpg",
    "cards": "cards.png", "chicky": "chicky_512.png", "street": "vtest_frame0.jpg", "camera": "camera.png",
    "coins": "coins.png", "hubble": "hubble_deep_field.jpg", "ihc": "ihc.png",
}
UNSEEN_PHOTOS = ("cards", "chicky", "street", "camera", "coins", "hubble", "ihc")


def default_textures_dir() -> Path:
    """Folder of the texture photos: $MATCH_ROS_TEXTURES_DIR, else the ``textures`` folder of this package."""
    env = os.environ.get(TEXTURES_ENV)
    path = Path(env) if env else Path(__file__).resolve().parent / "textures"
    if not path.is_dir():
        raise FileNotFoundError(f"texture photos not found in {path}: reinstall match_ros or set {TEXTURES_ENV} "
                                f"to a folder with {', '.join(sorted(_PHOTO_FILES.values()))}")
    return path


def load_photos(textures_dir=None, names=None) -> dict:
    """{name: [H x W x 3] uint8 RGB} for the photos the scenes use (all, or ``names``)."""
    folder = Path(textures_dir) if textures_dir is not None else default_textures_dir()
    photos = {}
    for name in names or _PHOTO_FILES:
        bgr = cv2.imread(str(folder / _PHOTO_FILES[name]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"texture photo {folder / _PHOTO_FILES[name]} is missing or unreadable")
        photos[name] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return photos


def texture_crop(photo: np.ndarray, width_m: float, height_m: float, texels_per_m: float,
                 rng: np.random.Generator, crop_scale: tuple = (0.75, 1.0)) -> np.ndarray:
    """A random crop of ``photo`` with the plane's aspect, maybe mirrored, resized to the texel density."""
    h, w = photo.shape[:2]
    aspect = width_m / height_m
    ch, cw = (h, h * aspect) if w / h > aspect else (w / aspect, w)
    scale = rng.uniform(*crop_scale)
    ch, cw = max(8, int(ch * scale)), max(8, int(cw * scale))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tw = int(min(2048, max(16, round(width_m * texels_per_m / 8) * 8)))
    th = int(min(2048, max(16, round(height_m * texels_per_m / 8) * 8)))
    interp = cv2.INTER_AREA if tw < cw else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (tw, th), interpolation=interp)


class PlaneBuilder:
    """Adds planes with photos taken in turn from ``order`` (crops and mirroring from the seed)."""

    def __init__(self, photos: dict, order, texels_per_m: float, seed: int, crop_scale: tuple = (0.75, 1.0)):
        self.photos, self.order, self.density, self.crop_scale = photos, list(order), texels_per_m, crop_scale
        self.rng = np.random.default_rng(seed)
        self.planes: list = []

    def _add(self, origin, edge_u, edge_v, name):
        photo = self.photos[self.order[len(self.planes) % len(self.order)]]
        tex = texture_crop(photo, np.linalg.norm(edge_u), np.linalg.norm(edge_v), self.density, self.rng,
                           self.crop_scale)
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

    def box(self, x0, x1, y0, y1, height: float, name: str):
        """An axis-aligned box standing on the floor: four sides facing out and a top."""
        self.wall((x1, y0), (x1, y1), 0.0, height, f"{name}_front")
        self.wall((x1, y1), (x0, y1), 0.0, height, f"{name}_left")
        self.wall((x0, y1), (x0, y0), 0.0, height, f"{name}_back")
        self.wall((x0, y0), (x1, y0), 0.0, height, f"{name}_right")
        self.floor(x0, x1, y0, y1, height, f"{name}_top")


def make_scene(name: str = "room", textures_dir=None, seed: int = 0) -> Scene:
    """One of SCENES, textured with the photos in ``textures_dir`` (default: default_textures_dir())."""
    if name not in SCENES:
        raise ValueError(f"unknown scene '{name}', expected one of {SCENES}")
    photos = load_photos(textures_dir)
    if name == "room":
        b = PlaneBuilder(photos, ("aero1", "starry_night", "fruits", "baboon", "board"), 256, seed)
        b.floor(-2, 2, -2, 2, 0.0, "floor")
        b.wall((2, 2), (2, -2), 0.0, 2.5, "wall_front")
        b.wall((-2, 2), (2, 2), 0.0, 2.5, "wall_left")
        b.wall((-2, -2), (-2, 2), 0.0, 2.5, "wall_back")
        b.wall((2, -2), (-2, -2), 0.0, 2.5, "wall_right")
    elif name == "corridor":
        order = ("building", "fruits", "leuvenA", "baboon", "home", "starry_night", "board", "messi5", "aero1")
        b = PlaneBuilder(photos, order, 256, seed)
        for k in range(4):
            b.wall((2.5 * k, 1), (2.5 * k + 2.5, 1), 0.0, 2.5, f"wall_left_{k}")
            b.wall((2.5 * k + 2.5, -1), (2.5 * k, -1), 0.0, 2.5, f"wall_right_{k}")
        for k in range(2):
            b.floor(5 * k, 5 * k + 5, -1, 1, 0.0, f"floor_{k}")
            b.floor(5 * k, 5 * k + 5, -1, 1, 2.5, f"ceiling_{k}", facing_up=False)
        b.wall((10, 1), (10, -1), 0.0, 2.5, "end_wall")
        b.wall((0, -1), (0, 1), 0.0, 2.5, "start_wall")
    elif name == "facade":
        order = ("building", "leuvenA", "home", "starry_night", "fruits", "aero1", "messi5", "baboon", "board")
        b = PlaneBuilder(photos, order, 96, seed)
        for k in range(5):
            b.wall((8, 10 - 4 * k), (8, 6 - 4 * k), 0.0, 6.0, f"facade_{k}")
        b.floor(0, 8, 0, 10, 0.0, "ground_left")
        b.floor(0, 8, -10, 0, 0.0, "ground_right")
        b.density = 192
        b.wall((5.0, 3.0), (5.0, 1.0), 0.0, 2.2, "panel_0")
        b.wall((4.0, -0.5), (4.0 + 1.8 * math.sin(0.5), -0.5 - 1.8 * math.cos(0.5)), 0.0, 1.8, "panel_1")
        b.wall((6.0, -2.5), (6.0, -5.0), 0.0, 2.6, "panel_2")
    elif name == "office":
        # planes sharing a photo show small crops of it: different parts, as different walls would
        b = PlaneBuilder(photos, ("cards", "camera", "street", "coins", "hubble", "chicky", "ihc"), 200, seed,
                         (0.4, 0.55))
        b.floor(-3, 3, -2.5, 2.5, 0.0, "floor")
        for k, (a, c) in enumerate((((3, 2.5), (3, 0)), ((3, 0), (3, -2.5)), ((-3, 2.5), (0, 2.5)),
                                    ((0, 2.5), (3, 2.5)), ((-3, -2.5), (-3, 0)), ((-3, 0), (-3, 2.5)),
                                    ((3, -2.5), (0, -2.5)), ((0, -2.5), (-3, -2.5)))):
            b.wall(a, c, 0.0, 2.6, f"wall_{k}")
        # a free-standing partition (two faces 3 cm apart, each with its own photo) and a cabinet
        b.wall((2.2, -0.6), (1.4, -1.8), 0.0, 1.8, "partition_a")
        b.wall((1.425, -1.817), (2.225, -0.617), 0.0, 1.8, "partition_b")
        b.box(-2.6, -1.9, 1.2, 2.1, 1.3, "cabinet")
    elif name == "street":
        b = PlaneBuilder(photos, ("street", "coins", "hubble", "cards", "camera", "ihc", "chicky"), 128, seed,
                         (0.4, 0.55))
        for k in range(5):
            b.wall((10, 10 - 4 * k), (10, 6 - 4 * k), 0.0, 8.0, f"facade_{k}")
        for k in range(2):
            b.wall((3.0 + 3.5 * k, 7), (6.5 + 3.5 * k, 7), 0.0, 6.0, f"left_building_{k}")
            b.wall((6.5 + 3.5 * k, -7), (3.0 + 3.5 * k, -7), 0.0, 6.0, f"right_building_{k}")
        b.floor(0, 10, 0, 7, 0.0, "ground_left")
        b.floor(0, 10, -7, 0, 0.0, "ground_right")
        b.density = 192
        b.box(6.0, 8.0, 1.5, 3.1, 1.6, "van")
        b.wall((5.0, -2.0), (5.0, -3.6), 0.0, 2.2, "kiosk")
    return Scene(b.planes, background=(0, 0, 0), name=name)


def make_trajectory(kind: str, n_frames: int, seed: int = 0, scan_deg: Optional[float] = None,
                    scan_period: float = 150.0) -> list:
    """n_frames poses T_world_cam [4 x 4] float64 (one per frame at 30 Hz) of trajectory ``kind``.

    "orbit" (room): circles 0.5 m around the room centre looking outwards, 2 deg per frame.
    "forward" (corridor): walks 6 m along the corridor and back (cosine profile, <= 3 cm per frame).
    "sweep" (facade): slides +-2.5 m sideways facing the facade (sine profile, <= 2.5 cm per frame).
    "loop" (office): an ellipse (1.0 x 0.7 m) around the room centre, looking outwards, 2 deg per frame.
    "stroll" (street): walks +-4 m along the street facing the facade (sine profile, <= 3 cm per frame).
    All add slow head wobble (yaw, pitch, roll, height) with phases drawn from ``seed``. loop and
    stroll scan left and right by +-35 deg (period 150 frames); ``scan_deg`` replaces the yaw wobble or
    scan of any kind by a scan of that amplitude with period ``scan_period`` frames.
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
    if kind in ("loop", "stroll") and scan_deg is None:
        scan_deg = 35.0
    if scan_deg is not None:  # the same phase draws as the wobble: trajectories of one seed stay comparable
        wob[0] = (scan_deg / {"orbit": 12, "forward": 15, "sweep": 8}.get(kind, 1.0)
                  * np.sin(2 * math.pi * i / scan_period + ph[0]))
    if kind == "loop":
        direction = 1.0 if rng.random() < 0.5 else -1.0
        theta = rng.uniform(0, 2 * math.pi) + direction * 2.0 * deg * i
        pos = np.stack([1.0 * np.cos(theta), 0.7 * np.sin(theta), 1.35 + 0.05 * wob[3]], axis=1)
        yaw, pitch, roll = theta + wob[0] * deg, (10 + 3 * wob[1]) * deg, 2 * deg * wob[2]
    elif kind == "stroll":
        period = 2 * math.pi * 4.0 / 0.03
        y = 4.0 * np.sin(2 * math.pi * i / period + rng.uniform(0, 2 * math.pi))
        pos = np.stack([1.5 + 0.3 * wob[3], y, 1.6 + 0.1 * wob[4]], axis=1)
        yaw, pitch, roll = wob[0] * deg, (-3 + 2 * wob[1]) * deg, 1.5 * deg * wob[2]
    elif kind == "orbit":
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


# where a changed day's point light may hang in each scene: (x range, y range, z range) [m]
_LIGHT_BOX = {"room": ((-1.8, 1.8), (-1.8, 1.8), (2.3, 2.45)), "corridor": ((0.5, 9.5), (-0.8, 0.8), (2.3, 2.45)),
              "facade": ((1.0, 7.0), (-8.0, 8.0), (5.0, 7.0)), "office": ((-2.7, 2.7), (-2.2, 2.2), (2.4, 2.55)),
              "street": ((1.0, 9.0), (-6.0, 6.0), (5.0, 7.0))}
_OUTDOOR = ("facade", "street")


def offset_path(poses: list, offset_m: float, side: float) -> list:
    """Poses moved ``offset_m`` sideways (horizontal, perpendicular to the direction of travel), orientation kept.

    side: +1 to the left of the direction of travel, -1 to the right.
    """
    pos = np.array([T[:3, 3] for T in poses])
    out, last = [], np.array([1.0, 0.0])
    for k, T in enumerate(poses):
        d = pos[min(k + 1, len(pos) - 1), :2] - pos[max(k - 1, 0), :2]
        if np.linalg.norm(d) > 1e-6:
            last = d / np.linalg.norm(d)
        T = T.copy()
        T[:2, 3] += side * offset_m * np.array([-last[1], last[0]])
        out.append(T)
    return out


def make_changed_day_sequence(scene: str, n_frames: int = 120, *, seed: int = 1, scene_seed: int = 0,
                              offset_m: float = 0.5, yaw_deg: float = 40.0, ambient: float = 0.3,
                              gamma_range: tuple = (0.7, 1.4), blur_share: float = 0.3,
                              blur_px: tuple = (5.0, 15.0), noise_sigma: float = 5.0, rate_hz: float = 30.0,
                              camera: Optional[Camera] = None, start_ns: int = DEFAULT_START_NS,
                              textures_dir=None) -> Sequence:
    """A query sequence of ``scene`` as a robot returning on a changed day sees it (mapped with scene_seed).

    - path: the scene's trajectory (another phase, from ``seed``) moved ``offset_m`` sideways off the path;
      instead of its own yaw wobble or scan the camera turns up to +-``yaw_deg`` (period 200 frames);
    - light: ``ambient`` plus one point light at a random place (``Lighting``), i.e. dim and uneven;
    - camera response: gamma drifting through ``gamma_range`` (period 120 frames);
    - motion blur of ``blur_px`` length in a random direction on a random ``blur_share`` of the frames;
    - Gaussian noise of ``noise_sigma`` gray levels.
    Everything is drawn from ``seed``; the scene's textures come from ``scene_seed`` (the map's).
    """
    if scene not in SCENES:
        raise ValueError(f"unknown scene '{scene}', expected one of {SCENES}")
    if not 0.0 <= blur_share <= 1.0 or gamma_range[0] <= 0 or offset_m < 0:
        raise ValueError("blur_share must be in [0, 1], gamma_range positive and offset_m >= 0")
    rng = np.random.default_rng([seed, 11])
    poses = make_trajectory(DEFAULT_TRAJECTORY[scene], n_frames, seed=seed, scan_deg=yaw_deg, scan_period=200.0)
    poses = offset_path(poses, offset_m, 1.0 if rng.random() < 0.5 else -1.0)
    box = _LIGHT_BOX[scene]
    light = Lighting(tuple(float(rng.uniform(*r)) for r in box), ambient=ambient, intensity=1.0,
                     falloff_m=6.0 if scene in _OUTDOOR else 2.5)
    i = np.arange(n_frames)
    lo, hi = np.log(gamma_range[0]), np.log(gamma_range[1])
    gamma = np.exp(lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * math.pi * i / 120.0 + rng.uniform(0, 2 * math.pi))))
    blurred = rng.random(n_frames) < blur_share
    lengths, angles = rng.uniform(*blur_px, n_frames), rng.uniform(0.0, 180.0, n_frames)
    blur = [(float(lengths[k]), float(angles[k])) if blurred[k] else None for k in range(n_frames)]
    stamps = [int(start_ns) + int(round(k * 1e9 / rate_hz)) for k in range(n_frames)]
    return Sequence(make_scene(scene, textures_dir, seed=scene_seed), camera or Camera(), list(zip(stamps, poses)),
                    gamma=gamma.tolist(), noise_sigma=noise_sigma, seed=seed, lighting=light, blur=blur)


def closest_view_pairs(mapped: Sequence, other: Sequence, indices, baseline_m=(0.15, 1.0)) -> list:
    """Frame pairs (mapped frame, other frame) for the ``other`` frames at ``indices``: the mapped frame with the
    closest viewing direction among those ``baseline_m`` (min, max) away [m] (a baseline for two-view geometry);
    frames without such a partner are skipped. Used for changed-day pairs (evaluation and training)."""
    poses = np.stack([T for _, T in mapped.poses])
    pairs = []
    for j in indices:
        T = other.poses[int(j)][1]
        angle = np.degrees(np.arccos(np.clip(poses[:, :3, 2] @ T[:3, 2], -1.0, 1.0)))
        dist = np.linalg.norm(poses[:, :3, 3] - T[:3, 3], axis=1)
        ok = (dist >= baseline_m[0]) & (dist <= baseline_m[1])
        if ok.any():
            pairs.append((mapped[int(np.flatnonzero(ok)[np.argmin(angle[ok])])], other[int(j)]))
    return pairs
