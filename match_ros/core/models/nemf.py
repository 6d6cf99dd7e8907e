"""A dense matching field with PatchMatch inference, after NeMF (Hong et al., "Neural Matching Fields:
Implicit Representation of Matching Fields for Visual Correspondence", NeurIPS 2022).

NeMF represents the matching cost as a function of a *continuous* pair of positions (p in image 0, q in image 1)
instead of a discrete cost volume, and finds each p's match with PatchMatch (random initialisation, propagation
of neighbours' hypotheses, random search) because the field cannot be enumerated at full resolution.
Our formulation, small enough to train on two CPU cores:

- **Field.** ``score(p, q) = <c0(p), c1(q)> / tau_c + <f0(p), f1(q)> / tau_f``: c = a learned 2-layer head on
  the frozen XFeat dense map (64-d, stride 8), f = the fine field from a small CNN on the grey image (locally
  contrast-normalised with ``normalise_input``) with the coarse head's context added: its stride-2 map sampled
  bilinearly, or (``fine_implicit``, the shipped model) an MLP evaluated at each continuous position on the
  samples there of that map and of the CNN's full-resolution first layer. The field is defined everywhere (the
  implicit part) and never evaluated on a full [N0 x N1] volume.
- **Inference** (``patchmatch``): coarse field (read in the map cell holding q), hypotheses q(p) for a grid of
  reference points; initialisation by random positions and by the identity, then iterations of propagation
  (each point tries its grid neighbours' displacements at 1 cell and at a jump that halves every iteration:
  jump flooding, so a good hypothesis spreads over the whole grid in log2(grid) iterations) and random search in
  a window that halves every iteration.
- **Refinement** (``refine``): the fine field on a (2r+1)^2 window of 1-px steps around q, soft-argmax in the
  3 x 3 neighbourhood of its peak for the sub-pixel position; run twice (the window re-centred).
- **Confidence**: cycle consistency (PatchMatch from image 1 back to image 0 lands within ``cycle_px`` of p)
  and the coarse cosine similarity.

Position convention of every map: a map covering the whole image, normalised coordinate
``g = 2 (x + 0.5) / W - 1`` for pixel x of a W-pixel side (``grid_sample`` with ``align_corners=False``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

default_conf = {
    "coarse_dim": 64,  # coarse field features (head on XFeat's 64-d map)
    "fine_dim": 32,  # fine field features (stride-2 map)
    "fine_width": 24,  # channels of the fine CNN's hidden layers
    "fine_dilated": False,  # one more fine layer, dilated 2 (receptive field 14 -> 22 px)
    "normalise_input": False,  # fine CNN on the grey level normalised by its local mean and deviation (light)
    "fine_implicit": False,  # fine field read through an MLP at each continuous position from the stride-2
    #                          features and the first layer's full-resolution ones, both sampled there (a plain
    #                          bilinear read of a stride-2 map peaks on its samples: even pixels only)
}


class NeMFField(nn.Module):
    """The two learned maps of the matching field.

    coarse(xfeat_dense [B x 64 x h/8 x w/8]) -> [B x coarse_dim x h/8 x w/8], unit norm
    fine(grey [B x 1 x H x W], coarse map) -> [B x fine_dim x H/2 x W/2], unit norm (fine_implicit: the maps
    {"half": [B x fine_dim x H/2 x W/2], "full": [B x 16 x H x W]} that ``read_fine`` reads through its MLP)
    """

    def __init__(self, conf: dict | None = None):
        super().__init__()
        self.conf = {**default_conf, **(conf or {})}
        unknown = set(self.conf) - set(default_conf)
        if unknown:
            raise ValueError(f"unknown NeMF configuration keys {sorted(unknown)}")
        c, d, w = int(self.conf["coarse_dim"]), int(self.conf["fine_dim"]), int(self.conf["fine_width"])
        self.coarse_head = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(128, c, 1))
        layers = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(inplace=True),
                  nn.Conv2d(16, w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                  nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True)]
        if self.conf["fine_dilated"]:
            layers += [nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU(inplace=True)]
        self.fine_local = nn.Sequential(*layers)
        self.fine_context = nn.Conv2d(c, w, 1)
        self.fine_out = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(w, d, 1))
        if self.conf["fine_implicit"]:
            self.fine_mlp = nn.Sequential(nn.Linear(d + 16, d), nn.ReLU(inplace=True), nn.Linear(d, d))
        # log temperatures of the two terms (learned; initial 0.1 and 0.1)
        self.log_tau_c = nn.Parameter(torch.tensor(math.log(0.1)))
        self.log_tau_f = nn.Parameter(torch.tensor(math.log(0.1)))

    def coarse(self, xfeat_dense: torch.Tensor) -> torch.Tensor:
        return F.normalize(xfeat_dense + self.coarse_head(xfeat_dense), dim=1)

    def fine(self, grey: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        if self.conf["normalise_input"]:
            grey = local_contrast(grey)
        first = self.fine_local[:2](grey)  # [B x 16 x H x W]
        local = self.fine_local[2:](first)
        ctx = F.interpolate(self.fine_context(coarse), size=local.shape[-2:], mode="bilinear", align_corners=False)
        out = self.fine_out(local + ctx)
        if self.conf["fine_implicit"]:
            return {"half": out, "full": first}
        return F.normalize(out, dim=1)

    def read_fine(self, fine, xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The fine field's features at continuous pixel positions: fine = ``self.fine(...)`` of an image of size
        (W, H), xy [B x N x 2] -> [B x N x fine_dim], unit norm."""
        if not isinstance(fine, dict):
            return sample(fine, xy, size)
        x = torch.cat([sample(fine["half"], xy, size), sample(fine["full"], xy, size)], -1)
        return F.normalize(self.fine_mlp(x), dim=-1)


def local_contrast(grey: torch.Tensor, size: int = 15) -> torch.Tensor:
    """[B x 1 x H x W] -> (grey - local mean) / local standard deviation over size x size windows: a dim or
    unevenly lit view looks like a bright one (up to noise)."""
    mean = F.avg_pool2d(grey, size, 1, size // 2, count_include_pad=False)
    var = F.avg_pool2d(grey * grey, size, 1, size // 2, count_include_pad=False) - mean * mean
    return (grey - mean) / (var.clamp(min=0) + 1e-4).sqrt()


def sample(maps: torch.Tensor, xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """maps [B x C x h x w] covering images of size (W, H); xy [B x N x 2] pixels -> [B x N x C]."""
    w, h = size
    g = torch.stack([2 * (xy[..., 0] + 0.5) / w - 1, 2 * (xy[..., 1] + 0.5) / h - 1], -1)
    out = F.grid_sample(maps, g[:, :, None].to(maps.dtype), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[..., 0].transpose(1, 2)


def grid_points(size: tuple[int, int], stride: int, device=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pixel centres of a regular grid: ([gh * gw x 2] (x, y) float32, (gh, gw)); cell centres of a stride-s map."""
    w, h = size
    gw, gh = max(1, w // stride), max(1, h // stride)
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    off = (stride - 1) / 2.0
    xy = torch.stack([xs * stride + off, ys * stride + off], -1).reshape(-1, 2).float()
    return xy, (gh, gw)


def nearest_grid_point(xy: torch.Tensor, stride: int, grid: tuple[int, int]) -> torch.Tensor:
    """[N x 2] pixels -> [N] row-major index of the nearest point of the ``grid_points(size, stride)`` grid
    ``grid`` = (gh, gw) (positions beyond it: its edge)."""
    off = (stride - 1) / 2.0
    cx = ((xy[:, 0] - off) / stride).round().long().clamp(0, grid[1] - 1)
    cy = ((xy[:, 1] - off) / stride).round().long().clamp(0, grid[0] - 1)
    return cy * grid[1] + cx


def cell_centres(size: tuple[int, int], shape: tuple[int, int], device=None) -> torch.Tensor:
    """Pixel centres [h * w x 2] (row-major) of the cells of an [h x w] map covering an image of size (W, H)."""
    w_img, h_img = size
    h, w = shape
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    xy = torch.stack([(xs + 0.5) * (w_img / w) - 0.5, (ys + 0.5) * (h_img / h) - 0.5], -1)
    return xy.reshape(-1, 2).float()


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """[gh x gw x ...] -> the value of the neighbour (y + dy, x + dx), edges replicated."""
    gh, gw = t.shape[:2]
    iy = (torch.arange(gh, device=t.device) + dy).clamp(0, gh - 1)
    ix = (torch.arange(gw, device=t.device) + dx).clamp(0, gw - 1)
    return t[iy][:, ix]


def _cell_index(xy: torch.Tensor, size: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Row-major index of the cell of an [h x w] map (covering an image of size (W, H)) that holds each pixel."""
    w_img, h_img = size
    h, w = shape
    cx = ((xy[..., 0] + 0.5) * (w / w_img)).long().clamp(0, w - 1)
    cy = ((xy[..., 1] + 0.5) * (h / h_img)).long().clamp(0, h - 1)
    return cy * w + cx


@torch.no_grad()
def patchmatch(desc0: torch.Tensor, grid: tuple[int, int], p: torch.Tensor, coarse1: torch.Tensor,
               size1: tuple[int, int], iterations: int = 7, n_random: int = 4,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchMatch on the coarse field for a grid of reference points.

    desc0: [gh * gw x C] coarse features at the reference points p [gh * gw x 2] (pixels of image 0, row-major
    grid ``grid`` = (gh, gw)); coarse1: [1 x C x h x w] coarse map of image 1 (size1 = (W1, H1)). A hypothesis is
    a continuous position; the coarse field is read in the map cell holding it (the fine field refines).
    Per iteration, each point tries its four grid neighbours' displacements at 1 cell and at a jump that
    halves every iteration (jump flooding), and ``n_random`` positions in a search window that halves too.
    Returns (q [gh * gw x 2] pixels of image 1, cosine similarity [gh * gw]).
    """
    gh, gw = grid
    n = p.shape[0]
    w1, h1 = size1
    dev = p.device
    hi = torch.tensor([w1 - 1.0, h1 - 1.0], device=dev)
    table = coarse1[0].flatten(1).t().contiguous()  # [h * w x C]
    shape = tuple(coarse1.shape[-2:])

    def keep_best(q, s, cands):  # cands [n x k x 2]
        cands = torch.minimum(cands.clamp(min=0), hi)
        sc = (table[_cell_index(cands, size1, shape)] * desc0[:, None]).sum(-1)
        best, arg = sc.max(1)
        better = best > s
        q = torch.where(better[:, None], cands[torch.arange(n, device=dev), arg], q)
        return q, torch.where(better, best, s)

    rand = torch.rand(n, n_random, 2, device=dev, generator=generator) * hi
    q, s = keep_best(torch.zeros_like(p), torch.full((n,), -2.0, device=dev), torch.cat([p[:, None], rand], 1))
    jump = max(1, 2 ** int(math.floor(math.log2(max(gh, gw)))) // 2)
    radius = 0.25 * max(w1, h1)
    for _ in range(iterations):
        disp = (q - p).view(gh, gw, 2)
        steps = {1, jump}
        cands = [_shift(disp, dy * k, dx * k).reshape(n, 2) for k in steps
                 for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
        q, s = keep_best(q, s, p[:, None] + torch.stack(cands, 1))
        jitter = (torch.rand(n, n_random, 2, device=dev, generator=generator) * 2 - 1) * radius
        q, s = keep_best(q, s, q[:, None] + jitter)
        radius = max(4.0, radius / 2)
        jump = max(1, jump // 2)
    return q, s


def refine(f0: torch.Tensor, read1, q: torch.Tensor, tau: float, radius: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel position of each match on the fine field.

    f0: [n x D] fine features at the reference points; read1(xy [1 x M x 2]) -> [1 x M x D] the fine field of
    image 1 at pixel positions; q: [n x 2] initial positions in image 1. The field on a (2r+1)^2 window of 1-px
    steps around q; soft-argmax (temperature tau) over the 3 x 3 neighbourhood of its peak.
    Returns (q refined [n x 2], peak probability [n] over the window).
    """
    n = q.shape[0]
    r = int(radius)
    k = 2 * r + 1
    off = torch.arange(-r, r + 1, device=q.device, dtype=q.dtype)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    win = torch.stack([ox, oy], -1).reshape(1, k * k, 2)
    cands = q[:, None] + win  # [n x k^2 x 2]
    d1 = read1(cands.reshape(1, -1, 2))[0].view(n, k * k, -1)
    logits = (d1 * f0[:, None]).sum(-1) / tau  # [n x k^2]
    prob = logits.softmax(-1).view(n, k, k)
    peak = prob.view(n, -1).argmax(-1)
    py, px = (peak // k).clamp(1, k - 2), (peak % k).clamp(1, k - 2)
    idx = torch.arange(n, device=q.device)
    nb_y = py[:, None, None] + torch.arange(-1, 2, device=q.device)[None, :, None]
    nb_x = px[:, None, None] + torch.arange(-1, 2, device=q.device)[None, None, :]
    local = prob[idx[:, None, None], nb_y, nb_x]  # [n x 3 x 3]
    local = local / local.sum((1, 2), keepdim=True).clamp(min=1e-12)
    dy = (local.sum(2) * off[:3].new_tensor([-1.0, 0.0, 1.0])).sum(1)
    dx = (local.sum(1) * off[:3].new_tensor([-1.0, 0.0, 1.0])).sum(1)
    shift = torch.stack([px.to(q.dtype) - r + dx, py.to(q.dtype) - r + dy], -1)
    return q + shift, prob.view(n, -1).max(-1).values


@torch.no_grad()
def dense_match(net: NeMFField, coarse0: torch.Tensor, coarse1: torch.Tensor, fine0: torch.Tensor,
                fine1: torch.Tensor, size0: tuple[int, int], size1: tuple[int, int], stride: int = 8,
                iterations: int = 7, cycle_px: float = 8.0, radius: int = 3, min_similarity: float = -1.0,
                max_matches: int = 0, seed: int = 0) -> dict:
    """Match a grid of reference points of image 0 into image 1 through the field.

    coarse*: [1 x C x h/8 x w/8] ``net.coarse`` maps, fine*: ``net.fine`` maps (read by ``net.read_fine``),
    size* (W, H).
    Kept: grid points whose match passes the cycle check (PatchMatch from image 1 back to image 0 lands within
    ``cycle_px`` of p) with coarse similarity >= min_similarity, the ``max_matches`` most similar (0: all); only
    those are refined. Returns {"index": [n] kept grid points (row-major), "p": [n x 2] their pixels,
    "q": [n x 2] refined matches in image 1, "sim": [n] coarse cosine similarity, "peak": [n] fine peak
    probability}.
    """
    dev = coarse0.device
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    p, grid = grid_points(size0, stride, dev)
    q, sim = patchmatch(sample(coarse0, p[None], size0)[0], grid, p, coarse1, size1, iterations, generator=gen)
    # backward field on image 1's grid; the cycle check reads it at the grid point nearest to q
    p1, grid1 = grid_points(size1, stride, dev)
    qb, _ = patchmatch(sample(coarse1, p1[None], size1)[0], grid1, p1, coarse0, size0, iterations, generator=gen)
    keep = ((qb[nearest_grid_point(q, stride, grid1)] - p).norm(dim=1) <= cycle_px) & (sim >= min_similarity)
    index = keep.nonzero()[:, 0]
    if max_matches > 0 and len(index) > max_matches:
        index = index[sim[index].topk(max_matches).indices]
    p, q, sim = p[index], q[index], sim[index]
    f0 = net.read_fine(fine0, p[None], size0)[0]
    tau = float(net.log_tau_f.exp())

    def read1(xy):
        return net.read_fine(fine1, xy, size1)

    q, _ = refine(f0, read1, q, tau, radius)
    q, peak = refine(f0, read1, q, tau, 2)
    w1, h1 = size1
    inside = (q[:, 0] >= 0) & (q[:, 0] <= w1 - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h1 - 1)
    return {"index": index[inside], "p": p[inside], "q": q[inside], "sim": sim[inside], "peak": peak[inside]}
