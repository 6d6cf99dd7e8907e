"""Training of the A2Net-style global homography model (``core/models/a2net.py``) for ``a2net_align``.

Same command line as match_ros_train (which dispatches ``kind: a2net`` configurations here):

    match_ros_train --config config/train/a2net_align.yaml
    python -m match_ros.training.align --config config/train/a2net_align.yaml --steps 100 --out /tmp/a2net.pt

Data (seeded, so a configuration reproduces it): the photos of ``data/train_photos`` seen through random
homographies with large viewpoint changes (``training.pairs.homography_pair``: rotation, zoom, strong
perspective, independent photometric changes per view). Ground truth: the exact homography of the pair. The
test images (graf, aloe, motorcycle) are never used. XFeat is frozen: its dense maps at the alignment size are
computed once and cached in ``build/train_cache`` (float16). Loss: mean corner error [px at the alignment size]
of every pass's homography against the ground truth. Writes the checkpoint (``save_checkpoint``, kind "a2net"),
a ``.json`` beside it (configuration, command line, git commit, photo SHA-256, losses, validation corner error
before/after on held-out seeds) and a loss plot in ``build/train``.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from match_ros.training.train import (REPO, configure, photo_files, record_header, save_record, sha256,
                                      training_arguments)

default_config = {
    "kind": "a2net",
    "model": {},  # model configuration over core.models.a2net.default_conf
    "data": {
        "photos_dir": "data/train_photos",  # relative to the repository root, or absolute
        "train_pairs": 1200,  # training pairs (homographies of the photos)
        "val_pairs": 100,  # validation pairs (other seeds)
        "max_rotation_deg": 45.0,  # in-plane rotation of view 1, uniform in +- this
        "scale_range": [0.5, 2.0],  # zoom of view 1 (log-uniform)
        "perspective": 0.25,  # corner displacement of view 1, fraction of the view size
        "photometric": True,  # independent photometric changes per view
        "min_overlap": 0.4,  # keep a pair when this share of view 0 shows the photo inside view 1 (else next seed)
        "seed": 0,
    },
    "train": {
        "steps": 1500,
        "batch_pairs": 8,  # pairs per optimiser step
        "lr": 1.0e-3,
        "weight_decay": 1.0e-4,
        "grad_clip": 1.0,
        "pass_weights": [0.5, 1.0],  # loss weight of each pass (its length = passes trained)
        "soft_px": 50.0,  # corner errors above ~this [px] count logarithmically in the loss
        "seed": 0,
        "num_threads": 1,  # torch threads on CPU (0: torch's default)
    },
}


# ----------------------------------------------------------------------------- data
def pair_homography(pair, size: tuple) -> np.ndarray:
    """The exact pixel homography view 0 -> view 1 of a ``homography_pair`` (from its transfer of 4 points)."""
    w, h = size
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    dst, _ = pair.transfer01(src)
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def build_set(data: dict, size: tuple, split: str, progress: bool = True) -> dict:
    """{"dense": [N x 2 x 64 x h/8 x w/8] float16 XFeat maps, "H": [N x 3 x 3] float64 normalised GT homographies,
    "source": [N] photo names}; cached in build/train_cache by configuration and photo hashes."""
    from tqdm import tqdm

    from match_ros.core.features.xfeat import XFeatMNN
    from match_ros.core.models.a2net import normalised_homography, xfeat_dense
    from match_ros.training.pairs import homography_pair
    files = photo_files(data)
    key = json.dumps({"data": data, "size": list(size), "split": split, "photos": [sha256(f) for f in files]},
                     sort_keys=True)
    cache = REPO / "build" / "train_cache" / f"a2net-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    xfeat = XFeatMNN({"max_keypoints": 1}, "cpu")  # only its frozen backbone
    photos = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
    n = int(data["val_pairs"] if split == "val" else data["train_pairs"])
    base = int(data["seed"]) + (10_000 if split == "val" else 0)
    conf = {"size": tuple(size), "max_rotation_deg": float(data["max_rotation_deg"]),
            "scale_range": tuple(data["scale_range"]), "perspective": float(data["perspective"]),
            "photometric": bool(data["photometric"])}
    w, h = size
    probe = np.stack(np.meshgrid(np.linspace(0, w - 1, 16), np.linspace(0, h - 1, 12)), -1).reshape(-1, 2)
    dense, Hs, sources = [], [], []
    bar = tqdm(total=n, desc=f"{split} pairs", unit="pair", disable=not progress)
    k = 0
    while len(Hs) < n:
        rng = np.random.default_rng([base, 7, k])
        k += 1
        i = int(rng.integers(len(photos)))
        pair = homography_pair(photos[i], rng, conf, source=f"photo:{files[i].name}")
        if pair.transfer01(probe)[1].mean() < float(data["min_overlap"]):
            continue
        bar.update(1)
        grey = [torch.from_numpy(cv2.cvtColor(v, cv2.COLOR_RGB2GRAY)).float().div(255)[None, None]
                for v in (pair.image0, pair.image1)]
        with torch.inference_mode():
            maps = [xfeat_dense(xfeat.net, g, size)[0] for g in grey]
        dense.append(torch.stack(maps).half())
        Hs.append(normalised_homography(pair_homography(pair, size), size, size))
        sources.append(pair.source)
    bar.close()
    out = {"dense": torch.stack(dense), "H": torch.from_numpy(np.stack(Hs)), "source": sources, "seeds_tried": k}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)
    return out


# ----------------------------------------------------------------------------- training
def batch_loss(net, dense: torch.Tensor, H_gt: torch.Tensor, weights: list, size: tuple,
               soft_px: float) -> torch.Tensor:
    """dense [B x 2 x 64 x h x w], H_gt [B x 3 x 3] -> weighted mean over passes of the mean corner error e
    [px at ``size``], softened above ``soft_px`` (``c log(1 + e / c)``, ~e for small errors) so that a few
    hopeless pairs do not dominate the batch."""
    from match_ros.core.models.a2net import corner_error

    d = dense.float()
    outs = net(d[:, 0], d[:, 1], passes=len(weights))
    c = float(soft_px)
    return sum(w * (c * torch.log1p(corner_error(H, H_gt, size) / c)).mean()
               for w, H in zip(weights, outs)) / sum(weights)


@torch.no_grad()
def evaluate(net, data: dict, size: tuple, device, passes: int, batch: int = 16) -> dict:
    """Mean / median corner error [px at ``size``] after each pass, and of the identity (no alignment)."""
    from match_ros.core.models.a2net import corner_error

    net.eval()
    errs = [[] for _ in range(passes)]
    ident = []
    for s in range(0, len(data["H"]), batch):
        d = data["dense"][s:s + batch].to(device).float()
        H_gt = data["H"][s:s + batch].to(device)
        for k, H in enumerate(net(d[:, 0], d[:, 1], passes=passes)):
            errs[k] += corner_error(H, H_gt, size).tolist()
        eye = torch.eye(3, dtype=torch.float64, device=device).expand(len(H_gt), 3, 3)
        ident += corner_error(eye, H_gt, size).tolist()
    net.train()
    out = {"pairs": len(ident), "identity_mean_px": float(np.mean(ident))}
    for k, e in enumerate(errs):
        e = np.asarray(e)
        out[f"pass{k + 1}_mean_px"] = float(np.mean(e))
        out[f"pass{k + 1}_median_px"] = float(np.median(e))
        out[f"pass{k + 1}_under_4px"] = float(np.mean(e < 4.0))
    return out


def train(config: dict, out: Path, device: torch.device, progress: bool = True, argv=None) -> dict:
    from tqdm import tqdm

    from match_ros.core.models.a2net import A2NetAlign
    from match_ros.core.models.checkpoint import save_checkpoint

    data, tc = config["data"], config["train"]
    if int(tc["num_threads"]) > 0:
        torch.set_num_threads(int(tc["num_threads"]))
    torch.manual_seed(int(tc["seed"]))
    net = A2NetAlign(config["model"])
    size = net.conf["size"]
    t0 = time.time()
    train_set = build_set(data, size, "train", progress)
    val_set = build_set(data, size, "val", progress)
    t_data = time.time() - t0
    net.to(device).train()
    weights = [float(w) for w in tc["pass_weights"]]
    passes = len(weights)
    opt = torch.optim.AdamW(net.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    steps = int(tc["steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    val_before = evaluate(net, val_set, size, device, passes)
    rng = np.random.default_rng(int(tc["seed"]))
    history = []
    skipped = 0
    t1 = time.time()
    bar = tqdm(range(steps), desc="train a2net", unit="step", disable=not progress)
    for step in bar:
        idx = torch.from_numpy(rng.choice(len(train_set["H"]), size=int(tc["batch_pairs"]), replace=False))
        dense, H_gt = train_set["dense"][idx].to(device), train_set["H"][idx].to(device)
        if rng.random() < 0.5:  # the pair the other way round: query -> reference, inverse homography
            dense, H_gt = dense.flip(1), torch.linalg.inv(H_gt)
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(net, dense, H_gt, weights, size, float(tc["soft_px"]))
        ok = bool(torch.isfinite(loss))  # not finite: a degenerate solve, the batch is skipped (and counted)
        if ok:
            loss.backward()
            ok = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(net.parameters(), float(tc["grad_clip"]))))
        if ok:
            opt.step()
            history.append(float(loss.detach()))
        skipped += not ok
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-20:]):.2f}px")
    t_train = time.time() - t1
    val_after = evaluate(net, val_set, size, device, passes)
    save_checkpoint(out, "a2net", net.conf, net.state_dict())
    files = photo_files(data)
    record = {
        **record_header(out, "a2net", config, device, argv), "model_conf": net.conf,
        "torch_threads": torch.get_num_threads(),
        "initialised_from": "random (seed train.seed); the 1x1 projection at the identity; XFeat frozen",
        "data": {"photos": {f.name: sha256(f) for f in files}, "train_pairs": len(train_set["H"]),
                 "val_pairs": len(val_set["H"]), "val_seeds": "data.seed + 10000 (train: data.seed)",
                 "held_out": "graf, aloe, motorcycle and every test image: never in training data"},
        "loss": "mean corner error [px at the alignment size] of each pass (softened above train.soft_px), weighted "
                "by train.pass_weights",
        "val_before": val_before, "val_after": val_after,
        "skipped_steps": skipped, "loss_first_100": float(np.mean(history[:100])),
        "loss_last_100": float(np.mean(history[-100:])),
        "data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
        "sha256": sha256(out),
    }
    save_record(out, record, history, "a2net", "corner error [px]", "log")
    return record


def main(argv=None) -> int:
    from match_ros.core.device import resolve_device

    args = training_arguments(argv, __doc__, "config/train/a2net_align.yaml", "match_ros/weights/a2net_align.pt")
    config, out = configure(args, default_config, ("a2net",))
    record = train(config, out, resolve_device(args.device), not args.no_progress,
                   argv if argv is not None else sys.argv[1:])
    vb, va = record["val_before"], record["val_after"]
    last = sum(1 for k in va if k.startswith("pass") and k.endswith("_mean_px"))
    print(f"{out}: {record['data']['train_pairs']} training pairs, {record['train_seconds']:.0f} s training\n"
          f"validation ({va['pairs']} pairs) corner error (px at the alignment size, pass {last}): mean "
          f"{vb[f'pass{last}_mean_px']:.2f} -> {va[f'pass{last}_mean_px']:.2f}, median "
          f"{vb[f'pass{last}_median_px']:.2f} -> {va[f'pass{last}_median_px']:.2f} "
          f"(identity {va['identity_mean_px']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
