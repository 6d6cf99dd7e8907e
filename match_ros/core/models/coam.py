"""CoAM-style matcher (Wiles, Ehrhardt, Zisserman, "Co-Attention for Conditioned Image Matching",
CVPR 2021), as a sparse matcher on XFeat keypoints.

What is kept from the paper:
- Conditioning: each image's descriptors are recomputed given the other image through co-attention (every
  keypoint attends to all keypoints of the other image; no positional encoding), then matched by cosine
  similarity.
- Distinctiveness: a per-keypoint score in [0, 1] learned as how rarely the conditioned descriptor is
  confused with a negative in the other image (training target: its nearest neighbour in the other image is
  its true match). At test time matches are mutual nearest neighbours ranked by
  distinctiveness x similarity, and the low ones dropped.

What differs: the paper conditions dense CNN feature maps (ResNet + U-Net decoder); here the conditioning
acts on sparse XFeat descriptors, so a stored map keyframe (keypoints + descriptors) is all it needs. The
co-attention layers start from LighterGlue's first cross-attention layers; the output projection starts at
zero, so the untrained model matches exactly like XFeat + mutual nearest neighbours.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from match_ros.core.config import merge_conf
from match_ros.core.models.blocks import FusedCrossBlock

default_conf = {
    "input_dim": 64,  # local descriptor size (XFeat)
    "dim": 96,  # token size inside the co-attention layers (as LighterGlue, to start from its weights)
    "n_layers": 2,  # co-attention layers
    "num_heads": 1,
    "temperature": 0.05,  # initial softmax temperature of the descriptor loss (learned)
}


class CoAMNet(nn.Module):
    def __init__(self, conf: dict | None = None):
        super().__init__()
        self.conf = c = merge_conf(default_conf, conf, "CoAM")
        d, heads = int(c["dim"]), int(c["num_heads"])
        self.input_proj = nn.Linear(int(c["input_dim"]), d)
        self.coattn = nn.ModuleList(FusedCrossBlock(d, heads) for _ in range(int(c["n_layers"])))
        self.out_proj = nn.Linear(d, int(c["input_dim"]))
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.distinct = nn.Sequential(nn.Linear(d + 1, d // 2), nn.GELU(), nn.Linear(d // 2, 1))
        self.log_inv_temp = nn.Parameter(torch.tensor(math.log(1.0 / float(c["temperature"]))))

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor):
        """desc*: [B x N x input_dim] unit-norm -> (conditioned desc0, desc1 unit-norm, distinctiveness logits
        d0 [B x M], d1 [B x N]).

        The distinctiveness head sees the conditioned token and the gap between the best and second-best
        similarity to the other image (the confusion the score is about)."""
        x0, x1 = self.input_proj(desc0), self.input_proj(desc1)
        for block in self.coattn:
            x0, x1 = block(x0, x1)
        c0 = F.normalize(desc0 + self.out_proj(x0), dim=-1)
        c1 = F.normalize(desc1 + self.out_proj(x1), dim=-1)
        sim = c0 @ c1.transpose(1, 2)
        gap0, gap1 = _top2_gap(sim), _top2_gap(sim.transpose(1, 2))
        z0 = self.distinct(torch.cat([x0, gap0[..., None]], -1))[..., 0]
        z1 = self.distinct(torch.cat([x1, gap1[..., None]], -1))[..., 0]
        return c0, c1, z0, z1

    def init_from_lighterglue(self, state: dict) -> list[str]:
        """input_proj <- LighterGlue input_proj; co-attention layer i <- LighterGlue layer i's cross-attention.
        Returns the parameter names left at their initialisation."""
        mapped = {"input_proj.weight": state["input_proj.weight"], "input_proj.bias": state["input_proj.bias"]}
        for i in range(len(self.coattn)):
            prefix = f"transformers.{i}.cross_attn."
            mapped.update({f"coattn.{i}.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)})
        own = self.state_dict()
        for k, v in mapped.items():
            if k not in own or own[k].shape != v.shape:
                raise ValueError(f"LighterGlue parameter for {k} does not fit the model")
        self.load_state_dict(mapped, strict=False)
        return sorted(set(own) - set(mapped))


def _top2_gap(sim: torch.Tensor) -> torch.Tensor:
    """[B x M x N] -> [B x M] best minus second-best similarity per row (0 when N < 2)."""
    if sim.shape[-1] < 2:
        return torch.zeros(sim.shape[:-1], device=sim.device, dtype=sim.dtype)
    top = sim.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def coam_loss(net: CoAMNet, c0, c1, z0, z1, labels0: torch.Tensor, labels1: torch.Tensor,
              distinct_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Loss for one pair (batch index 0).

    - descriptor: dual-softmax cross-entropy of the ground-truth matches over the conditioned similarities;
    - distinctiveness: binary cross-entropy against "the nearest neighbour in the other image is the true
      match" (a keypoint without a true match is never distinctive).
    labels*: match index, -1 unmatched, -2 ignored (``pairs.match_labels``).
    """
    sim = (c0[0] @ c1[0].t()) * net.log_inv_temp.exp()
    pos = (labels0 >= 0).nonzero()[:, 0]
    if len(pos):
        j = labels0[pos]
        desc = -(F.log_softmax(sim, 1)[pos, j] + F.log_softmax(sim, 0)[pos, j]).mean() / 2
    else:
        desc = sim.sum() * 0.0

    def target(sim_rows, labels):
        return ((labels >= 0) & (sim_rows.argmax(1) == labels)).float()

    with torch.no_grad():
        t0, t1 = target(sim, labels0), target(sim.t(), labels1)
    known0, known1 = labels0 != -2, labels1 != -2
    bce = [F.binary_cross_entropy_with_logits(z[0][k], t[k]) for z, t, k in ((z0, t0, known0), (z1, t1, known1))
           if k.any()]
    distinct = sum(bce) / len(bce) if bce else sim.sum() * 0.0
    return desc + distinct_weight * distinct, {"desc": float(desc.detach()), "distinct": float(distinct.detach())}


def mutual_matches(c0: torch.Tensor, c1: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor, min_score: float):
    """Mutual nearest neighbours of conditioned descriptors [M x D], [N x D] with logits z0 [M], z1 [N].

    Returns (indices [K x 2], similarity [K], distinctiveness [K]) for the matches whose
    distinctiveness x similarity >= min_score, best first; distinctiveness = sqrt(r0_i r1_j)."""
    if len(c0) == 0 or len(c1) == 0:
        e = torch.zeros(0, device=c0.device)
        return torch.zeros((0, 2), dtype=torch.long, device=c0.device), e, e
    sim = c0 @ c1.t()
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    i = torch.arange(len(c0), device=c0.device)
    keep = nn10[nn01] == i
    i, j = i[keep], nn01[keep]
    s = sim[i, j].clamp(0.0, 1.0)
    r = torch.sqrt(torch.sigmoid(z0[i]) * torch.sigmoid(z1[j]))
    rank = r * s
    ok = rank >= min_score
    order = torch.argsort(-rank[ok])
    return torch.stack([i[ok], j[ok]], -1)[order], s[ok][order], r[ok][order]
