"""Guided matching: map points projected with a pose hypothesis, matched to the query keypoints near them.

Given a camera pose, each 3D map point lands at a known pixel; its match among the query's keypoints can only
be one within a few pixels. Restricting the descriptor comparison to those candidates makes matching cheap and
very selective, which serves three purposes (as tracking against a local map does in ORB-SLAM):
- verification: a wrong pose hypothesis finds few consistent matches, a right one finds many;
- refinement: the matches come from every keyframe that sees the place, not only the one matched first;
- tracking: from a pose predicted by odometry, the whole pose comes from guided matches (no matcher at all).

Descriptor similarity in [-1, 1], as ``features.nn``: cosine for float descriptors, 1 - 2 d / bits for binary
(uint8 packed bits) ones, with d the Hamming distance. Everything runs in numpy on the CPU: candidate pairs
come from a grid over the query keypoints, so only pairs within the radius are ever compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from match_ros.core.geometry.camera import project, transform_points
from match_ros.core.geometry.transforms import invert


def similarity_vectors(desc: np.ndarray) -> np.ndarray:
    """[N x D] float descriptors or [N x B] uint8 packed bits -> [N x D'] float32 vectors whose inner product is
    the similarity (unit vectors: cosine; +-1 / sqrt(bits) vectors: 1 - 2 Hamming / bits)."""
    d = np.asarray(desc)
    if d.dtype == np.uint8:
        v = np.unpackbits(d, axis=1).astype(np.float32) * 2.0 - 1.0
        return v / np.sqrt(v.shape[1], dtype=np.float32)
    v = np.asarray(d, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def pair_similarity(vec_a: np.ndarray, vec_b: np.ndarray, bits_a=None, bits_b=None) -> np.ndarray:
    """Row-wise similarity of paired descriptors: from the packed bits when given (binary descriptors: XOR and a
    popcount table, 32x less memory than the +-1 vectors), else the inner product of ``similarity_vectors``."""
    if bits_a is not None and bits_b is not None:
        d = _POPCOUNT[np.bitwise_xor(bits_a, bits_b)].sum(axis=1, dtype=np.int32)
        return 1.0 - 2.0 * d.astype(np.float32) / (8 * bits_a.shape[1])
    return np.einsum("ij,ij->i", vec_a, vec_b)


@dataclass
class MapPoints:
    """3D points with the descriptors of the keypoints they were seen as.

    xyz: [M x 3] float64 map-frame points; vec: [M x D'] float32 ``similarity_vectors`` of their descriptors;
    keyframe: [M] int64 keyframe id of each point; index: [M] int64 keypoint index in that keyframe;
    origin: [M x 3] float64 centre of the camera that saw each point (its keyframe's);
    bits: [M x B] uint8 packed bits of binary descriptors, or None for float descriptors.
    """

    xyz: np.ndarray
    vec: np.ndarray
    keyframe: np.ndarray
    index: np.ndarray
    origin: np.ndarray
    bits: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.xyz)

    @staticmethod
    def concat(parts: list) -> "MapPoints":
        if not parts:
            raise ValueError("no map points")
        bits = np.concatenate([p.bits for p in parts]) if parts[0].bits is not None else None
        return MapPoints(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("xyz", "vec", "keyframe", "index", "origin")), bits)


@dataclass
class GuidedMatches:
    """query: [K] query keypoint indices; point: [K] indices into the MapPoints; similarity: [K];
    projected: number of map points that project into the image (in front of the camera)."""

    query: np.ndarray
    point: np.ndarray
    similarity: np.ndarray
    projected: int

    def __len__(self) -> int:
        return len(self.query)


def pairs_within(uv: np.ndarray, kp: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with |uv[i] - kp[j]| <= radius, from a grid of cells of size radius over kp (3 x 3 cells
    around each uv). uv: [V x 2], kp: [N x 2] -> (i [P], j [P]) int64."""
    empty = np.zeros(0, np.int64)
    if not len(uv) or not len(kp):
        return empty, empty
    lo = np.minimum(uv.min(0), kp.min(0)) - radius
    cell = max(float(radius), 1e-3)
    kc = np.floor((kp - lo) / cell).astype(np.int64)
    pc = np.floor((uv - lo) / cell).astype(np.int64)
    gx = int(max(kc[:, 0].max(), pc[:, 0].max())) + 2
    gy = int(max(kc[:, 1].max(), pc[:, 1].max())) + 2
    kid = kc[:, 1] * gx + kc[:, 0]
    order = np.argsort(kid, kind="stable")
    counts = np.bincount(kid, minlength=gx * gy)
    starts = np.cumsum(counts) - counts
    out_i, out_j = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cx, cy = pc[:, 0] + dx, pc[:, 1] + dy
            ok = (cx >= 0) & (cx < gx) & (cy >= 0) & (cy < gy)
            cid = np.where(ok, cy * gx + cx, 0)
            cnt = np.where(ok, counts[cid], 0)
            total = int(cnt.sum())
            if not total:
                continue
            rep = np.repeat(np.arange(len(uv)), cnt)
            offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            out_i.append(rep)
            out_j.append(order[np.repeat(starts[cid], cnt) + offs])
    if not out_i:
        return empty, empty
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    near = np.sum((uv[i] - kp[j]) ** 2, axis=1) <= radius * radius
    return i[near], j[near]


# which map points a camera sees as their keyframe did (guided_matches' candidates, projected_pixels): in front by
# this much, viewing ray turned by less than this, distance within this factor
MIN_DEPTH_M, MAX_VIEW_ANGLE_DEG, MAX_SCALE = 0.05, 60.0, 2.5


def guided_matches(T_map_cam: np.ndarray, K: np.ndarray, image_size: tuple, query_kp: np.ndarray,
                   query_vec: np.ndarray, points: MapPoints, radius_px: float, min_similarity: float,
                   min_depth: float = MIN_DEPTH_M, max_view_angle_deg: float = MAX_VIEW_ANGLE_DEG,
                   max_scale: float = MAX_SCALE,
                   query_bits: Optional[np.ndarray] = None) -> GuidedMatches:
    """Match map points to query keypoints within ``radius_px`` of their projection with pose ``T_map_cam``.

    query_kp: [N x 2] pixels; query_vec: [N x D'] ``similarity_vectors`` of the query descriptors (query_bits:
    their packed bits, for binary descriptors). Only points
    the camera would see as their keyframe did are candidates: viewing ray turned by less than
    ``max_view_angle_deg`` and distance within a factor ``max_scale`` (a descriptor does not survive more, and a
    pose that looks at the map from behind or from afar must not collect chance matches). A match is the most
    similar keypoint in the radius, kept when its similarity reaches ``min_similarity`` and no other map point
    claims that keypoint with a higher similarity (one map point per query keypoint and vice versa).
    """
    none = np.zeros(0, np.int64)
    if not len(points) or not len(query_kp):
        return GuidedMatches(none, none, np.zeros(0, np.float32), 0)
    vis, uv = _visible(T_map_cam, K, image_size, points, radius_px, min_depth, max_view_angle_deg, max_scale)
    i, j = pairs_within(uv[vis], np.asarray(query_kp, np.float64), float(radius_px))
    if not len(i):
        return GuidedMatches(none, none, np.zeros(0, np.float32), len(vis))
    p = vis[i]
    if points.bits is not None and query_bits is not None:
        sim = pair_similarity(None, None, points.bits[p], query_bits[j])
    else:
        sim = pair_similarity(points.vec[p], query_vec[j])
    keep = sim >= min_similarity
    p, j, sim = p[keep], j[keep], sim[keep]
    # best keypoint per map point, then best map point per keypoint (one-to-one)
    first = _best_per(p, sim)
    p, j, sim = p[first], j[first], sim[first]
    first = _best_per(j, sim)
    p, j, sim = p[first], j[first], sim[first]
    return GuidedMatches(j.astype(np.int64), p.astype(np.int64), sim.astype(np.float32), len(vis))


def projected_pixels(T_map_cam: np.ndarray, K: np.ndarray, image_size: tuple, points: MapPoints,
                     min_depth: float = MIN_DEPTH_M, max_view_angle_deg: float = MAX_VIEW_ANGLE_DEG,
                     max_scale: float = MAX_SCALE) -> np.ndarray:
    """[M x 2] pixels of the map points pose ``T_map_cam`` would see in the image (as ``guided_matches`` selects
    its candidates): where the map says something should match."""
    if not len(points):
        return np.zeros((0, 2))
    vis, uv = _visible(T_map_cam, K, image_size, points, 0.0, min_depth, max_view_angle_deg, max_scale)
    return uv[vis]


def _visible(T_map_cam, K, image_size, points: MapPoints, margin_px, min_depth, max_view_angle_deg, max_scale):
    """(indices of the points the camera sees within ``margin_px`` of the image, [N x 2] pixels of all points)."""
    w, h = image_size
    uv, z = project(transform_points(invert(T_map_cam), points.xyz), K)
    ray_kf, ray_cam = points.xyz - points.origin, points.xyz - T_map_cam[:3, 3]
    d_kf, d_cam = np.linalg.norm(ray_kf, axis=1), np.linalg.norm(ray_cam, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(ray_kf * ray_cam, axis=1) / (d_kf * d_cam)
        ratio = d_cam / d_kf
    seen = (cos >= np.cos(np.radians(max_view_angle_deg))) & (ratio <= max_scale) & (ratio >= 1.0 / max_scale)
    vis = np.flatnonzero(seen & (z > min_depth) & (uv[:, 0] >= -margin_px) & (uv[:, 0] < w + margin_px)
                         & (uv[:, 1] >= -margin_px) & (uv[:, 1] < h + margin_px))
    return vis, uv


def _best_per(key: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the highest-score entry for each distinct key."""
    if not len(key):
        return np.zeros(0, np.int64)
    order = np.lexsort((-score, key))
    return order[np.r_[True, key[order][1:] != key[order][:-1]]]
