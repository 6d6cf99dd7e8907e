"""Relocalization of a query image against a keyframe map.

retrieve top-k keyframes (global descriptor + index) -> match the query to them
one at a time (best first) -> 2D-3D correspondences from the keyframes' 3D
points -> robust PnP + refinement + checks -> pose with covariance. Matching
stops as soon as a pose passes every check, so a typical query matches one
keyframe; only hard queries pay for more.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

from match_ros.core.geometry.absolute_pose import PnPResult, default_pnp_conf, solve_pnp
from match_ros.core.relocalization.mapstore import MapKeyframe
from match_ros.core.features.matcher import Matcher
from match_ros.core.features.types import Features, Matches, check_image

default_localizer_conf = {
    "top_k": 3,                    # keyframes retrieved per query
    "max_keyframes_matched": 3,    # keyframes matched at most per query (best retrieval score first)
    "min_retrieval_score": 0.0,    # retrieved keyframes below this cosine similarity are skipped
    "prior_radius_m": 0.0,         # with a prior pose, only keyframes within this distance [m] (0: no prior use)
    "max_keyframe_distance_m": 5.0,  # the solved camera must lie within this distance of a matched keyframe [m]
    "feature_cache": 64,           # keyframe feature sets kept on the matcher's device
}


class MapView(Protocol):
    """What the localizer needs of a map (match_ros.core.relocalization.mapstore.Map)."""

    def retrieve(self, global_desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def __getitem__(self, kf_id: int) -> MapKeyframe: ...


@dataclass
class KeyframeMatch:
    """Matches of the query against one keyframe, with the keyframe's matched pixels."""

    keyframe_id: int
    matches: Matches
    pts_ref: np.ndarray      # [M x 2] keyframe pixels
    pts_query: np.ndarray    # [M x 2] query pixels
    inliers: np.ndarray      # [M] bool: PnP inlier (False for matches without a 3D point)


@dataclass
class LocalizationResult:
    success: bool
    T_map_cam: np.ndarray = field(default_factory=lambda: np.eye(4))
    covariance: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))
    num_inliers: int = 0
    rmse_px: float = float("nan")
    retrieved: list = field(default_factory=list)       # [(keyframe id, score)]
    matched: list = field(default_factory=list)         # [KeyframeMatch]
    num_query_keypoints: int = 0
    reason: str = ""
    timings_ms: dict = field(default_factory=dict)


class Localizer:
    """Global relocalization: needs no prior, uses one when given (prior_radius_m)."""

    def __init__(self, map_: MapView, matcher: Matcher, global_desc, conf: dict | None = None,
                 pnp_conf: dict | None = None):
        unknown = set(conf or {}) - set(default_localizer_conf)
        if unknown:
            raise ValueError(f"unknown localizer configuration keys {sorted(unknown)}")
        unknown = set(pnp_conf or {}) - set(default_pnp_conf)
        if unknown:
            raise ValueError(f"unknown PnP configuration keys {sorted(unknown)}")
        self.conf = {**default_localizer_conf, **(conf or {})}
        self.pnp_conf = {**default_pnp_conf, **(pnp_conf or {})}
        self.map, self.matcher, self.global_desc = map_, matcher, global_desc
        self._cache: OrderedDict = OrderedDict()

    def set_map(self, map_: MapView) -> None:
        self.map = map_
        self._cache.clear()

    def localize(self, image: np.ndarray, K: np.ndarray, prior_T_map_cam: Optional[np.ndarray] = None,
                 query_features: Optional[Features] = None) -> LocalizationResult:
        """Pose of the camera that took ``image`` ([H x W(x3)] uint8, calibration K [3 x 3])."""
        image = check_image(image)
        c, t = self.conf, {}
        t0 = time.perf_counter()
        ids, scores = self._retrieve(image, prior_T_map_cam)
        t1 = time.perf_counter()
        feats = query_features if query_features is not None else self.matcher.extract(image)
        t2 = time.perf_counter()
        t.update(retrieval=1e3 * (t1 - t0), extract=1e3 * (t2 - t1), match=0.0, pnp=0.0)
        result = LocalizationResult(False, retrieved=list(zip(ids.tolist(), scores.tolist())),
                                    num_query_keypoints=len(feats), timings_ms=t)
        X_all, x_all, owners = [], [], []
        best: Optional[PnPResult] = None
        for kf_id, score in zip(ids[: c["max_keyframes_matched"]], scores):
            if score < c["min_retrieval_score"]:
                break
            ta = time.perf_counter()
            kf = self.map[int(kf_id)]
            m = self.matcher.match(self.keyframe_features(kf), feats)
            pts_ref, pts_query = m.points(self.keyframe_features(kf), feats)
            X = kf.points3d[m.indices[:, 0]].astype(np.float64) if len(m) else np.zeros((0, 3))
            has3d = np.all(np.isfinite(X), axis=1)
            result.matched.append(KeyframeMatch(int(kf_id), m, pts_ref, pts_query, np.zeros(len(m), bool)))
            X_all.append(X[has3d])
            x_all.append(pts_query[has3d])
            owners.append(np.column_stack([np.full(int(has3d.sum()), len(result.matched) - 1),
                                           np.flatnonzero(has3d)]))
            tb = time.perf_counter()
            pnp = solve_pnp(np.concatenate(X_all), np.concatenate(x_all), K,
                            (image.shape[1], image.shape[0]), self.pnp_conf)
            tc = time.perf_counter()
            t["match"] += 1e3 * (tb - ta)
            t["pnp"] += 1e3 * (tc - tb)
            if pnp.valid and not self._near_a_keyframe(pnp.T_map_cam, result.matched):
                pnp.valid, pnp.reason = False, f"pose farther than {c['max_keyframe_distance_m']} m from the matched keyframes"
            best = pnp
            if pnp.valid:
                break
        if best is None:
            result.reason = "no keyframe retrieved" if len(ids) == 0 else "retrieval scores below threshold"
            return result
        own = np.concatenate(owners)
        for (mi, j) in own[best.inliers]:
            result.matched[mi].inliers[j] = True
        result.success, result.reason = best.valid, best.reason
        result.num_inliers, result.rmse_px = best.num_inliers, best.rmse_px
        if best.valid:
            result.T_map_cam, result.covariance = best.T_map_cam, best.covariance
        return result

    # -------------------------------------------------------------- helpers
    def _retrieve(self, image, prior) -> tuple[np.ndarray, np.ndarray]:
        c = self.conf
        desc = self.global_desc(image)
        use_prior = prior is not None and c["prior_radius_m"] > 0
        ids, scores = self.map.retrieve(desc, c["top_k"] * (5 if use_prior else 1))
        if use_prior:
            near = [i for i, kf_id in enumerate(ids)
                    if np.linalg.norm(self.map[int(kf_id)].T_world_cam[:3, 3] - prior[:3, 3])
                    <= c["prior_radius_m"]]
            ids, scores = ids[near], scores[near]
        return np.asarray(ids)[: c["top_k"]], np.asarray(scores)[: c["top_k"]]

    def keyframe_features(self, kf: MapKeyframe) -> Features:
        """A keyframe's stored features on the matcher's device, cached (LRU)."""
        f = self._cache.get(kf.id)
        if f is None:
            f = self._cache[kf.id] = kf.features(self.matcher.device)
            while len(self._cache) > self.conf["feature_cache"]:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(kf.id)
        return f

    def _near_a_keyframe(self, T_map_cam: np.ndarray, matched: list) -> bool:
        limit = self.conf["max_keyframe_distance_m"]
        return any(np.linalg.norm(self.map[m.keyframe_id].T_world_cam[:3, 3] - T_map_cam[:3, 3]) <= limit
                   for m in matched)
