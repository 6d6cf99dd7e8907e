"""Our trained matchers on XFeat keypoints (models in ``match_ros.core.models``):

- ``coam_xfeat``:     co-attention conditioning + distinctiveness (CoAM, CVPR 2021); Matches carry the
                      per-match distinctiveness.
- ``omniglue_xfeat``: foundation-guided, position-guided attention (OmniGlue, CVPR 2024), with MobileNetV2
                      ImageNet features as the guidance; its descriptors are XFeat's 64 values followed by the
                      96 guidance values, so stored map keyframes keep everything the matcher needs.

Weights: the checkpoints shipped in ``match_ros/weights`` (made by ``match_ros_train``, see the .json beside
each), or ``model_weights``. float16 autocast on CUDA when ``fp16``.
"""
from __future__ import annotations

import numpy as np
import torch

from match_ros.core.models.checkpoint import load_checkpoint
from match_ros.core.features.types import Features, Matches
from match_ros.core.features.xfeat import XFeatExtractor


class _Learned(XFeatExtractor):
    kind = "?"

    def _load_net(self, build):
        conf, state = load_checkpoint(self.conf["model_weights"], self.kind)
        net = build(conf)
        net.load_state_dict(state, strict=True)
        return net.to(self.device).eval()


class CoAMXFeat(_Learned):
    """XFeat + CoAM-style co-attention. scores = cosine similarity of the conditioned descriptors,
    distinctiveness = sqrt(r_ref r_query); matches ranked by their product, best first."""

    name = "coam_xfeat"
    kind = "coam"
    default_conf = {
        **XFeatExtractor.default_conf,
        "min_score": 0.25,  # minimum distinctiveness x similarity of a kept match
        "model_weights": None,  # CoAM checkpoint; None: the one shipped in match_ros/weights
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        from match_ros.core.models.coam import CoAMNet

        self.model = self._load_net(CoAMNet)

    @torch.inference_mode()
    def match(self, ref: Features, query: Features) -> Matches:
        from match_ros.core.models.coam import mutual_matches

        if len(ref) == 0 or len(query) == 0:
            return Matches.empty()
        with torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
            c0, c1, z0, z1 = self.model(ref.descriptors.to(self.device)[None], query.descriptors.to(self.device)[None])
        idx, sim, dist = mutual_matches(c0[0].float(), c1[0].float(), z0[0].float(), z1[0].float(),
                                        float(self.conf["min_score"]))
        return Matches(idx.cpu().numpy(), sim.cpu().numpy(), dist.cpu().numpy())


class OmniGlueXFeat(_Learned):
    """XFeat + OmniGlue-style attention guided by MobileNetV2 features. scores = assignment confidence.
    Features.descriptors: [N x 160] = XFeat (64) | guidance (96)."""

    name = "omniglue_xfeat"
    kind = "omniglue"
    default_conf = {
        **XFeatExtractor.default_conf,
        "min_conf": 0.1,  # minimum assignment confidence of a match
        "guidance_short_side": 240,  # guidance backbone input short side [px]
        "model_weights": None,  # OmniGlue checkpoint; None: the one shipped in match_ros/weights
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        from match_ros.core.models.guidance import Guidance
        from match_ros.core.models.omniglue import OmniGlueNet

        self.model = self._load_net(OmniGlueNet)
        self.guidance = Guidance({"short_side": int(self.conf["guidance_short_side"])}, self.device)
        self._split = int(self.model.conf["input_dim"])

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        f = super().extract(image)
        guide = self.guidance(image, f.keypoints)
        return Features(f.keypoints, torch.cat([f.descriptors, guide], 1).contiguous(), f.scores, f.image_size)

    @torch.inference_mode()
    def match(self, ref: Features, query: Features) -> Matches:
        from match_ros.core.models.omniglue import match_from_assignment, normalize_kpts

        if len(ref) == 0 or len(query) == 0:
            return Matches.empty()
        d0, d1 = ref.descriptors.to(self.device), query.descriptors.to(self.device)
        if d0.shape[1] != self._split + self.guidance.dim or d1.shape[1] != d0.shape[1]:
            raise ValueError(f"{self.name}: descriptors must be [N x {self._split + self.guidance.dim}] "
                             f"(XFeat | guidance), got {tuple(d0.shape)} and {tuple(d1.shape)}")
        k0 = normalize_kpts(ref.keypoints.to(self.device), ref.image_size)
        k1 = normalize_kpts(query.keypoints.to(self.device), query.image_size)
        s = self._split
        with torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
            scores = self.model(k0, d0[None, :, :s], d0[None, :, s:], k1, d1[None, :, :s], d1[None, :, s:])
        idx, conf = match_from_assignment(scores[0].float(), float(self.conf["min_conf"]))
        return Matches(idx.cpu().numpy(), conf.cpu().numpy())
