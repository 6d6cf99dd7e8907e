"""Procedural changed-day relocalization cases: a new place from every integer seed (pure: numpy + OpenCV).

``make_procedural_case(seed)`` builds, from the seed alone (and the photos installed, see below):
- a place: an indoor room (4-8 m deep along x, 4-9 m wide along y, 2.4-3.2 m high, walls in segments, floor,
  ceiling) or an outdoor street (a facade 6-10 m ahead at +x, side buildings of several heights, ground, sky),
  with 0-3 obstacles (boxes, free-standing partitions / billboards) placed away from the camera paths;
- textures: every plane a random crop of a random photo of ``photo_pool()``, touching planes never the same photo;
  hard cases on purpose: on some seeds one or two walls get a repetitive texture (a small crop tiled 3-6 times)
  or a mirror-symmetric one, and on some seeds the same crop hangs on two distant walls (a look-alike place);
- a mapping run: 240-360 frames at 30 Hz walking one closed loop (an ellipse) at 1.2-1.7 m height, sharp and
  evenly lit, scanning left and right (+-28-35 deg) at the walls (room: looking outwards; street: at the facade);
- a changed-day query run: the same loop 0.2-0.6 m further in or out, another phase and direction, walked at
  0.3-0.5 m/s and photographed at 1-3 Hz (30 / p Hz, p in 10..30) with 5-15 % of the frames dropped (isolated
  drops: gaps of one or two periods), yaw up to +-30-40 deg around the base direction, a dim point light
  (ambient 0.25-0.5), a drifting camera gamma, an auto-exposure that lifts dark frames by up to 2x (never
  fully), motion blur on 20-40 % of the frames, 3-6 gray levels of noise;
- odometry of the query run (``odometry_poses``): none, drifting odom -> camera poses (odom offset from map by a
  random transform of the seed), or the same poses delivered ``odom_delay_s`` (0.05-0.6 s) after each image.

Every pose of both runs keeps >= MIN_CLEARANCE_M from every plane (and outside every obstacle).

THE SEED SPLIT (tune, report, fresh seeds; what keeps the figures a measurement of new places): see
``match_ros.sim.seeds``, kept apart so that moving it does not change the cases.
A case depends on the seed AND on the photos installed (photo_pool), the camera and this generator's code: the
bag folders carry a hash of all of them (``case_key``), so a cached case is never confused with another.

Conventions as in ``match_ros.sim.scene``: world REP 103 (x forward, y left, z up, metres), optical camera frame,
T_world_cam [4 x 4] float64 (the world is the map frame of the bags).

Preview:  python -m match_ros.sim.procedural --seed N --out DIR   (bags, case.json and a contact sheet PNG)
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from match_ros.sim.factories import DEFAULT_START_NS, PlaneBuilder, default_textures_dir, texture_crop
from match_ros.sim.scene import Camera, Lighting, Plane, Scene, Sequence, pose_from_ypr
from match_ros.sim.seeds import (FRESH_SEED_MIN, REPORT_SEEDS, RETIRED_REPORT_SEEDS,  # noqa: F401 (re-exported)
                                 TUNE_SEEDS, fresh_seed, seed_split)

GENERATOR_VERSION = 1  # bump when a change of this module changes the cases a seed gives
PLACES = ("room", "street")
ODOMETRY_KINDS = ("none", "drift", "delayed")
MAP_RATE_HZ = 30.0
MIN_CLEARANCE_M = 0.6  # every camera pose keeps this distance from every plane [m]
MIN_PHOTO_SIDE_PX = 200  # smaller pool images are skipped
MAX_PHOTO_SIDE_PX = 2048  # larger photos are downscaled on loading
SKY_RGB = (165, 192, 222)  # background of outdoor places
AE_TARGET_GRAY = 70.0  # the query camera's auto-exposure lifts darker frames towards this mean gray level
AE_MAX_GAIN = 2.0  # ... by this factor at most
ODOM_SIGMA_T_M = 0.001  # odometry random walk per 30 Hz step, x and y [m]
ODOM_SIGMA_YAW_DEG = 0.02  # odometry random walk per 30 Hz step, yaw [deg]

# where the pool looks for photos: (folder, accepted suffixes); missing folders are skipped
_SYSTEM_PHOTO_DIRS = ((Path("/usr/share/backgrounds/gnome"), (".webp", ".jpg", ".jpeg", ".png")),
                      (Path("/usr/share/doc/opencv-doc/examples/data"), (".jpg", ".jpeg", ".png")))
# rng streams drawn from np.random.default_rng([seed, stream, ...]): one per concern, so changing how one thing is
# drawn does not reshuffle the others
_S_LAYOUT, _S_TEXTURE, _S_QUERY, _S_ODOM = 1, 2, 3, 4
_MAX_ATTEMPTS = 20
_SOURCES = ("procedural.py", "scene.py", "factories.py")  # code whose text goes into case_key


# ----------------------------------------------------------------------------- seeds
def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------- photo pool
def _photo_sources() -> list:
    """[(folder, suffixes)] in priority order: package textures, scikit-image's data folder, system folders."""
    sources = [(default_textures_dir(), (".jpg", ".jpeg", ".png"))]
    spec = importlib.util.find_spec("skimage")  # finds the installed package without importing it
    if spec is not None and spec.submodule_search_locations:
        sources += [(Path(loc) / "data", (".png", ".jpg", ".jpeg")) for loc in spec.submodule_search_locations]
    return sources + list(_SYSTEM_PHOTO_DIRS)


def _image_size(path: Path) -> Optional[tuple]:
    """(width, height) of an image file from its header (PIL), or by decoding it; None if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return tuple(im.size)
    except Exception:  # noqa: BLE001 -- no PIL, or a format it cannot read: decode with OpenCV
        pass
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if img is None else (img.shape[1], img.shape[0])


def _file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _pool() -> tuple:
    """((path, sha256 of the file), ...) in ``_pool_order``; files with the same content are kept once."""
    seen, out = set(), []
    for folder, suffixes in _photo_sources():
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in suffixes or not path.is_file():
                continue
            size = _image_size(path)
            if size is None or min(size) < MIN_PHOTO_SIDE_PX:
                continue
            digest = _file_digest(path)
            if digest not in seen:
                seen.add(digest)
                out.append((str(path), digest))
    if not out:
        raise FileNotFoundError(f"no photo of at least {MIN_PHOTO_SIDE_PX} px in {default_textures_dir()}")
    return tuple(sorted(out, key=_pool_order))


def _pool_order(entry: tuple) -> tuple:
    """Sort key of a pool entry that does not depend on where the package or its environment lives: the system
    folders by their fixed paths, then scikit-image's files, then the package's textures, each by file name. (Sorted
    by absolute path, a checkout under /tmp listed its textures before /usr's photos, so every seed was another
    place there than under /work; this order is the one /work/main had, so the cases measured there are unchanged.)"""
    path = Path(entry[0])
    system = [str(folder) for folder, _ in _SYSTEM_PHOTO_DIRS]
    if any(str(path).startswith(folder + "/") for folder in system):
        return (0, str(path))
    return (1 if path.parent != default_textures_dir() else 2, path.name)


def photo_pool() -> list:
    """The image paths [str] the cases take their textures from, in an order independent of where they live.

    The package's ``textures`` folder (required), then where present: scikit-image's bundled ``skimage/data``
    files (found on disk, nothing is downloaded), /usr/share/backgrounds/gnome (webp/jpg/png, no SVG) and
    /usr/share/doc/opencv-doc/examples/data. Images under MIN_PHOTO_SIDE_PX on a side are skipped, and files with
    the same content are listed once. Nothing is decoded here (photos load lazily, cached).
    """
    return [p for p, _ in _pool()]


@functools.lru_cache(maxsize=32)
def load_photo(path: str) -> np.ndarray:
    """[H x W x 3] uint8 RGB of a pool photo (read-only, cached), downscaled to MAX_PHOTO_SIDE_PX at most."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"photo {path} is missing or unreadable")
    scale = MAX_PHOTO_SIDE_PX / max(bgr.shape[:2])
    if scale < 1.0:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb.flags.writeable = False
    return rgb


def _textured_enough(img: np.ndarray, min_std: float = 12.0, min_mean: float = 45.0, min_edges: float = 0.1) -> bool:
    """True if an RGB image, seen at 128 x 128, has contrast (gray std >= min_std), is not mostly dark (gray mean
    >= min_mean) and has detail (a share >= min_edges of its pixels with a Sobel gradient above 40)."""
    small = cv2.resize(np.ascontiguousarray(img), (128, 128), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    edges = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)) > 40.0
    return float(gray.std()) >= min_std and float(gray.mean()) >= min_mean and float(edges.mean()) >= min_edges


@functools.lru_cache(maxsize=256)
def _photo_usable(path: str) -> bool:
    """A photo worth a wall: not flat (gnome's 'vnc', 'symbolic', 'adwaita' wallpapers), not nearly black on the
    whole (hubble_deep_field)."""
    return _textured_enough(load_photo(path), min_std=8.0, min_mean=25.0, min_edges=0.05)


# ----------------------------------------------------------------------------- geometry helpers
@dataclass
class _PlaneSpec:
    """A plane before texturing: as Plane (origin, edge_u, edge_v [m]) plus texel density and role."""

    origin: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    name: str
    density: float  # texels per metre
    role: str  # "wall" (walls, facades, buildings: hard-case candidates), "floor" (floor, ceiling, ground), "obstacle"

    @property
    def size_m(self) -> tuple:
        return float(np.linalg.norm(self.edge_u)), float(np.linalg.norm(self.edge_v))

    @property
    def centre(self) -> np.ndarray:
        return self.origin + 0.5 * self.edge_u + 0.5 * self.edge_v

    def corners(self) -> np.ndarray:
        o, u, v = self.origin, self.edge_u, self.edge_v
        return np.stack([o, o + u, o + u + v, o + v])


class _Planner(PlaneBuilder):
    """factories.PlaneBuilder's geometry (wall, floor, box) recording plane specs; textures come later."""

    def __init__(self):
        super().__init__({}, (), 1.0, 0)  # no photos: _add below records the plane instead of texturing it
        self.specs: list = []
        self.role = "wall"

    def _add(self, origin, edge_u, edge_v, name):
        self.specs.append(_PlaneSpec(np.asarray(origin, np.float64), np.asarray(edge_u, np.float64),
                                     np.asarray(edge_v, np.float64), name, self.density, self.role))

    def partition(self, a_xy, b_xy, height: float, name: str, thickness: float = 0.03):
        """A free-standing panel from a_xy to b_xy on the floor: two faces ``thickness`` apart."""
        a, b = np.asarray(a_xy, np.float64), np.asarray(b_xy, np.float64)
        d = (b - a) / np.linalg.norm(b - a)
        n = 0.5 * thickness * np.array([-d[1], d[0]])
        self.wall(a + n, b + n, 0.0, height, f"{name}_a")
        self.wall(b - n, a - n, 0.0, height, f"{name}_b")


def rect_distance(points, origin, edge_u, edge_v) -> np.ndarray:
    """[N] distance [m] from points [N x 3] to the rectangle origin + a edge_u + b edge_v, a, b in [0, 1]."""
    p = np.atleast_2d(np.asarray(points, np.float64)) - np.asarray(origin, np.float64)
    u, v = np.asarray(edge_u, np.float64), np.asarray(edge_v, np.float64)
    a = np.clip(p @ u / (u @ u), 0.0, 1.0)
    b = np.clip(p @ v / (v @ v), 0.0, 1.0)
    return np.linalg.norm(p - a[:, None] * u - b[:, None] * v, axis=1)


def plane_clearance(planes, points) -> np.ndarray:
    """[N] distance [m] from each point [N x 3] to the nearest of ``planes`` (Plane or specs with origin/edges)."""
    pts = np.atleast_2d(np.asarray(points, np.float64))
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be [N x 3], got {pts.shape}")
    return np.min([rect_distance(pts, p.origin, p.edge_u, p.edge_v) for p in planes], axis=0)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] distance from 2-D points [N x 2] to the segment a-b."""
    d = b - a
    t = np.clip((p - a) @ d / max(d @ d, 1e-18), 0.0, 1.0)
    return np.linalg.norm(p - a - t[:, None] * d, axis=1)


def polygon_distance(points_xy, polygon) -> np.ndarray:
    """[N] distance [m] from 2-D points [N x 2] to a convex polygon [K x 2] (counter-clockwise); 0 inside."""
    p = np.atleast_2d(np.asarray(points_xy, np.float64))
    poly = np.asarray(polygon, np.float64)
    edges = [(poly[k], poly[(k + 1) % len(poly)]) for k in range(len(poly))]
    dist = np.min([_segment_distance(p, a, b) for a, b in edges], axis=0)
    inside = np.all([(b[0] - a[0]) * (p[:, 1] - a[1]) - (b[1] - a[1]) * (p[:, 0] - a[0]) >= 0 for a, b in edges],
                    axis=0)
    return np.where(inside, 0.0, dist)


def _rectangle(centre, length: float, width: float, angle: float) -> np.ndarray:
    """[4 x 2] counter-clockwise corners of a rectangle (length along ``angle`` [rad])."""
    d, n = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    c = np.asarray(centre, np.float64)
    return np.stack([c - 0.5 * length * d - 0.5 * width * n, c + 0.5 * length * d - 0.5 * width * n,
                     c + 0.5 * length * d + 0.5 * width * n, c - 0.5 * length * d + 0.5 * width * n])


def _polygons_apart(p: np.ndarray, q: np.ndarray, gap: float) -> bool:
    """True if two convex polygons keep ``gap`` [m] (tested along their outlines every 5 cm)."""
    def outline(poly):
        pts = [poly[k] + t * (poly[(k + 1) % len(poly)] - poly[k])
               for k in range(len(poly)) for t in np.linspace(0, 1, 2 + int(np.linalg.norm(
                   poly[(k + 1) % len(poly)] - poly[k]) / 0.05))]
        return np.asarray(pts)
    return bool(polygon_distance(outline(p), q).min() >= gap and polygon_distance(outline(q), p).min() >= gap)


# ----------------------------------------------------------------------------- layout
@dataclass
class _Layout:
    place: str
    bounds: tuple  # ((xmin, xmax), (ymin, ymax), (zmin, zmax)) of the free space [m]
    specs: list
    loop: dict  # centre (x, y), semi-axes a (x), b (y) of the mapped loop [m]
    light_box: tuple  # ((x range), (y range), (z range)) where the changed day's light may hang [m]
    dims: dict  # the drawn dimensions, for case.json


def _room(rng: np.random.Generator, p: _Planner) -> _Layout:
    depth, width, height = rng.uniform(4.0, 8.0), rng.uniform(4.0, 9.0), rng.uniform(2.4, 3.2)
    x0, x1, y0, y1 = -depth / 2, depth / 2, -width / 2, width / 2
    n_x = max(1, int(round(depth / rng.uniform(2.0, 3.0))))  # segments of the walls along x (left, right)
    n_y = max(1, int(round(width / rng.uniform(2.0, 3.0))))  # segments of the walls along y (front, back)
    p.role, p.density = "floor", 128
    e = 0.02  # floor and ceiling reach under the walls: no crack at the edges
    p.floor(x0 - e, x1 + e, y0 - e, y1 + e, 0.0, "floor")
    p.floor(x0 - e, x1 + e, y0 - e, y1 + e, height, "ceiling", facing_up=False)
    p.role, p.density = "wall", 200
    ys, xs = np.linspace(y1, y0, n_y + 1), np.linspace(x0, x1, n_x + 1)
    for k in range(n_y):
        p.wall((x1, ys[k]), (x1, ys[k + 1]), 0.0, height, f"wall_front_{k}")
    for k in range(n_x):
        p.wall((xs[k], y1), (xs[k + 1], y1), 0.0, height, f"wall_left_{k}")
    for k in range(n_y):
        p.wall((x0, ys[n_y - k]), (x0, ys[n_y - k - 1]), 0.0, height, f"wall_back_{k}")
    for k in range(n_x):
        p.wall((xs[n_x - k], y0), (xs[n_x - k - 1], y0), 0.0, height, f"wall_right_{k}")
    margin = 1.3  # loop to wall: clearance 0.6 + query offset <= 0.6 + 0.1
    return _Layout("room", ((x0, x1), (y0, y1), (0.0, height)), p.specs, _loop(rng, x1 - margin, y1 - margin),
                   ((x0 + 0.5, x1 - 0.5), (y0 + 0.5, y1 - 0.5), (height - 0.3, height - 0.1)),
                   {"depth_m": depth, "width_m": width, "height_m": height})


def _street(rng: np.random.Generator, p: _Planner) -> _Layout:
    front, half, back = rng.uniform(6.0, 10.0), rng.uniform(5.0, 8.0), -rng.uniform(4.0, 6.0)
    n_f = max(2, int(round(2 * half / rng.uniform(3.0, 4.5))))
    p.role, p.density = "floor", 64
    p.floor(back, front + 0.02, 0.0, half + 0.02, 0.0, "ground_left")
    p.floor(back, front + 0.02, -half - 0.02, 0.0, 0.0, "ground_right")
    p.role, p.density = "wall", 96
    ys = np.linspace(half, -half, n_f + 1)
    heights = rng.uniform(9.0, 14.0, n_f)
    for k in range(n_f):
        p.wall((front, ys[k]), (front, ys[k + 1]), 0.0, heights[k], f"facade_{k}")
    n_s = max(2, int(round((front - back) / rng.uniform(3.0, 5.0))))
    xs = np.linspace(back, front, n_s + 1)
    side_heights = rng.uniform(7.0, 12.0, (2, n_s))
    for k in range(n_s):
        p.wall((xs[k], half), (xs[k + 1], half), 0.0, side_heights[0, k], f"building_left_{k}")
        p.wall((xs[n_s - k], -half), (xs[n_s - k - 1], -half), 0.0, side_heights[1, n_s - k - 1],
               f"building_right_{k}")
    loop = _loop(rng, 0.8, half - 1.3, a_range=(0.3, 0.8), b_share=(0.5, 0.9), free_x=False)
    return _Layout("street", ((back, front), (-half, half), (0.0, float(heights.max()))), p.specs, loop,
                   ((back + 1.0, front - 1.0), (-half + 1.0, half - 1.0), (4.0, 7.0)),
                   {"facade_distance_m": front, "half_width_m": half, "back_x_m": back,
                    "facade_heights_m": heights.tolist()})


def _loop(rng, a_lim: float, b_lim: float, a_range=None, b_share=(0.5, 0.9), free_x: bool = True) -> dict:
    """Centre and semi-axes of the mapped ellipse inside |x - cx| <= a_lim, |y - cy| <= b_lim (then a shift)."""
    a = rng.uniform(*a_range) if a_range else max(0.35, rng.uniform(0.55, 1.0) * a_lim)
    b = max(0.35, rng.uniform(*b_share) * b_lim)
    cx = rng.uniform(-1.0, 1.0) * max(0.0, a_lim - a) if free_x else 0.0
    cy = rng.uniform(-1.0, 1.0) * max(0.0, b_lim - b)
    return {"centre": (float(cx), float(cy)), "a": float(a), "b": float(b)}


def _place_obstacles(rng, layout: _Layout, p: _Planner, path_xy: np.ndarray) -> list:
    """0-3 boxes / partitions at random places >= 0.8 m from every path point; [{kind, polygon, height}]."""
    (x0, x1), (y0, y1), _ = layout.bounds
    if layout.place == "street":
        x0 = x0 + 0.5
    n = int(rng.integers(0, 4))
    placed = []
    p.role = "obstacle"
    for k in range(n):
        kind = "box" if rng.random() < 0.6 else "partition"
        for _ in range(40):
            if layout.place == "room":
                p.density = 200
                if kind == "box":
                    length, width, height = rng.uniform(0.5, 1.4), rng.uniform(0.4, 0.9), rng.uniform(0.7, 1.8)
                else:
                    length, width, height = rng.uniform(0.8, 1.8), 0.03, rng.uniform(1.4, 2.0)
            else:
                p.density = 160
                if kind == "box":
                    van = rng.random() < 0.5
                    length = rng.uniform(3.8, 4.8) if van else rng.uniform(1.2, 2.2)
                    width = rng.uniform(1.7, 2.0) if van else length
                    height = rng.uniform(1.7, 2.2) if van else rng.uniform(2.0, 2.6)
                else:
                    length, width, height = rng.uniform(1.5, 3.0), 0.03, rng.uniform(1.8, 2.6)
            angle = float(rng.integers(0, 2)) * math.pi / 2 if kind == "box" else rng.uniform(0.0, math.pi)
            centre = (rng.uniform(x0, x1), rng.uniform(y0, y1))
            poly = _rectangle(centre, length, width, angle)
            if (poly[:, 0].min() < x0 + 0.05 or poly[:, 0].max() > x1 - 0.05 or poly[:, 1].min() < y0 + 0.05
                    or poly[:, 1].max() > y1 - 0.05):
                continue
            if polygon_distance(path_xy, poly).min() < 0.8:
                continue
            if not all(_polygons_apart(poly, o["polygon"], 0.3) for o in placed):
                continue
            name = f"obstacle_{k}_{kind}"
            if kind == "box":
                p.box(poly[:, 0].min(), poly[:, 0].max(), poly[:, 1].min(), poly[:, 1].max(), height, name)
            else:
                mid = 0.5 * (poly[0] + poly[3]), 0.5 * (poly[1] + poly[2])
                p.partition(mid[0], mid[1], height, name)
            placed.append({"kind": kind, "polygon": poly, "height": float(height)})
            break
    return placed


# ----------------------------------------------------------------------------- paths
def _ellipse_by_arc(a: float, b: float, s: np.ndarray) -> tuple:
    """Points of the ellipse (a cos t, b sin t) at arc lengths s [m] (any real, wraps): (xy [N x 2], t [N], L)."""
    t = np.linspace(0.0, 2 * math.pi, 4097)
    seg = np.hypot(np.diff(a * np.cos(t)), np.diff(b * np.sin(t)))
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(cum[-1])
    ts = np.interp(np.mod(s, length), cum, t)
    return np.stack([a * np.cos(ts), b * np.sin(ts)], axis=1), ts, length


def _ellipse_length(a: float, b: float) -> float:
    return _ellipse_by_arc(a, b, np.zeros(1))[2]


@dataclass
class _PathSpec:
    """Parameters of one walk around the loop: camera poses as a function of time (see _walk)."""

    a: float
    b: float
    s0: float  # arc length at t = 0 [m]
    speed: float  # signed [m/s]
    height: float  # mean camera height [m]
    pitch_deg: float  # mean pitch (positive looks down) [deg]
    scan_deg: float  # yaw scan amplitude [deg]
    scan_period_s: float
    phases: np.ndarray  # (5,) wobble phases [rad]


def _walk(loop: dict, place: str, spec: _PathSpec, t: np.ndarray) -> list:
    """T_world_cam [4 x 4] at times t [s] of a walk around the ellipse (centre loop['centre'], spec's semi-axes).

    Yaw: the outward normal of the ellipse (room) or +x, the facade (street), plus the scan; pitch and roll
    wobble by +-3 deg and +-2 deg, height by +-5 cm, all slowly (periods 7-11 s).
    """
    xy, ts, _ = _ellipse_by_arc(spec.a, spec.b, spec.s0 + spec.speed * t)
    xy = xy + np.asarray(loop["centre"])
    ph = spec.phases
    if place == "room":
        base = np.arctan2(np.sin(ts) / spec.b, np.cos(ts) / spec.a)
    else:
        base = np.zeros_like(t)
    deg = math.pi / 180
    yaw = base + spec.scan_deg * deg * np.sin(2 * math.pi * t / spec.scan_period_s + ph[0])
    pitch = (spec.pitch_deg + 3.0 * np.sin(2 * math.pi * t / 7.0 + ph[1])) * deg
    roll = 2.0 * deg * np.sin(2 * math.pi * t / 9.0 + ph[2])
    z = np.clip(spec.height + 0.05 * np.sin(2 * math.pi * t / 11.0 + ph[3]), 1.2, 1.7)
    return [pose_from_ypr((xy[k, 0], xy[k, 1], z[k]), yaw[k], pitch[k], roll[k]) for k in range(len(t))]


def _path_spec(rng, place: str, a: float, b: float, speed: float, query: bool) -> _PathSpec:
    direction = 1.0 if rng.random() < 0.5 else -1.0
    indoor = place == "room"
    return _PathSpec(
        a=a, b=b, s0=rng.uniform(0.0, _ellipse_length(a, b)), speed=direction * speed,
        height=rng.uniform(1.25, 1.65) if query else rng.uniform(1.3, 1.6),
        pitch_deg=(rng.uniform(4.0, 14.0) if indoor else rng.uniform(-2.0, 4.0)) if query
        else (rng.uniform(6.0, 12.0) if indoor else rng.uniform(-1.0, 3.0)),
        scan_deg=rng.uniform(30.0, 40.0) if query else rng.uniform(28.0, 35.0),
        scan_period_s=rng.uniform(5.0, 8.0) if query else 5.0,
        phases=rng.uniform(0.0, 2 * math.pi, 5))


# ----------------------------------------------------------------------------- the case
@dataclass
class ProceduralCase:
    """One procedural relocalization case (see the module docstring). Poses T_world_cam [4 x 4] float64 [m]."""

    seed: int
    key: str  # short hash of everything the case depends on (seed, photo pool, camera, generator code)
    place: str  # "room" or "street"
    scene: Scene
    camera: Camera
    map_sequence: Sequence  # 30 Hz, sharp, evenly lit
    query_sequence: Sequence  # the kept query frames (1-3 Hz, drops removed), changed day
    query_rate_hz: float  # nominal query rate = 30 / query_period_frames
    query_period_frames: int  # 30 Hz steps between nominal query frames (10..30)
    query_nominal_frames: int  # query frames before the drops
    dropped: tuple  # nominal indices of the dropped query frames
    query_dense_poses: list  # the query walk at 30 Hz (truth), from the first to the last nominal query frame
    query_dense_index: np.ndarray  # [n_query] int: index in query_dense_poses of each kept query frame
    T_map_odom: np.ndarray  # [4 x 4] odom frame in the map (world) frame
    odom_delay_s: float  # [s] after an image stamp, the odometry for that stamp becomes available ("delayed")
    lighting: Lighting
    bounds: tuple  # ((xmin, xmax), (ymin, ymax), (zmin, zmax)) of the free space [m]
    obstacles: list  # [{"kind": "box" | "partition", "polygon": [4 x 2] footprint [m], "height": m}]
    textures: list  # [{"plane": name, "file": photo path, "pattern": "photo" | "repetitive" | "mirror" | "lookalike"}]
    hard_cases: list  # e.g. ["repetitive:wall_left_1", "mirror:facade_2", "lookalike:wall_front_0=wall_back_1"]
    dims: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Folder / bag name stem: ``proc<seed>_<key>``."""
        return f"proc{self.seed}_{self.key}"

    @property
    def texture_files(self) -> list:
        return sorted({t["file"] for t in self.textures})

    def in_free_space(self, points) -> np.ndarray:
        """[N] bool: points [N x 3] inside the place's bounds (strictly) and outside every obstacle's footprint."""
        pts = np.atleast_2d(np.asarray(points, np.float64))
        ok = np.ones(len(pts), bool)
        for d, (lo, hi) in enumerate(self.bounds):
            ok &= (pts[:, d] > lo) & (pts[:, d] < hi)
        for o in self.obstacles:
            ok &= (polygon_distance(pts[:, :2], o["polygon"]) > 0) | (pts[:, 2] > o["height"])
        return ok

    def metadata(self) -> dict:
        """JSON-ready description (what case.json holds)."""
        return {
            "seed": self.seed, "split": seed_split(self.seed), "key": self.key, "name": self.name,
            "generator_version": GENERATOR_VERSION, "place": self.place, "dims": self.dims,
            "camera": [self.camera.width, self.camera.height, self.camera.fx, self.camera.fy, self.camera.cx,
                       self.camera.cy],
            "map_frames": len(self.map_sequence), "map_rate_hz": MAP_RATE_HZ,
            "query_rate_hz": self.query_rate_hz, "query_period_frames": self.query_period_frames,
            "query_nominal_frames": self.query_nominal_frames, "query_frames": len(self.query_sequence),
            "dropped": list(self.dropped), "odom_delay_s": self.odom_delay_s,
            "T_map_odom": self.T_map_odom.tolist(),
            "lighting": {"light_world": list(self.lighting.light_world), "ambient": self.lighting.ambient,
                         "intensity": self.lighting.intensity, "falloff_m": self.lighting.falloff_m},
            "query": {k: self.params[k]
                      for k in ("offset_m", "speed_mps", "noise_sigma", "blur_share", "gamma_range", "gain_range",
                                "scan_deg")},
            "bounds": [list(b) for b in self.bounds],
            "obstacles": [{"kind": o["kind"], "polygon": np.round(o["polygon"], 4).tolist(), "height": o["height"]}
                          for o in self.obstacles],
            "texture_files": self.texture_files, "textures": self.textures, "hard_cases": self.hard_cases,
            "stamps_ns": {"map_first": self.map_sequence.stamps_ns[0],
                          "query": self.query_sequence.stamps_ns},
        }


def case_key(seed: int, camera: Camera, photos=None) -> str:
    """10 hex digits of sha256 over the seed, the camera, the photos (names and contents) and the generator code."""
    pool = _pool() if photos is None else tuple((str(p), _file_digest(p)) for p in photos)
    here = Path(__file__).resolve().parent
    code = [hashlib.sha256((here / f).read_bytes()).hexdigest()[:16] for f in _SOURCES]
    text = json.dumps({"version": GENERATOR_VERSION, "seed": int(seed),
                       "camera": [camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy],
                       "photos": [[Path(p).name, d[:16]] for p, d in pool], "code": code}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def make_procedural_case(seed: int, *, camera: Optional[Camera] = None, photos=None) -> ProceduralCase:
    """The case of ``seed`` (see the module docstring): scene, mapping and query sequences, odometry settings.

    camera: the camera of both runs (default Camera(): 640 x 480); blur lengths scale with its focal length.
    photos: image paths to texture with (default photo_pool()); every one must be readable.
    Frames render when a sequence is indexed; only the query's auto-exposure renders each query view here, at
    80 px wide (about 1 s for a whole case on 2 cores, photo loading included). Raises ValueError on a bad seed,
    camera or photo list.
    """
    seed = _check_seed(seed)
    camera = camera or Camera()
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a match_ros.sim.Camera, got {type(camera).__name__}")
    pool = photo_pool() if photos is None else [str(p) for p in photos]
    if not pool:
        raise ValueError("photos must name at least one image")
    for attempt in range(_MAX_ATTEMPTS):
        built = _build(seed, attempt, camera)
        if built is not None:
            break
    else:  # not reached with the margins above; kept so that a bad change fails loudly
        raise RuntimeError(f"seed {seed}: no layout with {MIN_CLEARANCE_M} m clearance in {_MAX_ATTEMPTS} attempts")
    layout, obstacles, map_poses, q = built
    planes, textures, hard = _texture_planes(seed, layout.specs, pool)
    background = (0, 0, 0) if layout.place == "room" else SKY_RGB
    scene = Scene(planes, background=background, name=f"procedural_{seed}")
    map_stamps = [DEFAULT_START_NS + int(round(i * 1e9 / MAP_RATE_HZ)) for i in range(len(map_poses))]
    seq_seed = int(np.random.SeedSequence([seed, 9]).generate_state(1)[0])
    map_sequence = Sequence(scene, camera, list(zip(map_stamps, map_poses)), seed=seq_seed)
    gain = _auto_exposure(scene, q["poses"], camera, q["gamma"], q["lighting"])
    q["params"]["gain_range"] = [float(min(gain)), float(max(gain))]
    query_sequence = Sequence(scene, camera, list(zip(q["stamps"], q["poses"])), gain=gain, gamma=q["gamma"],
                              noise_sigma=q["noise_sigma"], seed=seq_seed + 1, lighting=q["lighting"],
                              blur=q["blur"])
    return ProceduralCase(
        seed=seed, key=case_key(seed, camera, None if photos is None else pool), place=layout.place, scene=scene,
        camera=camera, map_sequence=map_sequence, query_sequence=query_sequence,
        query_rate_hz=MAP_RATE_HZ / q["period"], query_period_frames=q["period"],
        query_nominal_frames=q["nominal"], dropped=q["dropped"], query_dense_poses=q["dense_poses"],
        query_dense_index=q["dense_index"], T_map_odom=q["T_map_odom"], odom_delay_s=q["odom_delay_s"],
        lighting=q["lighting"], bounds=layout.bounds, obstacles=obstacles, textures=textures, hard_cases=hard,
        dims=layout.dims, params=q["params"])


def _build(seed: int, attempt: int, camera: Camera):
    """Layout, obstacles, mapping poses and the query run of one attempt; None if a pose lacks clearance."""
    rng = np.random.default_rng([seed, _S_LAYOUT, attempt])
    planner = _Planner()
    layout = (_room if rng.random() < 0.5 else _street)(rng, planner)
    loop = layout.loop
    # mapping: one closed loop in 240-360 frames at walking pace (<= 1.2 m/s: big loops shrink)
    n_map = int(rng.integers(240, 361))
    scale = min(1.0, 0.04 * n_map / _ellipse_length(loop["a"], loop["b"]))
    loop["a"], loop["b"] = loop["a"] * scale, loop["b"] * scale
    length = _ellipse_length(loop["a"], loop["b"])
    map_spec = _path_spec(rng, layout.place, loop["a"], loop["b"], length / n_map * MAP_RATE_HZ, query=False)
    map_poses = _walk(loop, layout.place, map_spec, np.arange(n_map) / MAP_RATE_HZ)
    # query: the loop moved 0.2-0.6 m in or out, walked at 0.3-0.5 m/s, photographed at 30 / period Hz
    qr = np.random.default_rng([seed, _S_QUERY, attempt])
    offset = qr.uniform(0.2, 0.6)
    inward = qr.random() < 0.5 and min(loop["a"], loop["b"]) - offset >= 0.3
    delta = -offset if inward else offset
    speed = qr.uniform(0.3, 0.5)
    q_spec = _path_spec(qr, layout.place, loop["a"] + delta, loop["b"] + delta, speed, query=True)
    period = int(qr.integers(10, 31))
    nominal = int(qr.integers(48, 65))
    dense_t = np.arange((nominal - 1) * period + 1) / MAP_RATE_HZ
    dense_poses = _walk(loop, layout.place, q_spec, dense_t)
    path_xy = np.array([T[:2, 3] for T in map_poses + dense_poses])
    obstacles = _place_obstacles(rng, layout, planner, path_xy)
    positions = np.array([T[:3, 3] for T in map_poses + dense_poses])
    if plane_clearance(layout.specs, positions).min() < MIN_CLEARANCE_M:
        return None
    q = _query_run(seed, qr, layout, period, nominal, dense_poses, camera)
    q["params"] = {"offset_m": float(delta), "speed_mps": float(speed), "scan_deg": float(q_spec.scan_deg),
                   **q["params"]}
    return layout, obstacles, map_poses, q


def _auto_exposure(scene: Scene, poses: list, camera: Camera, gamma: list, lighting: Lighting) -> list:
    """Per-frame gain [>= 1] of the query camera's auto-exposure: a frame whose mean gray (rendered at <= 80 px
    wide, lit, after gamma) is under AE_TARGET_GRAY is brightened towards it, by AE_MAX_GAIN at most (a camera in
    a dim room cannot make up for everything: the darkest frames stay dark)."""
    small = camera.scaled(min(1.0, 80.0 / camera.width))
    gains = []
    for T, g in zip(poses, gamma):
        rgb, _ = scene.render(T, small, gamma=float(g), lighting=lighting)
        gains.append(float(np.clip(AE_TARGET_GRAY / max(float(rgb.mean()), 1.0), 1.0, AE_MAX_GAIN)))
    return gains


def _query_run(seed: int, qr: np.random.Generator, layout: _Layout, period: int, nominal: int, dense_poses: list,
               camera: Camera) -> dict:
    """Drops, stamps, light, camera response, blur, noise and odometry settings of the query run."""
    share = qr.uniform(0.05, 0.15)
    n_drop = max(1, int(round(share * nominal)))
    free = list(range(1, nominal - 1))  # the first and last frames stay; drops are isolated (gaps <= 2 periods)
    dropped = []
    while len(dropped) < n_drop and free:
        k = int(free[int(qr.integers(0, len(free)))])
        dropped.append(k)
        free = [j for j in free if abs(j - k) > 1]
    dropped = tuple(sorted(dropped))
    kept = np.array([k for k in range(nominal) if k not in dropped])
    dense_index = kept * period
    stamps = [DEFAULT_START_NS + int(round(j * 1e9 / MAP_RATE_HZ)) for j in dense_index]
    poses = [dense_poses[j] for j in dense_index]
    n = len(kept)
    light_pos = tuple(float(qr.uniform(*r)) for r in layout.light_box)
    lighting = Lighting(light_pos, ambient=float(qr.uniform(0.25, 0.5)), intensity=1.0,
                        falloff_m=2.5 if layout.place == "room" else 6.0)
    g_lo, g_hi = qr.uniform(0.65, 0.8), qr.uniform(1.2, 1.45)
    t = dense_index / MAP_RATE_HZ
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * t / qr.uniform(20.0, 40.0) + qr.uniform(0, 2 * math.pi))
    gamma = np.exp(np.log(g_lo) + (np.log(g_hi) - np.log(g_lo)) * wave)
    blur_share = qr.uniform(0.2, 0.4)
    blurred = set(qr.choice(n, int(round(blur_share * n)), replace=False).tolist())
    lengths = qr.uniform(5.0, 15.0, n) * camera.fx / 525.0
    angles = qr.uniform(0.0, 180.0, n)
    blur = [(float(lengths[k]), float(angles[k])) if k in blurred else None for k in range(n)]
    noise = float(qr.uniform(3.0, 6.0))
    orng = np.random.default_rng([seed, _S_ODOM])
    yaw = orng.uniform(-math.pi, math.pi)
    T_map_odom = np.eye(4)
    T_map_odom[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    T_map_odom[:2, 3] = orng.uniform(-2.0, 2.0, 2)
    return {"period": period, "nominal": nominal, "dropped": dropped, "dense_poses": dense_poses,
            "dense_index": dense_index, "stamps": stamps, "poses": poses, "gamma": gamma.tolist(),
            "blur": blur, "noise_sigma": noise, "lighting": lighting, "T_map_odom": T_map_odom,
            "odom_delay_s": float(orng.uniform(0.05, 0.6)),
            "params": {"noise_sigma": noise, "blur_share": len(blurred) / n,
                       "gamma_range": [float(g_lo), float(g_hi)]}}


# ----------------------------------------------------------------------------- textures
def _neighbours(specs: list, tol: float = 0.06) -> list:
    """[set of indices] of the planes each plane touches (a corner within ``tol`` [m] of the other)."""
    out = [set() for _ in specs]
    for i, a in enumerate(specs):
        for j in range(i + 1, len(specs)):
            b = specs[j]
            if (rect_distance(a.corners(), b.origin, b.edge_u, b.edge_v).min() < tol
                    or rect_distance(b.corners(), a.origin, a.edge_u, a.edge_v).min() < tol):
                out[i].add(j)
                out[j].add(i)
    return out


def _pattern_texture(pattern: str, photo: np.ndarray, spec: _PlaneSpec, rng) -> np.ndarray:
    """Texture [H x W x 3] uint8 of a plane: a photo crop, a crop tiled 3-6 times, or a mirror-symmetric crop."""
    w, h = spec.size_m
    if pattern == "repetitive":
        count = int(rng.integers(3, 7))
        grids = [(r, count // r) for r in range(1, count + 1) if count % r == 0]  # (rows, columns)
        rows, cols = min(grids, key=lambda g: abs(math.log((w / g[1]) / (h / g[0]))))
        tile = texture_crop(photo, w / cols, h / rows, spec.density, rng, (0.2, 0.4))
        return np.ascontiguousarray(np.tile(tile, (rows, cols, 1)))
    if pattern == "mirror":
        half = texture_crop(photo, w / 2, h, spec.density, rng, (0.35, 0.7))
        return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    return texture_crop(photo, w, h, spec.density, rng, (0.35, 0.7))


def _texture_planes(seed: int, specs: list, pool: list) -> tuple:
    """(planes [Plane], textures [{plane, file, pattern}], hard cases [str]) of the specs, from the seed."""
    rng = np.random.default_rng([seed, _S_TEXTURE])
    # the case's photos: 6-10 usable ones of the pool in a random order
    wanted = int(rng.integers(6, 11))
    chosen = []
    for k in rng.permutation(len(pool)):
        if _photo_usable(pool[k]):
            chosen.append(pool[k])
        if len(chosen) == wanted:
            break
    if not chosen:
        raise ValueError("no usable photo (all flat or dark) among the photos given")
    walls = [i for i, s in enumerate(specs) if s.role == "wall"]
    pattern = {i: "photo" for i in range(len(specs))}
    hard = []
    draw_hard, draw_lookalike = rng.random(), rng.random()  # drawn on every seed: the stream stays aligned
    if draw_hard < 0.5 and walls:
        for i in rng.choice(walls, min(len(walls), int(rng.integers(1, 3))), replace=False):
            pattern[int(i)] = "repetitive" if rng.random() < 0.5 else "mirror"
            hard.append(f"{pattern[int(i)]}:{specs[int(i)].name}")
    pair = None
    neighbours = _neighbours(specs)
    if draw_lookalike < 0.35:
        candidates = []
        for x, i in enumerate(walls):
            for j in walls[x + 1:]:
                (wi, hi), (wj, hj) = specs[i].size_m, specs[j].size_m
                ratio = (wi / hi) / (wj / hj)
                if (pattern[i] == pattern[j] == "photo" and 0.7 <= ratio <= 1.4 and j not in neighbours[i]
                        and np.linalg.norm(specs[i].centre - specs[j].centre) >= 3.0):
                    candidates.append((i, j))
        if candidates:
            pair = candidates[int(rng.integers(0, len(candidates)))]
            pattern[pair[0]] = pattern[pair[1]] = "lookalike"
            hard.append(f"lookalike:{specs[pair[0]].name}={specs[pair[1]].name}")
    order = ([*pair] if pair else []) + [i for i in range(len(specs)) if pattern[i] in ("repetitive", "mirror")]
    order += [i for i in range(len(specs)) if i not in order]
    files, textures = {}, {}
    for i in order:
        spec = specs[i]
        if pair and i == pair[1]:  # the same crop as its look-alike, resized to this wall
            files[i] = files[pair[0]]
            w, h = (int(min(2048, max(16, round(m * spec.density)))) for m in spec.size_m)
            src = textures[pair[0]]
            same = abs(src.shape[1] - w) <= 8 and abs(src.shape[0] - h) <= 8
            textures[i] = src.copy() if same else cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
            continue
        taken = {files[j] for j in neighbours[i] if j in files}
        if pair and i == pair[0]:
            taken |= {files[j] for j in neighbours[pair[1]] if j in files}
        candidates = [p for p in chosen if p not in taken] or [p for p in pool if p not in taken and _photo_usable(p)]
        if not candidates:
            raise ValueError("too few usable photos to give touching planes different ones")
        for _ in range(6):  # a crop can be flat or dark (a plain part of a wallpaper): another crop or photo
            files[i] = candidates[int(rng.integers(0, len(candidates)))]
            textures[i] = _pattern_texture("photo" if pattern[i] == "lookalike" else pattern[i],
                                           load_photo(files[i]), spec, rng)
            if _textured_enough(textures[i]):
                break
            if len(candidates) > 1 and rng.random() < 0.5:
                candidates.remove(files[i])
    planes = [Plane(s.origin, s.edge_u, s.edge_v, textures[i], name=s.name) for i, s in enumerate(specs)]
    table = [{"plane": s.name, "file": files[i], "pattern": pattern[i]} for i, s in enumerate(specs)]
    return planes, table, hard


# ----------------------------------------------------------------------------- odometry
def odometry_poses(case: ProceduralCase, kind: str) -> Optional[list]:
    """Odometry of the query run: one T_odom_cam [4 x 4] per kept query frame, or None for kind "none".

    "drift": the truth in the odom frame (case.T_map_odom) with a random walk integrated at 30 Hz along the whole
    walk (ODOM_SIGMA_T_M in x/y and ODOM_SIGMA_YAW_DEG per step, as reloc_scenes.drifting_odometry): exact at
    the first query frame, then a few cm and about 1 deg off after a minute.
    "delayed": the same poses; the odometry for an image stamp becomes available case.odom_delay_s later (an
    evaluator replaying the run must wait that long before using it).
    """
    if kind not in ODOMETRY_KINDS:
        raise ValueError(f"odometry kind must be one of {ODOMETRY_KINDS}, got {kind!r}")
    if kind == "none":
        return None
    from match_ros.evaluation.reloc_scenes import drifting_odometry

    dense = drifting_odometry(case.query_dense_poses, case.T_map_odom, seed=case.seed, sigma_t_m=ODOM_SIGMA_T_M,
                              sigma_yaw_deg=ODOM_SIGMA_YAW_DEG)
    return [dense[int(j)] for j in case.query_dense_index]


# ----------------------------------------------------------------------------- bags
def _bag_complete(path: Path) -> bool:
    return (path / "metadata.yaml").is_file()


def case_paths(case: ProceduralCase, out_dir) -> tuple:
    """(case folder, map bag, query bag, case.json) of ``case`` under ``out_dir`` (names carry seed and key)."""
    folder = Path(out_dir) / case.name
    return folder, folder / f"{case.name}_map", folder / f"{case.name}_query", folder / "case.json"


def write_case_bags(case: ProceduralCase, out_dir, progress: bool = False, storage: str = "sqlite3") -> tuple:
    """(map bag, query bag) of ``case`` in ``out_dir``/proc<seed>_<key>/ (written once, then reused).

    map bag: images, camera_info, depth, /ground_truth/pose and /tf map -> camera at 30 Hz.
    query bag: the kept query frames' images, camera_info, /ground_truth/pose (for scoring only) and /tf
    odom -> camera_optical_frame from odometry_poses(case, "drift").
    case.json beside them holds case.metadata(). A bag folder left incomplete by an interrupted run (no
    metadata.yaml) is removed and written again.
    """
    from match_ros.tools.bag_write import BagLayout, write_sequence_bag

    folder, map_bag, query_bag, meta = case_paths(case, out_dir)
    if _bag_complete(map_bag) and _bag_complete(query_bag) and meta.is_file():
        return map_bag, query_bag
    folder.mkdir(parents=True, exist_ok=True)
    for bag in (map_bag, query_bag):
        if bag.exists() and not _bag_complete(bag):
            shutil.rmtree(bag)
    if not map_bag.exists():
        write_sequence_bag(map_bag, case.map_sequence, storage=storage, with_depth=True, progress=progress)
    if not query_bag.exists():
        write_sequence_bag(query_bag, case.query_sequence, storage=storage, layout=BagLayout(tf_frame="odom"),
                           tf_poses=odometry_poses(case, "drift"), progress=progress)
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**case.metadata(), "map_bag": map_bag.name, "query_bag": query_bag.name}, indent=1))
    tmp.replace(meta)
    return map_bag, query_bag


# ----------------------------------------------------------------------------- preview
def contact_sheet(case: ProceduralCase, path, n_frames: int = 4) -> Path:
    """PNG at ``path``: ``n_frames`` map frames, as many query frames and (with matplotlib) a top-down plot of the
    planes, the obstacles, the mapping loop and the query walk (kept frames as dots, dropped ones as crosses)."""
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picks = [(seq, np.linspace(0, len(seq) - 1, n_frames).round().astype(int))
             for seq in (case.map_sequence, case.query_sequence)]
    frames = [[seq[int(i)].rgb for i in idx] for seq, idx in picks]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sheet = np.vstack([np.hstack(row) for row in frames])
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        return path
    fig = plt.figure(figsize=(3.2 * n_frames, 10.5))
    grid = fig.add_gridspec(3, n_frames, height_ratios=[1, 1, 1.9])
    for r, (row, (seq, idx)) in enumerate(zip(frames, picks)):
        for c, img in enumerate(row):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img)
            ax.set_title(f"{'map' if r == 0 else 'query'} {idx[c]}", fontsize=8)
            ax.axis("off")
    ax = fig.add_subplot(grid[2, :])
    colours = {"photo": "0.35", "repetitive": "tab:orange", "mirror": "tab:purple", "lookalike": "tab:red"}
    for plane, tex in zip(case.scene.planes, case.textures):
        if abs(plane.normal[2]) > 0.5:
            continue  # floors, ceilings and box tops
        a, b = plane.origin[:2], (plane.origin + plane.edge_u)[:2]
        ax.plot([a[0], b[0]], [a[1], b[1]], color=colours[tex["pattern"]], lw=3 if tex["pattern"] != "photo" else 1.5)
    m = np.array([T[:3, 3] for _, T in case.map_sequence.poses])
    d = np.array([T[:3, 3] for T in case.query_dense_poses])
    q = np.array([T[:3, 3] for _, T in case.query_sequence.poses])
    drop = np.array([case.query_dense_poses[k * case.query_period_frames][:3, 3] for k in case.dropped]).reshape(-1, 3)
    ax.plot(m[:, 0], m[:, 1], color="tab:blue", lw=1, label=f"map ({len(m)} frames, 30 Hz)")
    ax.plot(d[:, 0], d[:, 1], color="tab:green", lw=0.5, alpha=0.6)
    ax.plot(q[:, 0], q[:, 1], ".", color="tab:green", label=f"query ({len(q)} at {case.query_rate_hz:.2f} Hz)")
    ax.plot(drop[:, 0], drop[:, 1], "x", color="k", label=f"dropped ({len(drop)})")
    for (seq, idx), col in zip(picks, ("tab:blue", "tab:green")):
        for i in idx:
            T = seq.poses[int(i)][1]
            ax.annotate("", T[:2, 3] + 0.8 * T[:2, 2], T[:2, 3], arrowprops={"arrowstyle": "->", "color": col})
    light = case.lighting.light_world
    ax.plot(light[0], light[1], "*", color="gold", ms=14, mec="k", label="query light")
    for name, col in colours.items():
        ax.plot([], [], color=col, lw=3, label=name)
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{case.name}: {case.place}, hard cases: {', '.join(case.hard_cases) or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m match_ros.sim.procedural", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=None, help="case seed (default: a fresh one, printed)")
    ap.add_argument("--out", default="build/procedural", help="output folder (default: build/procedural)")
    ap.add_argument("--no-bags", action="store_true", help="only the contact sheet and case.json")
    ap.add_argument("--scale", type=float, default=1.0, help="camera scale (default 1: 640 x 480)")
    args = ap.parse_args(argv)
    seed = fresh_seed() if args.seed is None else args.seed
    print(f"seed {seed} ({seed_split(seed)} split)")
    try:
        t0 = time.perf_counter()
        case = make_procedural_case(seed, camera=Camera().scaled(args.scale))
        t1 = time.perf_counter()
        print(f"case {case.name}: {case.place}, {len(case.scene.planes)} planes, {len(case.obstacles)} obstacles, "
              f"map {len(case.map_sequence)} frames, query {len(case.query_sequence)} of "
              f"{case.query_nominal_frames} at {case.query_rate_hz:.2f} Hz, odom delay {case.odom_delay_s:.2f} s, "
              f"hard cases: {', '.join(case.hard_cases) or 'none'} ({t1 - t0:.1f} s)")
        folder, _, _, meta = case_paths(case, args.out)
        if args.no_bags:
            folder.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(case.metadata(), indent=1))
        else:
            map_bag, query_bag = write_case_bags(case, args.out, progress=True)
            print(f"bags: {map_bag} {query_bag} ({time.perf_counter() - t1:.1f} s)")
        sheet = contact_sheet(case, folder / "preview.png")
        print(f"case.json: {meta}\npreview: {sheet}")
    except (ValueError, OSError) as exc:
        print(f"procedural: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
