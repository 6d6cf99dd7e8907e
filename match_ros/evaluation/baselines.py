"""Reference pipelines for the relocalization benchmarks: what a plain implementation of the same idea does.

``PlainPipeline`` is the hloc pattern with the package's own parts: the image's features, the localizer's
retrieval short-list (``Localizer.retrieve``: the same keyframes the package starts from), the configured matcher
against each of the first ``top_k`` keyframes (``Localizer.matcher_matches``), the 2D-3D matches of the ``pool``
keyframes with the most of them pooled, and one robust PnP (``solve_pnp``, its default checks) whose first-order
covariance is published. No verification, no ambiguity, twin or matcher checks, no covariance calibration: the
column a table compares the package against (``eval_reloc.run_offline(mode="plain")``,
``match_ros_bench_integrity --runs plain:none``).

With ``xfeat_lighterglue`` it is the "plain XFeat+LighterGlue" of issue #21 (top keyframes by match count, one PnP
over their pooled matches); with ``sift`` the shape of the COLMAP pipeline (SIFT, retrieval, pooled PnP) without
pycolmap: COLMAP's absolute-pose estimator is a LO-RANSAC P3P with a refinement, as ``solve_pnp`` (USAC MAGSAC
with local optimisation, Levenberg-Marquardt), so pycolmap would add a dependency for the same estimator.
"""
from __future__ import annotations

import time

import numpy as np

from match_ros.core.geometry.absolute_pose import solve_pnp
from match_ros.core.relocalization.localizer import LocalizationResult, Localizer


class PlainPipeline:
    """Retrieval, matcher against the short-list, pooled PnP; ``localize(image, K)`` like ``Localizer``'s."""

    def __init__(self, localizer: Localizer, top_k: int = 10, pool: int = 3):
        if top_k < 1 or pool < 1:
            raise ValueError(f"top_k and pool must be >= 1, got {top_k}, {pool}")
        self.loc, self.top_k, self.pool = localizer, int(top_k), int(pool)

    def localize(self, image: np.ndarray, K: np.ndarray) -> LocalizationResult:
        loc, t = self.loc, {"extract": 0.0, "retrieval": 0.0, "match": 0.0, "pnp": 0.0}
        t0 = time.perf_counter()
        feats = loc.matcher.extract(image)
        t1 = time.perf_counter()
        ids, scores = loc.retrieve(image, K, query_features=feats)
        t2 = time.perf_counter()
        t["extract"], t["retrieval"] = 1e3 * (t1 - t0), 1e3 * (t2 - t1)
        retrieved = list(zip(ids.tolist(), scores.tolist()))
        per_kf = []
        for kf_id in ids[: self.top_k].tolist():
            X, x = loc.matcher_matches(loc.map[int(kf_id)], feats)
            if len(X):
                per_kf.append((len(X), int(kf_id), X, x))
        t3 = time.perf_counter()
        t["match"] = 1e3 * (t3 - t2)
        per_kf.sort(key=lambda p: -p[0])
        used = per_kf[: self.pool]
        if not used or not sum(p[0] for p in used):
            return LocalizationResult(False, retrieved=retrieved, mode="plain", timings_ms=t,
                                      reason="no 2D-3D matches with the retrieved keyframes")
        X = np.concatenate([p[2] for p in used])
        x = np.concatenate([p[3] for p in used])
        size = (image.shape[1], image.shape[0])
        pnp = solve_pnp(X, x, K, size)
        t["pnp"] = 1e3 * (time.perf_counter() - t3)
        kept = ", ".join(f"{p[1]} ({p[0]})" for p in used)
        out = LocalizationResult(pnp.valid, pnp.T_map_cam, pnp.covariance if pnp.valid else np.full((6, 6), np.nan),
                                 num_inliers=pnp.num_inliers, rmse_px=pnp.rmse_px, retrieved=retrieved, mode="plain",
                                 timings_ms=t, stats={"pooled_matches": len(X), "pooled_keyframes": len(used)},
                                 reason=(f"localized with {pnp.num_inliers} inliers" if pnp.valid else pnp.reason)
                                 + f" over keyframes {kept}")
        return out
