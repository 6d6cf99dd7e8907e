"""Bags of rendered relocalization scenes with exact ground truth (mapping run, query run).

The mapping bag has images, camera_info, depth, the ground-truth camera pose (/ground_truth/pose) and /tf
map -> camera. The query bag has images, camera_info, the ground truth (only for scoring) and odometry on /tf:
odom -> camera, with odom offset from map by T_MAP_ODOM and a slow random drift, as wheel or visual odometry
would give. Query runs are "changed day" (``make_changed_day_sequence``: off the path, turned, dim and uneven
light, blur, noise) or "classic" (another trajectory 0.3 m off the path, a global light change).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from match_ros.core.geometry.transforms import invert, make_T

T_MAP_ODOM = make_T(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), [1.5, -0.7, 0.0])
# classic query trajectories leave the mapping path by this offset in the map frame [m]
QUERY_OFFSET_M = {"room": (0.2, -0.15, 0.15), "corridor": (0.0, 0.3, -0.1), "facade": (1.0, 0.0, -0.2),
                  "office": (0.2, -0.2, 0.1), "street": (0.5, 0.3, -0.1)}
QUERY_KINDS = ("changed_day", "classic")


def make_query_sequence(scene: str, n_frames: int, seed: int = 1, kind: str = "classic"):
    """A query sequence over the mapped scene (scene_seed 0): "classic" (another trajectory seed, a global light
    change, moved off the mapping path by QUERY_OFFSET_M[scene]) or "changed_day"."""
    from match_ros.sim import Sequence, make_changed_day_sequence, make_sequence

    if kind == "changed_day":
        return make_changed_day_sequence(scene, n_frames, seed=seed, scene_seed=0)
    if kind != "classic":
        raise ValueError(f"query kind must be one of {QUERY_KINDS}, got {kind!r}")
    base = make_sequence(scene, n_frames=n_frames, seed=seed, scene_seed=0, photometric=True)
    shift = make_T(np.eye(3), QUERY_OFFSET_M[scene])
    return Sequence(base.scene, base.camera, [(s, shift @ T) for s, T in base.poses],
                    gain=base.gain, gamma=base.gamma, seed=seed)


def drifting_odometry(poses_map_cam: list, T_map_odom: np.ndarray = T_MAP_ODOM, seed: int = 0,
                      sigma_t_m: float = 0.001, sigma_yaw_deg: float = 0.05) -> list:
    """Odometry poses T_odom_cam of a camera path: the truth in the odom frame, with a random walk added to each
    frame-to-frame motion (sigma_t_m per frame in x/y, sigma_yaw_deg per frame about z): about 1-3 cm and
    0.5 deg after 100 frames."""
    rng = np.random.default_rng([seed, 5])
    T_odom_map = invert(T_map_odom)
    out, drift = [], np.eye(4)
    for i, T in enumerate(poses_map_cam):
        if i:
            yaw = np.radians(rng.normal(0.0, sigma_yaw_deg))
            step = make_T(np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0],
                                    [0.0, 0.0, 1.0]]), [*rng.normal(0.0, sigma_t_m, 2), 0.0])
            drift = drift @ step
        out.append(drift @ T_odom_map @ T)
    return out


def write_query_bag(path, sequence, storage: str = "sqlite3", seed: int = 0, drift: bool = True) -> None:
    """Query bag: images, camera_info, /ground_truth/pose (map), /tf odom -> camera (drifting odometry)."""
    from match_ros.tools.bag_write import BagLayout, write_sequence_bag

    poses = [T for _, T in sequence.poses]
    odom = drifting_odometry(poses, seed=seed) if drift else [invert(T_MAP_ODOM) @ T for T in poses]
    write_sequence_bag(path, sequence, storage=storage, layout=BagLayout(tf_frame="odom"), tf_poses=odom)


def scene_bags(out_dir, scene: str, kind: str = "changed_day", map_frames: int = 300, query_frames: int = 300,
               progress: bool = True) -> tuple[Path, Path]:
    """(map bag, query bag) of a rendered scene in ``out_dir`` (rendered once, then reused)."""
    from match_ros.sim import make_sequence
    from match_ros.tools.bag_write import write_sequence_bag

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    map_bag = out_dir / f"{scene}_map_{map_frames}"
    query_bag = out_dir / f"{scene}_{kind}_query_{query_frames}"
    if not map_bag.exists():
        write_sequence_bag(map_bag, make_sequence(scene, n_frames=map_frames, seed=0), with_depth=True,
                           progress=progress)
    if not query_bag.exists():
        write_query_bag(query_bag, make_query_sequence(scene, query_frames, kind=kind))
    return map_bag, query_bag
