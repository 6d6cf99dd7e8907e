"""a2net_align: a global homography from attention over a correlation volume (after A2Net, see
``core/models/a2net.py``), used to pre-warp the query before XFeat mutual-NN matching.

extract(image): XFeat keypoints/descriptors exactly as ``xfeat_mnn`` does, plus in ``Features.extra``:
  ``"a2net_dense"``: [1 x 64 x h/8 x w/8] the XFeat dense map at the alignment size (``A2NetAlign.conf["size"]``),
  ``"a2net_image"``: [H x W] or [H x W x 3] uint8 tensor, the image itself (re-extracted on the pre-warped query).
match(ref, query):
  1. H (reference -> query pixels) from the model (``homography``);
  2. the query warped into the reference frame (``cv2.warpPerspective`` with ``WARP_INVERSE_MAP``: warped(x) =
     query(H x)), XFeat on the warped query, keypoints where the warp left the query image dropped;
  3. mutual NN on cosine similarity (``min_cossim``) of the reference against the warped-query descriptors, kept
     when the two positions agree within ``radius`` px (the images are aligned now);
  4. the warped-query keypoints mapped back to the query with H: ``Matches.points_query`` (sub-pixel positions in
     the original query); ``indices[:, 1]`` is the query keypoint (of ``query``'s own keypoints) nearest to that
     position, so it is not one-to-one: two matches may share their nearest query keypoint.
  5. ``rewarp`` times: the homography of these matches (USAC-MAGSAC, ``rewarp_ransac_px``) re-warps the query and
     steps 2-4 run again with ``rewarp_radius`` (the model's estimate is a few px off at the image borders, the
     matches' homography a pixel or less: the re-warped query is the reference's geometry and XFeat finds the
     same points in both);
  (in step 3 of every round, each match's warped-query position is refined by Lucas-Kanade from the reference
  image into the warped query, ``subpixel_window``: XFeat keypoints are whole pixels).
Features without the two extras (e.g. a keyframe rebuilt from a stored map) are matched by plain mutual NN, as
``xfeat_mnn``. When the model's homography is unusable (not finite, or folding the image) the identity is used
(plain mutual NN on the unwarped query, then the radius filter is off).
Measured on graf1 -> graf3 (800 x 640, CPU, one thread; the first checkpoint): coarse homography alone 5.96 px
corner error; matches + USAC-MAGSAC 3 px 0.60 px (xfeat_mnn 1.13 px); without re-warp 2.32 px, one re-warp
1.62 px. The shipped checkpoint: 0.69 px (match_ros_eval_pairs, docs/matchers.md).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from match_ros.core.features.nn import match_features
from match_ros.core.features.subpixel import grey_u8, lucas_kanade
from match_ros.core.features.types import Features, Matches, check_image
from match_ros.core.features.xfeat import XFeatExtractor
from match_ros.core.models.checkpoint import load_checkpoint


class A2NetAlignMatcher(XFeatExtractor):
    """XFeat + A2Net-style global homography pre-warp + mutual NN. scores = cosine similarity,
    distinctiveness = 1 - Lowe ratio (as ``xfeat_mnn``); ``points_query`` set (module docstring)."""

    name = "a2net_align"
    kind = "a2net"
    keypoint_geometry = False  # warps the query image onto the reference's keypoints: refuses distortion
    default_conf = {
        **XFeatExtractor.default_conf,
        "max_keypoints": 2048,  # top-k keypoints kept per image (reference, query and warped query)
        "min_cossim": 0.82,  # minimum cosine similarity of a match (as xfeat_mnn)
        "radius": 8.0,  # max distance [px, reference frame] of a match after the pre-warp (0: no restriction)
        "rewarp": 3,  # re-warps with the homography of the matches (USAC-MAGSAC), each followed by matching (0: off)
        "rewarp_ransac_px": 3.0,  # inlier threshold of that homography [px]
        "rewarp_radius": 4.0,  # max distance [px] of a match after a re-warp (0: no restriction)
        "subpixel_window": 15,  # Lucas-Kanade window [px] refining matches on the pre-warped query (0: off)
        "passes": 2,  # homography estimation passes (1: global only; 2: + residual on the warped query map)
        "model_weights": None,  # a2net checkpoint; None: the one shipped in match_ros/weights
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        from match_ros.core.models.a2net import A2NetAlign

        if float(self.conf["radius"]) < 0:
            raise ValueError(f"{self.name}: radius must be >= 0, got {self.conf['radius']}")
        if int(self.conf["passes"]) < 1:
            raise ValueError(f"{self.name}: passes must be >= 1, got {self.conf['passes']}")
        model_conf, state = load_checkpoint(self.conf["model_weights"], self.kind)
        self.model = A2NetAlign(model_conf)
        self.model.load_state_dict(state, strict=True)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        """image: [H x W] or [H x W x 3] uint8 RGB -> Features on self.device (extra: module docstring)."""
        from match_ros.core.models.a2net import xfeat_dense

        image = check_image(image)
        f = super().extract(image)
        w, h = self.model.conf["size"]
        # the antialiased resize in float32, outside the autocast (no bfloat16 kernel on the CPU)
        grey = F.interpolate(self.grey(image), (h, w), mode="bilinear", align_corners=False, antialias=True)
        with self._amp():
            dense = xfeat_dense(self.net, grey, (w, h))
        f.extra["a2net_dense"] = dense.float()
        f.extra["a2net_image"] = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        return f

    def _dense(self, f: Features) -> torch.Tensor:
        if "a2net_dense" not in f.extra:
            raise ValueError(f"{self.name}: Features without 'a2net_dense' (extract them with this backend)")
        return f.extra["a2net_dense"].to(self.device)

    @torch.inference_mode()
    def homography(self, ref: Features, query: Features) -> np.ndarray:
        """[3 x 3] float64 homography reference pixels -> query pixels (original image sizes), H[2, 2] = 1."""
        from match_ros.core.models.a2net import pixel_homography

        Hn = self.model(self._dense(ref), self._dense(query), int(self.conf["passes"]))[-1][0]
        return pixel_homography(Hn.cpu().numpy(), ref.image_size, query.image_size)

    def _usable(self, H: np.ndarray, size: tuple) -> bool:
        """Finite, and the reference image's corners stay in front (no fold) and within a sane range."""
        if not np.isfinite(H).all():
            return False
        w, h = size
        c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64) @ H.T
        if (c[:, 2] <= 1e-6).any():
            return False
        p = c[:, :2] / c[:, 2:]
        return bool(np.abs(p).max() < 20 * max(w, h))

    def _match_warped(self, ref: Features, image: np.ndarray, H: np.ndarray, radius: float):
        """Mutual NN of ``ref`` against XFeat on the query ``image`` warped into the reference frame by H
        (reference -> query pixels). radius > 0: keep pairs within radius px in the reference frame.
        Returns (reference indices [M], scores [M], distinctiveness [M], query positions [M x 2] float64)."""
        w, h = ref.image_size
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # warped(x) = query(H x)
        warped = cv2.warpPerspective(image, H, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
        valid = cv2.warpPerspective(np.full(image.shape[:2], 255, np.uint8), H, (w, h), flags=flags,
                                    borderMode=cv2.BORDER_CONSTANT)
        valid = cv2.erode(valid, np.ones((5, 5), np.uint8))
        fw = XFeatExtractor.extract(self, warped)
        kw = fw.keypoints.cpu().numpy()
        inside = valid[np.round(kw[:, 1]).astype(int), np.round(kw[:, 0]).astype(int)] > 0
        keep = torch.from_numpy(np.flatnonzero(inside)).to(fw.keypoints.device)
        fw = Features(fw.keypoints[keep], fw.descriptors[keep], fw.scores[keep], fw.image_size)
        m = match_features(ref, fw, "cosine", None, float(self.conf["min_cossim"]))
        kr = ref.keypoints.cpu().numpy().astype(np.float64)[m.indices[:, 0]]
        kw = fw.keypoints.cpu().numpy().astype(np.float64)[m.indices[:, 1]]
        near = np.linalg.norm(kr - kw, axis=1) <= radius if radius > 0 else np.ones(len(m), bool)
        win = int(self.conf["subpixel_window"])
        if win > 0 and near.any() and "a2net_image" in ref.extra:
            kw[near] = self._subpixel(ref.extra["a2net_image"].cpu().numpy(), warped, kr[near], kw[near], win)
        pq = cv2.perspectiveTransform(kw[near][None], H)[0] if near.any() else np.zeros((0, 2))
        return m.indices[near, 0], m.scores[near], m.distinctiveness[near], pq

    @staticmethod
    def _subpixel(ref_image: np.ndarray, warped: np.ndarray, kr: np.ndarray, kw: np.ndarray, win: int) -> np.ndarray:
        """Sub-pixel positions in the warped query of reference keypoints kr [M x 2] matched to warped keypoints
        kw [M x 2]: Lucas-Kanade (one level, win x win px) from the reference into the warped query, started at
        kw; kept where it converged within 1.5 px of kw, else kw."""
        refined, ok = lucas_kanade(grey_u8(ref_image), grey_u8(warped), kr, kw, win, 1.5)
        return np.where(ok[:, None], refined, kw)

    @torch.inference_mode()
    def match(self, ref: Features, query: Features) -> Matches:
        if len(ref) == 0 or len(query) == 0:
            return Matches.empty()
        if not all(k in f.extra for f in (ref, query) for k in ("a2net_dense", "a2net_image")):
            # e.g. a keyframe rebuilt from a stored map (keypoints and descriptors only): no alignment possible
            return match_features(ref, query, "cosine", None, float(self.conf["min_cossim"]))
        image = query.extra["a2net_image"].cpu().numpy()
        H = self.homography(ref, query)
        aligned = self._usable(H, ref.image_size)
        if not aligned:
            H = np.eye(3)
        out = self._match_warped(ref, image, H, float(self.conf["radius"]) if aligned else 0.0)
        for _ in range(int(self.conf["rewarp"])):
            if len(out[0]) < 8:
                break
            kr = ref.keypoints.cpu().numpy().astype(np.float64)[out[0]]
            H2, _ = cv2.findHomography(kr, out[3], cv2.USAC_MAGSAC, float(self.conf["rewarp_ransac_px"]))
            if H2 is None or not self._usable(H2, ref.image_size):
                break
            out = self._match_warped(ref, image, H2 / H2[2, 2], float(self.conf["rewarp_radius"]))
        idx, scores, distinct, pq = out
        if len(idx) == 0:
            return Matches.empty()
        # exact in float64: torch.cdist in float32 expands |a|^2 + |b|^2 - 2ab, centi-pixel errors at 500 px that
        # picked a farther keypoint in near-ties (a fresh CI on 2026-12-07)
        nearest = cKDTree(query.keypoints.cpu().numpy().astype(np.float64)).query(np.asarray(pq, np.float64))[1]
        return Matches(np.stack([idx, nearest], 1), scores, distinct, points_query=pq)
