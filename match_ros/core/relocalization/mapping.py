"""Build a relocalization map from posed frames (offline mapping; progress reporting is the caller's).

Keyframe selection by covisibility (``selection: overlap``): a frame becomes a keyframe when no existing
keyframe shares ``min_overlap`` of its view, i.e. when less than that share of every nearby keyframe's 3D
points would be seen by the frame as the keyframe saw them (in the image, viewing ray turned less than 30 deg,
distance within a factor 1.4). A map thus gets keyframes where the view changes, however slowly or quickly
the camera moves: a short recording keeps enough of them, a long one does not pile them up. Comparing with all
keyframes, not only the last, keeps revisited places (loops, back-and-forth paths) from adding near
duplicates. Keyframes without enough 3D points yet (triangulation) are compared by pose distance instead, as
is everything with ``selection: distance``: farther than ``min_translation_m`` or turned more than
``min_rotation_deg`` from every keyframe. The first frame always is a keyframe.

3D points of a keyframe's keypoints (map frame, NaN where unknown):
- with depth: back-projection with K and T_world_cam; the depth at a sub-pixel keypoint is the bilinear
  interpolation of INVERSE depth over its 4 neighbour pixels (exact on planar surfaces); keypoints on
  a depth edge (neighbours differ by more than ``depth_max_step``) or without valid depth stay NaN;
- without depth: the new keyframe is matched against the ``triangulation_partners`` existing keyframes
  nearest in pose and each pair's matches are triangulated with the two known projection matrices
  (cv2.triangulatePoints); a point is kept when it lies in front of both cameras, reprojects within
  ``max_reproj_px`` in both views and its two viewing rays meet at ``min_parallax_deg`` or more. Per
  keypoint the pair with the largest parallax wins (depth error ~ 1 / parallax: on the room orbit the
  median error is 4 cm at 1-2 deg, 2 cm at 3-5 deg, 1 cm at 5-10 deg). A point fills the new keyframe's
  keypoint and, where still unknown, the partner's keypoint (so the first keyframe gets points too).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from match_ros.core.config import Param, defaults, make_conf
from match_ros.core.geometry.camera import (Distortion, backproject, check_K, depth_at_undistorted, project,
                                            transform_points)
from match_ros.core.geometry.transforms import invert
from match_ros.core.relocalization.global_desc import GlobalDescriptor
from match_ros.core.relocalization.mapstore import Map, MapKeyframe, matcher_identity
from match_ros.core.features.matcher import Matcher, check_distortion, undistort
from match_ros.core.features.types import Features, check_image
from match_ros.core.memory import LargeFrameTrim


def backproject_keypoints(keypoints: np.ndarray, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                          min_depth: float = 0.05, max_depth: float = 50.0, max_step: float = 0.05,
                          distortion: Optional[Distortion] = None) -> np.ndarray:
    """keypoints [N x 2] px, depth [H x W] m (0/NaN = none) -> [N x 3] float32 world points, NaN without depth
    (``camera.depth_at``: bilinear inverse depth, NaN on depth edges). distortion: that of the raw image the depth
    is registered to, the keypoints being undistorted (the depth is read at their raw pixels); None: none."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    z = depth_at_undistorted(depth, kp, K, distortion, min_depth=min_depth, max_depth=max_depth, max_step=max_step)
    out = np.full((len(kp), 3), np.nan, np.float32)
    ok = np.isfinite(z)
    out[ok] = transform_points(T_world_cam, backproject(kp[ok], z[ok], check_K(K)))
    return out


def view_overlap(X: np.ndarray, T_world_kf: np.ndarray, T_world_cam: np.ndarray, K: np.ndarray,
                 size: tuple, max_angle_deg: float = 30.0, max_scale: float = 1.4) -> float:
    """Share of a keyframe's 3D points X [N x 3] (world) that a camera at T_world_cam sees as the keyframe did:
    in its image (size = (width, height)), viewing ray turned by less than max_angle_deg, distance within a factor
    max_scale of the keyframe's."""
    if not len(X):
        return 0.0
    uv, z = project(transform_points(invert(T_world_cam), X), K)
    inside = (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < size[0]) & (uv[:, 1] >= 0) & (uv[:, 1] < size[1])
    ray_kf, ray_cam = X - T_world_kf[:3, 3], X - T_world_cam[:3, 3]
    d_kf, d_cam = np.linalg.norm(ray_kf, axis=1), np.linalg.norm(ray_cam, axis=1)
    cos = np.sum(ray_kf * ray_cam, axis=1) / np.maximum(d_kf * d_cam, 1e-12)
    ratio = d_cam / np.maximum(d_kf, 1e-12)
    same = inside & (cos >= np.cos(np.radians(max_angle_deg))) & (ratio <= max_scale) & (ratio >= 1.0 / max_scale)
    return float(np.mean(same))


def triangulate(pts_a: np.ndarray, pts_b: np.ndarray, K_a: np.ndarray, K_b: np.ndarray, T_world_a: np.ndarray,
                T_world_b: np.ndarray, max_reproj_px: float = 2.0, min_parallax_deg: float = 1.0,
                min_depth: float = 0.05, max_depth: float = 50.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched pixels [M x 2] in two posed views -> (world points [M x 3] float64, kept [M] bool,
    parallax [M] float64 degrees between the two viewing rays)."""
    pts_a = np.asarray(pts_a, np.float64).reshape(-1, 2)
    pts_b = np.asarray(pts_b, np.float64).reshape(-1, 2)
    if len(pts_a) == 0:
        return np.zeros((0, 3)), np.zeros(0, bool), np.zeros(0)
    T_a, T_b = invert(T_world_a), invert(T_world_b)  # world -> camera
    P_a, P_b = check_K(K_a) @ T_a[:3], check_K(K_b) @ T_b[:3]
    Xh = cv2.triangulatePoints(P_a, P_b, pts_a.T, pts_b.T).T
    with np.errstate(invalid="ignore", divide="ignore"):
        X = Xh[:, :3] / Xh[:, 3:4]
        keep = np.all(np.isfinite(X), axis=1)
        X = np.where(keep[:, None], X, 0.0)
        for T, K, pts in ((T_a, K_a, pts_a), (T_b, K_b, pts_b)):
            uv, z = project(transform_points(T, X), K)
            keep &= (z > min_depth) & (z < max_depth)
            keep &= np.linalg.norm(uv - pts, axis=1) < max_reproj_px
        ra, rb = X - T_world_a[:3, 3], X - T_world_b[:3, 3]
        cos = np.sum(ra * rb, 1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
        parallax = np.degrees(np.arccos(np.clip(np.nan_to_num(cos, nan=1.0), -1.0, 1.0)))
        keep &= parallax >= min_parallax_deg
    return X, keep, parallax


def _check_pose(T) -> np.ndarray:
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"T_world_cam must be a finite [4 x 4] matrix, got shape {T.shape}")
    if not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-5) or np.linalg.det(T[:3, :3]) < 0:
        raise ValueError("T_world_cam rotation is not a proper rotation matrix")
    return T


mapping_spec = {
    "selection": Param("overlap", "Keyframes by covisibility (overlap) or by pose distance (distance)",
                       choices=("overlap", "distance")),
    "min_overlap": Param(0.8, "overlap: new keyframe when no keyframe shares this much of the view", min=0.0,
                         max=1.0),
    "overlap_max_angle_deg": Param(15.0, "overlap: a point counts as seen when its viewing ray turned less than this",
                                   "deg", 1.0, 90.0),
    "min_translation_m": Param(0.25, "distance: new keyframe when farther than this from every keyframe ...", "m",
                               0.0, 1000.0),
    "min_rotation_deg": Param(10.0, "... or turned more than this from every keyframe", "deg", 0.0, 180.0),
    "min_depth_m": Param(0.05, "Depth (measured or triangulated) below this is invalid", "m", 0.0, 1000.0),
    "max_depth_m": Param(50.0, "Depth (measured or triangulated) above this is invalid", "m", 0.01, 100000.0),
    "depth_max_step": Param(0.05, "Keypoints whose 4 depth neighbours differ by more (relative) get no point",
                            min=0.0, max=10.0),
    "triangulate": Param(True, "Without depth: triangulate against the nearest keyframes"),
    "max_reproj_px": Param(2.0, "Triangulated points reproject within this in both views", "px", 0.1, 100.0),
    "min_parallax_deg": Param(2.0, "... and their two viewing rays meet at this angle or more", "deg", 0.0, 90.0),
    "triangulation_partners": Param(3, "Keyframes nearest in pose matched for triangulation", min=1, max=50),
    "map_frame_id": Param("map", "Frame of the keyframe poses and 3D points", read_only=True),
}


class MapBuilder:
    """Selects keyframes from posed frames, extracts their features once and gives them 3D points.

    add_frame(image [H x W (x 3)] uint8 RGB, T_world_cam [4 x 4] pose of the optical frame in the map frame,
    K [3 x 3], stamp_ns, depth [H x W] float metres registered to the image (0/NaN = none) or None, frame_id,
    distortion: the raw image's lens distortion or None) -> True when the frame became a keyframe; build() -> Map.
    ``stats`` counts frames, keyframes and points. A keyframe of a distorted image stores undistorted keypoints
    (``Matcher.undistort``: the ideal pinhole camera with K), so the map needs no distortion model.
    """

    spec = mapping_spec
    default_conf = defaults(mapping_spec)

    def __init__(self, matcher: Matcher, global_desc: GlobalDescriptor, conf: dict | None = None):
        self.conf = make_conf(mapping_spec, conf, "MapBuilder")
        self.matcher, self.global_desc = matcher, global_desc
        self.map: Optional[Map] = None
        self._positions = np.zeros((0, 3))
        self._rotations = np.zeros((0, 3, 3))
        self.stats = {"frames": 0, "keyframes": 0, "points_depth": 0, "points_triangulated": 0, "keypoints": 0}
        self._trim = LargeFrameTrim()  # the heap back to the OS after an unusually large frame (issue #20)

    def _pose_distances(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(translation [m], rotation [deg]) from pose T to every keyframe, in keyframe order."""
        dt = np.linalg.norm(self._positions - T[:3, 3], axis=1)
        cos = (np.einsum("kij,ij->k", self._rotations, T[:3, :3]) - 1.0) / 2.0  # trace(R_k^T R) = sum(R_k * R)
        return dt, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

    def _is_new_keyframe(self, T: np.ndarray, K: np.ndarray, size: tuple) -> bool:
        if not len(self._positions):
            return True
        c = self.conf
        dt, dr = self._pose_distances(T)
        close = (dt <= c["min_translation_m"]) & (dr <= c["min_rotation_deg"])
        if c["selection"] == "distance":
            return not np.any(close)
        keyframes = list(self.map)  # insertion order, as _positions
        for i in np.argsort(dt, kind="stable")[:20]:  # the 20 nearest keyframes
            if dt[i] > 10.0 or dr[i] > 90.0:
                continue
            kf = keyframes[i]
            X = self._sample_points(kf)
            share = float(close[i]) if len(X) < 20 else view_overlap(X, kf.T_world_cam, T, K, size,
                                                                     float(c["overlap_max_angle_deg"]))
            if share >= c["min_overlap"]:
                return False
        return True

    def _sample_points(self, kf: MapKeyframe) -> np.ndarray:
        """Up to 300 of the keyframe's 3D points (a fixed subset: the overlap estimate needs no more)."""
        X = kf.points3d[np.all(np.isfinite(kf.points3d), axis=1)].astype(np.float64)
        return X[:: max(1, len(X) // 300)]

    def _nearest_keyframes(self, T: np.ndarray, k: int) -> list[int]:
        """Ids of the k keyframes nearest to pose T in translation / min_translation + rotation / min_rotation."""
        dt, dr = self._pose_distances(T)
        score = dt / max(self.conf["min_translation_m"], 1e-6) + dr / max(self.conf["min_rotation_deg"], 1e-6)
        ids = list(self.map.keyframes)
        return [ids[i] for i in np.argsort(score, kind="stable")[:k]]

    def add_frame(self, image: np.ndarray, T_world_cam: np.ndarray, K: np.ndarray, stamp_ns: int,
                  depth: np.ndarray | None = None, frame_id: str = "",
                  distortion: Optional[Distortion] = None) -> bool:
        """Offer one posed frame; returns True when it was kept as a keyframe."""
        image = check_image(image)
        self._trim.frame(image.shape[0] * image.shape[1])
        T, K = _check_pose(T_world_cam), check_K(K)
        check_distortion(self.matcher, distortion)
        if depth is not None:
            depth = np.asarray(depth)
            if depth.shape[:2] != image.shape[:2] or depth.ndim != 2:
                raise ValueError(f"depth must be [H x W] = {image.shape[:2]}, got {depth.shape}")
            if not np.issubdtype(depth.dtype, np.floating):
                raise ValueError(f"depth must be float metres, got {depth.dtype} (convert 16UC1 millimetres first)")
        self.stats["frames"] += 1
        if not self._is_new_keyframe(T, K, (image.shape[1], image.shape[0])):
            return False
        feats = undistort(self.matcher, self.matcher.extract(image), K, distortion)
        kps = feats.keypoints.detach().cpu().numpy()
        desc = feats.descriptors.detach().cpu().numpy()
        c = self.conf
        if depth is not None:
            points = backproject_keypoints(kps, depth, K, T, c["min_depth_m"], c["max_depth_m"], c["depth_max_step"],
                                           distortion)
        else:
            points = np.full((len(kps), 3), np.nan, np.float32)
        if self.map is None:
            ident = matcher_identity(self.matcher.name, self.matcher.conf.get("max_keypoints", 0), desc.shape[1],
                                     desc.dtype)
            self.map = Map(self.matcher.name, ident, self.global_desc.identity, dict(self.matcher.conf),
                           c["map_frame_id"])
        kf = MapKeyframe(len(self.map), stamp_ns, T, K, (image.shape[1], image.shape[0]), kps, desc,
                         feats.scores.detach().cpu().numpy(), points, self.global_desc(image), frame_id)
        if depth is None and c["triangulate"] and len(self.map):
            self._triangulate(kf, feats, self._nearest_keyframes(T, int(c["triangulation_partners"])))
        self.map.add_keyframe(kf)
        self._positions = np.vstack([self._positions, T[:3, 3]])
        self._rotations = np.concatenate([self._rotations, T[None, :3, :3]])
        self.stats["keyframes"] += 1
        self.stats["keypoints"] += len(kps)
        self.stats["points_depth"] += int(np.isfinite(points[:, 0]).sum()) if depth is not None else 0
        return True

    def _triangulate(self, kf: MapKeyframe, feats: Features, partner_ids: list[int]) -> None:
        c = self.conf
        best = np.full(len(kf.keypoints), -1.0)  # parallax [deg] of the point kept per new keypoint
        for pid in partner_ids:
            ref = self.map[pid]
            matches = self.matcher.match(ref.features(self.matcher.device), feats)  # no feature cache to grow
            if not len(matches):
                continue
            i_ref, i_new = matches.indices[:, 0], matches.indices[:, 1]
            X, keep, parallax = triangulate(ref.keypoints[i_ref], kf.keypoints[i_new], ref.K, kf.K, ref.T_world_cam,
                                            kf.T_world_cam, c["max_reproj_px"], c["min_parallax_deg"],
                                            c["min_depth_m"], c["max_depth_m"])
            better = keep & (parallax > best[i_new])
            kf.points3d[i_new[better]] = X[better]
            best[i_new[better]] = parallax[better]
            fill = keep & np.isnan(ref.points3d[i_ref, 0])
            ref.points3d[i_ref[fill]] = X[fill]
            self.stats["points_triangulated"] += int(fill.sum())
        self.stats["points_triangulated"] += int((best >= 0).sum())

    def build(self) -> Map:
        """The map built so far. ValueError when no frame was added."""
        if self.map is None:
            raise ValueError("no frames were added: the map is empty")
        return self.map
