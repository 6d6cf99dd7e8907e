"""OmniGlue-style matcher (Jiang et al., "OmniGlue: Generalizable Feature Matching with Foundation Model
Guidance", CVPR 2024), rebuilt on what ships offline.

What is kept from the paper:
- Guided inter-image attention: in every cross-attention, a keypoint attends only to the keypoints of the
  other image that a frozen foundation model deems similar: the top ``top_fraction`` (one half, as in the
  paper) of them by guidance-feature cosine similarity. This prunes the attention graph, it does not limit
  the final matches.
- Position-guided attention: keypoint positions enter the attention weights only (rotary encoding of the
  self-attention queries and keys); they are never added to the descriptors that get matched.
- Matching by descriptor similarity with a dustbin: dual-softmax with a learned matchability per keypoint
  (LightGlue's assignment head; the matchability is the dustbin).

What is substituted (nothing else ships offline, see ../shared/DATA_AND_WEIGHTS.md):
- SuperPoint keypoints/descriptors -> XFeat's (64-d).
- DINOv2 guidance -> ImageNet MobileNetV2 block 13 (96-d, stride 16), sampled at the keypoints.
- Training starts from LighterGlue's weights (same 6-layer, 96-d layout) instead of from scratch; the one
  new layer (``guide_proj``, guidance added to the input tokens) starts at zero, so the untrained model
  equals LighterGlue with guided attention.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from match_ros.core.config import merge_conf
from match_ros.core.models.blocks import FusedCrossBlock

default_conf = {
    "input_dim": 64,  # local descriptor size (XFeat)
    "guide_dim": 96,  # guidance feature size (MobileNetV2 block 13)
    "dim": 96,  # token size inside the attention layers (LighterGlue: 96)
    "n_layers": 6,  # self + cross attention layers (LighterGlue: 6)
    "num_heads": 1,
    "top_fraction": 0.5,  # share of the other image's keypoints each keypoint attends to
    "fuse_guidance": True,  # add a (zero-initialised) projection of the guidance features to the input tokens
}


def guided_masks(g0: torch.Tensor, g1: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """g0 [B x M x G], g1 [B x N x G] unit-norm guidance -> (attend01 [B x M x N], attend10 [B x N x M]) bool:
    for each keypoint, True at the ceil(fraction x count) most similar keypoints of the other image."""
    sim = g0 @ g1.transpose(1, 2)
    m, n = sim.shape[1:]

    def top(s, k):
        idx = s.topk(k, dim=-1).indices
        return torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)

    k1 = min(n, max(1, math.ceil(fraction * n)))
    k0 = min(m, max(1, math.ceil(fraction * m)))
    return top(sim, k1), top(sim.transpose(1, 2), k0)


class OmniGlueNet(nn.Module):
    """Parameter names follow kornia's LightGlue (input_proj, posenc, transformers.i.{self,cross}_attn,
    log_assignment.i) so that LighterGlue's checkpoint initialises every layer the two share."""

    def __init__(self, conf: dict | None = None):
        super().__init__()
        from kornia.feature.lightglue import LearnableFourierPositionalEncoding, MatchAssignment, SelfBlock

        self.conf = c = merge_conf(default_conf, conf, "OmniGlue")
        d, heads = int(c["dim"]), int(c["num_heads"])
        self.input_proj = nn.Linear(int(c["input_dim"]), d)
        self.guide_proj = nn.Linear(int(c["guide_dim"]), d) if c["fuse_guidance"] else None
        if self.guide_proj is not None:
            nn.init.zeros_(self.guide_proj.weight)
            nn.init.zeros_(self.guide_proj.bias)
        self.posenc = LearnableFourierPositionalEncoding(2, d // heads)
        self.transformers = nn.ModuleList()
        for _ in range(int(c["n_layers"])):
            layer = nn.Module()
            layer.self_attn = SelfBlock(d, heads, True)
            layer.cross_attn = FusedCrossBlock(d, heads)
            self.transformers.append(layer)
        self.log_assignment = nn.ModuleList(MatchAssignment(d) for _ in range(int(c["n_layers"])))

    def forward(self, kpts0, desc0, guide0, kpts1, desc1, guide1, all_layers: bool = False):
        """kpts*: [B x N x 2] normalised positions (kornia ``normalize_keypoints``), desc*: [B x N x input_dim],
        guide*: [B x N x guide_dim] unit norm.
        Returns the log assignment [B x M+1 x N+1] of the last layer, or a list with one per layer."""
        attend01, attend10 = guided_masks(guide0, guide1, float(self.conf["top_fraction"]))
        x0, x1 = self.input_proj(desc0), self.input_proj(desc1)
        if self.guide_proj is not None:
            x0, x1 = x0 + self.guide_proj(guide0), x1 + self.guide_proj(guide1)
        enc0, enc1 = self.posenc(kpts0), self.posenc(kpts1)
        out = []
        for i, layer in enumerate(self.transformers):
            x0, x1 = layer.self_attn(x0, enc0), layer.self_attn(x1, enc1)
            x0, x1 = layer.cross_attn(x0, x1, attend01=attend01, attend10=attend10)
            if all_layers or i == len(self.transformers) - 1:
                out.append(self.log_assignment[i](x0, x1)[0])
        return out if all_layers else out[-1]

    def init_from_lighterglue(self, state: dict) -> list[str]:
        """Copy every parameter LighterGlue has with the same name and shape; returns the names left at their
        initialisation (the new layers). Raises when a shared name has another shape."""
        own = self.state_dict()
        shared = {k: v for k, v in state.items() if k in own}
        for k, v in shared.items():
            if own[k].shape != v.shape:
                raise ValueError(f"LighterGlue parameter {k} has shape {tuple(v.shape)}, model {tuple(own[k].shape)}")
        self.load_state_dict(shared, strict=False)
        return sorted(set(own) - set(shared))


def assignment_loss(log_assignment: torch.Tensor, labels0: torch.Tensor, labels1: torch.Tensor,
                    neg_weight: float = 0.5) -> torch.Tensor:
    """LightGlue's negative log-likelihood of the ground-truth assignment, for one pair.

    log_assignment [M+1 x N+1]; labels0 [M], labels1 [N] (index of the match, -1 unmatched, -2 ignored).
    """
    pos0 = labels0 >= 0
    terms = []
    if pos0.any():
        i = pos0.nonzero()[:, 0]
        terms.append(-log_assignment[i, labels0[i]].mean())
    neg = []
    un0, un1 = labels0 == -1, labels1 == -1
    if un0.any():
        neg.append(-log_assignment[:-1, -1][un0].mean())
    if un1.any():
        neg.append(-log_assignment[-1, :-1][un1].mean())
    if neg:
        terms.append(neg_weight * sum(neg) / len(neg))
    return sum(terms) if terms else log_assignment.sum() * 0.0


def match_from_assignment(log_assignment: torch.Tensor, min_conf: float):
    """Mutual argmax of the assignment above ``min_conf`` (kornia ``filter_matches``):
    [M+1 x N+1] -> (indices [K x 2], confidence [K])."""
    from kornia.feature.lightglue import filter_matches

    m0, _, s0, _ = filter_matches(log_assignment[None], min_conf)
    valid = m0[0] > -1
    i = valid.nonzero()[:, 0]
    return torch.stack([i, m0[0][valid]], -1), s0[0][valid]


def normalize_kpts(kpts: torch.Tensor, size) -> torch.Tensor:
    """[N x 2] pixels, (w, h) -> [1 x N x 2] as LightGlue's positional encoding expects."""
    from kornia.feature.lightglue import normalize_keypoints

    return normalize_keypoints(kpts[None], torch.tensor([size], device=kpts.device, dtype=torch.float32))
