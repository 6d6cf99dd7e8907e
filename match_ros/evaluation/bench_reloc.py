"""match_ros_bench_reloc: relocalization query time and accuracy vs map size.

1. A ~100-keyframe map of 640x480 keyframes over the three rendered scenes
   (room, corridor, facade; cached in build/bench_reloc/).
2. Query frames from other trajectories with changed lighting, each through
   the core Localizer: retrieval (global descriptor + FAISS search) / local
   feature extraction / matching / PnP times, and recall at (5 cm, 2 deg).
3. Growth to 1,000 and 10,000 keyframes: the index is filled with distractor
   descriptors (keyframes of differently textured scenes, with small noise);
   only retrieval depends on map size (matching and PnP touch the top-k
   keyframes only), so the FAISS search time and the retrieval recall (the
   top-k holds a keyframe within 1.5 m and 30 deg of the query) are reported per size.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SCENES = ("room", "corridor", "facade")
MAP_FRAMES = {"room": 180, "corridor": 400, "facade": 400}


def build_multi_scene_map(matcher, global_desc, path: Path, min_translation=0.25, min_rotation=9.0):
    """One map over all scenes (their frames in one map frame, scenes far apart by construction)."""
    from tqdm import tqdm

    from match_ros.core.relocalization.mapping import MapBuilder
    from match_ros.core.relocalization.mapstore import Map
    from match_ros.sim import make_sequence

    if path.exists():
        return Map.load(path)
    builder = MapBuilder(matcher, global_desc, {"min_translation_m": min_translation,
                                                "min_rotation_deg": min_rotation})
    for scene in SCENES:
        seq = make_sequence(scene, n_frames=MAP_FRAMES[scene], seed=0)
        for f in tqdm(seq, desc=f"map {scene}", unit="frame"):
            builder.add_frame(f.rgb, _place(scene) @ f.T_world_cam, seq.camera.K, f.stamp_ns, f.depth, scene)
    m = builder.build()
    m.save(path)
    return m


def _place(scene: str) -> np.ndarray:
    """Each scene in its own region of the shared map frame (100 m apart)."""
    T = np.eye(4)
    T[0, 3] = 100.0 * SCENES.index(scene)
    return T


def main(argv=None) -> int:
    import torch

    from match_ros.core.device import resolve_device
    from match_ros.core.geometry.transforms import rotation_error_deg
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.localizer import Localizer
    from match_ros.core.features.matcher import available_matchers, build_matcher
    from match_ros.core.relocalization.retrieval import RetrievalIndex
    from match_ros.sim import make_sequence
    from match_ros.evaluation.eval_reloc import make_query_sequence

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", default="orb_teblid", choices=available_matchers(), help="backend")
    ap.add_argument("--queries-per-scene", type=int, default=20, help="query frames per scene")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="map sizes for the growth test")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--out", default="build/bench_reloc", help="cache and results folder")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    matcher = build_matcher(args.matcher, {"max_keypoints": 1024}, dev)
    gd = GlobalDescriptor(device=dev)
    m = build_multi_scene_map(matcher, gd, out / f"map_{args.matcher}.db")
    loc = Localizer(m, matcher, gd)
    print(f"map: {len(m)} keyframes ({args.matcher}), torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows, queries = [], []
    for scene in SCENES:
        q = make_query_sequence(scene, 3 * args.queries_per_scene)
        for i in range(0, len(q), 3):
            f = q[i]
            queries.append((scene, f.rgb, _place(scene) @ f.T_world_cam, q.camera.K))
    loc.localize(queries[0][1], queries[0][3])  # warm-up
    for scene, rgb, T_gt, K in queries:
        t0 = time.perf_counter()
        r = loc.localize(rgb, K)
        total = 1e3 * (time.perf_counter() - t0)
        e_t = np.linalg.norm(r.T_map_cam[:3, 3] - T_gt[:3, 3]) if r.success else np.inf
        e_r = rotation_error_deg(r.T_map_cam[:3, :3], T_gt[:3, :3]) if r.success else np.inf
        rows.append({"scene": scene, "total_ms": total, **{f"{k}_ms": v for k, v in r.timings_ms.items()},
                     "ok_5cm_2deg": bool(e_t < 0.05 and e_r < 2.0), "wrong_1m": bool(r.success and e_t > 1.0),
                     "matched": len(r.matched)})
    med = lambda k: float(np.median([x[k] for x in rows]))  # noqa: E731
    p95 = lambda k: float(np.percentile([x[k] for x in rows], 95))  # noqa: E731
    summary = {"keyframes": len(m), "queries": len(rows),
               "recall_5cm_2deg": float(np.mean([x["ok_5cm_2deg"] for x in rows])),
               "wrong_poses_over_1m": int(sum(x["wrong_1m"] for x in rows)),
               "keyframes_matched_mean": float(np.mean([x["matched"] for x in rows])),
               **{f"{k}_median": med(k) for k in ("total_ms", "retrieval_ms", "extract_ms", "match_ms", "pnp_ms")},
               "total_ms_p95": p95("total_ms")}
    print(f"\n{len(m)}-keyframe map, {len(rows)} queries: recall(5 cm, 2 deg) {summary['recall_5cm_2deg']:.3f}, "
          f"wrong poses {summary['wrong_poses_over_1m']}")
    print(f"query median {summary['total_ms_median']:.1f} ms (p95 {summary['total_ms_p95']:.1f}): retrieval "
          f"{summary['retrieval_ms_median']:.1f} / extract {summary['extract_ms_median']:.1f} / match "
          f"{summary['match_ms_median']:.1f} / PnP {summary['pnp_ms_median']:.1f} ms, "
          f"{summary['keyframes_matched_mean']:.2f} keyframes matched per query")

    # growth: distractor descriptors from differently textured scenes, jittered to the wanted count
    distract = []
    for scene in SCENES:
        seq = make_sequence(scene, n_frames=MAP_FRAMES[scene], seed=7, scene_seed=99)
        distract += [gd(seq[i].rgb) for i in range(0, len(seq), 10)]
    distract = np.array(distract)
    rng = np.random.default_rng(0)
    qdesc = np.array([gd(rgb) for _, rgb, _, _ in queries])
    kf_ids = np.array(list(m.keyframes))
    kf_desc = np.array([m[i].global_desc for i in kf_ids])
    kf_T = {i: m[i].T_world_cam for i in kf_ids}
    growth = []
    for size in [len(m)] + [s for s in args.sizes if s > len(m)]:
        n_extra = size - len(m)
        extra = distract[rng.integers(0, len(distract), n_extra)] + rng.normal(scale=0.01, size=(n_extra, gd.dim))
        extra /= np.linalg.norm(extra, axis=1, keepdims=True)
        index = RetrievalIndex(gd.dim)
        index.add(np.r_[kf_ids, np.arange(n_extra) + 10**6], np.r_[kf_desc, extra].astype(np.float32))
        t0 = time.perf_counter()
        for d in qdesc:
            ids, _ = index.search(d, loc.conf["top_k"])
        search_ms = 1e3 * (time.perf_counter() - t0) / len(qdesc)
        hits = 0
        for d, (_, _, T_gt, _) in zip(qdesc, queries):
            ids, _ = index.search(d, loc.conf["top_k"])
            hits += any(i in kf_T and np.linalg.norm(kf_T[i][:3, 3] - T_gt[:3, 3]) < 1.5
                        and rotation_error_deg(kf_T[i][:3, :3], T_gt[:3, :3]) < 30.0 for i in ids)
        growth.append({"keyframes": size, "search_ms": search_ms, "retrieval_recall_top_k": hits / len(qdesc),
                       "index": index.kind})
        print(f"{size:6d} keyframes: FAISS {index.kind} search {search_ms:.3f} ms/query, "
              f"top-{loc.conf['top_k']} holds a keyframe within 1.5 m / 30 deg: {hits / len(qdesc):.3f}")
    results = {"summary": summary, "growth": growth, "queries": rows}
    (out / f"results_{args.matcher}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
