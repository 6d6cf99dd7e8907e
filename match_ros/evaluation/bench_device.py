"""match_ros_bench_device: pairs per second of the learned backends on one device, by precision and keypoints.

    match_ros_bench_device [--device auto] [--matchers xfeat_lighterglue xfeat_mnn] [--keypoints 1024 2048]
                           [--pairs 12] [--repeats 5] [--json FILE]

Two figures per row, on rendered 640x480 pairs: ``pair`` (extract both images + match, what a pair costs without
caching) and ``frame`` (extract one image + match against a cached keyframe, what the keyframe_matcher node pays
per camera frame). Precisions: float32, and float16 autocast on CUDA or bfloat16 on a CPU with native bf16 (the
backbone; see docs/speed.md). Every timing waits for the device (the results are copied to the host). The
share of the float32 matches a precision keeps is printed beside it. Used by ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from match_ros.evaluation.bench_reference import match_set, rendered_pairs

DEFAULT_MATCHERS = ("xfeat_lighterglue", "xfeat_mnn")


def _match_set(matcher, a, b) -> set:
    fa, fb = matcher.extract(a), matcher.extract(b)
    return match_set(fa.keypoints.cpu().numpy(), fb.keypoints.cpu().numpy(), matcher.match(fa, fb).indices)


def measure(matcher, pairs, repeats: int) -> dict:
    """Median seconds of a pair (extract both + match) and of a frame (extract one + match a cached keyframe)."""
    cached = [matcher.extract(a) for a, _ in pairs]
    for a, b in pairs[:2]:  # warm-up: kernels, caches, autotuning
        matcher.match(matcher.extract(a), matcher.extract(b)).indices  # noqa: B018  (copied to the host: waits)
    pair_s, frame_s = [], []
    for _ in range(repeats):
        for k, (a, b) in enumerate(pairs):
            t0 = time.perf_counter()
            matcher.match(matcher.extract(a), matcher.extract(b)).indices  # noqa: B018
            t1 = time.perf_counter()
            matcher.match(cached[k], matcher.extract(b)).indices  # noqa: B018
            t2 = time.perf_counter()
            pair_s.append(t1 - t0)
            frame_s.append(t2 - t1)
    return {"pair_ms": 1e3 * statistics.median(pair_s), "frame_ms": 1e3 * statistics.median(frame_s)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--matchers", nargs="+", default=list(DEFAULT_MATCHERS))
    ap.add_argument("--keypoints", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from match_ros.core.device import cpu_has_bf16, resolve_device
    from match_ros.core.features.matcher import build_matcher, shared_conf

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    low = "fp16" if device.type == "cuda" else ("bf16" if cpu_has_bf16() else None)
    pairs = rendered_pairs(args.pairs)
    print(f"{len(pairs)} rendered pairs 640x480, {args.repeats} repeats, torch {torch.__version__}, {device} ({name})")
    print(f"{'matcher':18s} {'kpts':>5s} {'prec':>5s} {'pair ms':>8s} {'pairs/s':>8s} {'frame ms':>9s} "
          f"{'frames/s':>9s} {'same as fp32':>12s}")
    rows = []
    for matcher_name in args.matchers:
        for kp in args.keypoints:
            ref = None
            for prec in ("fp32",) + ((low,) if low else ()):
                # bf16: what the nodes' cpu_bf16 turns on (the backbone, and LighterGlue where the backend has it)
                conf = shared_conf(matcher_name, max_keypoints=kp, fp16=prec == "fp16", cpu_bf16=prec == "bf16",
                                   cpu_bf16_glue=prec == "bf16")
                m = build_matcher(matcher_name, conf, device)
                t = measure(m, pairs, args.repeats)
                sets = [_match_set(m, a, b) for a, b in pairs[:4]]
                ref = ref or sets
                same = float(np.mean([len(s & r) / max(len(r), 1) for s, r in zip(sets, ref)]))
                row = {"matcher": matcher_name, "max_keypoints": kp, "precision": prec, "device": str(device),
                       "device_name": name, **t, "pairs_per_s": 1e3 / t["pair_ms"],
                       "frames_per_s": 1e3 / t["frame_ms"], "identical_to_fp32": same}
                rows.append(row)
                print(f"{matcher_name:18s} {kp:5d} {prec:>5s} {t['pair_ms']:8.2f} {row['pairs_per_s']:8.1f} "
                      f"{t['frame_ms']:9.2f} {row['frames_per_s']:9.1f} {100 * same:11.1f}%", flush=True)
                del m
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
