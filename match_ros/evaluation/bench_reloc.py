"""match_ros_bench_reloc: the relocalization benchmark behind docs/relocalization.md's tables (a command, not a
timed test).

1. Accuracy and time per scene (rendered mapping run with depth, query run every --stride frames, offline through
   the core localizer, none dropped): changed-day queries on every scene, classic queries ("the easy scenes"),
   global (each frame alone) and continuous (odometry prior) modes.
2. Retrieval on the changed-day scenes: hit rate @1/@3/@10 (a retrieved keyframe sees the query's view) of the
   visual words (bow) and the MobileNetV2-GeM global descriptor (global), each with and without the re-ranking.
3. Query time on a map of about 100 keyframes (the five scenes in one map frame, 100 m apart).
Prints tables and writes build/bench_reloc/results_<matcher>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS

SCENES = ("office", "street", "room", "corridor", "facade")
KEYS = ("recall_5cm_2deg", "recall_25cm_5deg", "recall_1m_10deg", "wrong_poses", "no_pose", "ms_per_query_median",
        "ms_per_query_p95", "retrieval_hit_at_3", "within_3sigma", "nees_mean")


def ensure_maps(out: Path, matcher: str, scenes, queries=("changed_day",)) -> dict:
    """{(scene, query kind): (map path, query bag)}: the rendered bags and their maps, made once and reused."""
    from match_ros.evaluation.reloc_scenes import scene_bags
    from match_ros.tools.build_map import build_map_from_bag

    paths = {}
    for scene in scenes:
        for kind in queries:
            map_bag, query_bag = scene_bags(out / "bags", scene, kind, 300, 300, progress=False)
            map_path = out / "maps" / f"{map_bag.name}_{matcher}.db"
            map_path.parent.mkdir(parents=True, exist_ok=True)
            if not map_path.exists():
                build_map_from_bag(map_bag, map_path, matcher, progress=False, log=lambda *_: None)
            paths[scene, kind] = (map_path, query_bag)
    return paths


def accuracy(out: Path, matcher: str, scenes, stride: int, modes, queries=("changed_day", "classic")) -> list:
    from match_ros.evaluation.eval_reloc import run_offline
    from match_ros.evaluation.reloc_metrics import score

    rows = []
    for (scene, kind), (map_path, query_bag) in ensure_maps(out, matcher, scenes, queries).items():
        for mode in modes:
            s = score(run_offline(map_path, query_bag, matcher, mode, stride, progress=False))
            rows.append({"scene": scene, "query": kind, "mode": mode, **{k: s[k] for k in KEYS}})
            print(f"{scene:9s} {kind:12s} {mode:10s} " + " ".join(f"{k}={s[k]:.3g}" for k in KEYS), flush=True)
    return rows


def retrieval(out: Path, matcher: str, scenes, stride: int) -> list:
    """hit@1/3/10 of bow / global, with and without re-ranking, on the changed-day queries."""
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.localizer import Localizer
    from match_ros.core.relocalization.mapstore import Map
    from match_ros.evaluation.reloc_metrics import keyframe_sees_view
    from match_ros.tools.bagframes import BagFrames

    gd = GlobalDescriptor()
    rows = []
    for scene in scenes:
        m = Map.load(out / "maps" / f"{scene}_map_300_{matcher}.db")
        max_kp = int(m.matcher_conf.get("max_keypoints", DEFAULT_MAX_KEYPOINTS))
        mt = build_matcher(matcher, shared_conf(matcher, max_keypoints=max_kp))
        locs = {(method, rerank): Localizer(m, mt, gd, {"retrieval": method, "rerank": rerank})
                for method in ("bow", "global") for rerank in (False, True)}
        hits = {k: [] for k in locs}
        for i, f in enumerate(BagFrames(out / "bags" / f"{scene}_changed_day_query_300", pose_topic="auto")):
            if i % stride or f.T_map_cam is None:
                continue
            feats, size = mt.extract(f.image), (f.image.shape[1], f.image.shape[0])
            for key, loc in locs.items():
                ids, _ = loc.retrieve(f.image, f.K, feats)
                hits[key].append([keyframe_sees_view(m[int(k)], f.T_map_cam, f.K, size) for k in ids[:10]])
        for (method, rerank), h in hits.items():
            row = {"scene": scene, "method": method + (" + re-rank" if rerank else ""),
                   **{f"hit_at_{k}": float(np.mean([any(x[:k]) for x in h])) for k in (1, 3, 10)}}
            rows.append(row)
            print(f"{scene:9s} {row['method']:18s} hit@1 {row['hit_at_1']:.3f} @3 {row['hit_at_3']:.3f} "
                  f"@10 {row['hit_at_10']:.3f}", flush=True)
    return rows


def big_map_timing(out: Path, matcher: str, scenes, stride: int, matcher_conf: dict | None = None,
                   localizer_conf: dict | None = None) -> dict:
    """Changed-day queries of every scene against ONE map of all scenes (each 100 m from the others), the query
    side's backend configured with ``matcher_conf`` (e.g. cpu_bf16) on top of the map's max_keypoints, the
    localizer with ``localizer_conf`` (e.g. global_shift_px=0: what a check costs, back to back)."""
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.geometry.transforms import make_T, rotation_error_deg
    from match_ros.core.relocalization.localizer import Localizer
    from match_ros.core.relocalization.mapstore import Map, MapKeyframe
    from match_ros.tools.bagframes import BagFrames

    merged, offset = None, {}
    for j, scene in enumerate(scenes):
        m = Map.load(out / "maps" / f"{scene}_map_300_{matcher}.db")
        offset[scene] = make_T(np.eye(3), [100.0 * j, 0.0, 0.0])
        if merged is None:
            merged = Map(m.matcher_name, m.matcher_identity, m.global_desc_identity, m.matcher_conf)
        for kf in m:
            pts = kf.points3d.astype(np.float64) @ offset[scene][:3, :3].T + offset[scene][:3, 3]
            merged.add_keyframe(MapKeyframe(len(merged), kf.stamp_ns, offset[scene] @ kf.T_world_cam, kf.K,
                                            kf.image_size, kf.keypoints, kf.descriptors, kf.scores, pts,
                                            kf.global_desc, scene))
    t0 = time.perf_counter()
    merged.build_vocabulary()
    vocab_s = time.perf_counter() - t0
    max_kp = int(merged.matcher_conf.get("max_keypoints", DEFAULT_MAX_KEYPOINTS))
    mt = build_matcher(matcher, {**shared_conf(matcher, max_keypoints=max_kp), **(matcher_conf or {})})
    loc = Localizer(merged, mt, None, localizer_conf or {})
    ms, ok, wrong, stages = [], 0, 0, []
    for scene in scenes:
        for i, f in enumerate(BagFrames(out / "bags" / f"{scene}_changed_day_query_300", pose_topic="auto")):
            if i % stride or f.T_map_cam is None:
                continue
            t0 = time.perf_counter()
            r = loc.localize(f.image, f.K)
            ms.append(1e3 * (time.perf_counter() - t0))
            stages.append(r.timings_ms)
            if r.success:
                T_gt = offset[scene] @ f.T_map_cam
                e_t = np.linalg.norm(r.T_map_cam[:3, 3] - T_gt[:3, 3])
                e_r = rotation_error_deg(r.T_map_cam[:3, :3], T_gt[:3, :3])
                ok += e_t < 0.05 and e_r < 2.0
                wrong += e_t > 1.0 or e_r > 10.0
    out_ = {"keyframes": len(merged), "queries": len(ms), "recall_5cm_2deg": ok / max(len(ms), 1),
            "wrong_poses": int(wrong), "ms_median": float(np.median(ms)), "ms_p95": float(np.percentile(ms, 95)),
            "vocabulary_s": vocab_s,
            # a stage a query did not run (the twin check of a failed query) counts as 0 ms
            "stages_ms_median": {k: float(np.median([s.get(k, 0.0) for s in stages]))
                                 for k in sorted({k for s in stages for k in s})}}
    print(f"{len(merged)}-keyframe map of {len(scenes)} scenes: {len(ms)} changed-day queries, recall (5 cm, 2 deg) "
          f"{out_['recall_5cm_2deg']:.3f}, wrong {wrong}, median {out_['ms_median']:.1f} ms "
          f"(p95 {out_['ms_p95']:.1f})",
          flush=True)
    return out_


def main(argv=None) -> int:
    from match_ros.core.config import parse_overrides
    from match_ros.core.features.matcher import available_matchers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", default=DEFAULT_MATCHER, choices=available_matchers(), help="backend")
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), help="rendered scenes")
    ap.add_argument("--stride", type=int, default=3, help="every n-th of the 300 query frames")
    ap.add_argument("--modes", nargs="+", default=["global", "continuous"], help="localization modes")
    ap.add_argument("--parts", nargs="+", default=["accuracy", "retrieval", "timing"],
                    help="accuracy, retrieval, timing")
    ap.add_argument("--queries", nargs="+", default=["changed_day", "classic"], help="query runs of the accuracy part")
    ap.add_argument("--out", default="build/bench_reloc", help="cache and results folder")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="query-side backend options of the timing part, e.g. cpu_bf16=True")
    ap.add_argument("--localizer", nargs="*", default=[], metavar="KEY=VALUE",
                    help="localizer parameters of the timing part, e.g. global_shift_px=0")
    ap.add_argument("--json", default=None, help="results file (default: OUT/results_<matcher>.json)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from match_ros.core.device import cpu_model, git_commit

    results = {"matcher": args.matcher, "stride": args.stride, "cpu": cpu_model(), "commit": git_commit(),
               "localizer": parse_overrides(args.localizer)}
    print(f"match_ros_bench_reloc: {args.matcher}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{results['cpu']}, commit {results['commit']}", flush=True)
    ensure_maps(out, args.matcher, args.scenes)
    if "accuracy" in args.parts:
        results["accuracy"] = accuracy(out, args.matcher, args.scenes, args.stride, args.modes, tuple(args.queries))
    if "retrieval" in args.parts:
        results["retrieval"] = retrieval(out, args.matcher, args.scenes, args.stride)
    if "timing" in args.parts:
        results["timing"] = big_map_timing(out, args.matcher, args.scenes, args.stride, parse_overrides(args.conf),
                                           results["localizer"])
    Path(args.json or out / f"results_{args.matcher}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
