"""match_ros_bench_integrity: relocalization accuracy and integrity on procedural changed-day places.

    match_ros_bench_integrity --split tune                       # the seeds thresholds may be chosen on
    match_ros_bench_integrity --split report --json report.json  # the seeds figures are reported on
    match_ros_bench_integrity --split fresh                      # one new place nobody has seen (seed printed)
    match_ros_bench_integrity --seeds 100 101 --matchers orb_teblid --conf covariance_scale=2.0

For every seed: the place of ``match_ros.sim.procedural`` (mapping bag with depth, changed-day query bag at
1-3 Hz with drops, drifting odometry on /tf), a map built per matcher, then every query frame relocalized offline
(``eval_reloc.run_offline``): ``global`` (each frame alone) and ``continuous`` with odometry ``drift`` (as
recorded), ``none`` (ignored: the last fix is the only prior) and ``delayed`` (each message late by the case's
odom_delay_s on average, used when it arrives within --odom-wait-s, the node's odom_wait_s); ``plain`` is the
reference column (``baselines.PlainPipeline``: retrieval, the matcher, one pooled PnP, no checks).

Printed and in the JSON, per matcher and mode, pooled over the seeds: recall within (5 cm, 2 deg) and
(25 cm, 5 deg), wrong poses (> 1 m or > 10 deg), integrity failures (beyond 25 cm / 5 deg at a position sigma
under 5 cm), mean and median NEES, share of errors within 3 sigma, ms per query. The seeds are printed; choose
parameters on ``tune`` only, and report ``report`` (see the seed split in match_ros.sim.seeds). The maps are
built from exact poses, so the localizer adds no map error (``EXACT_MAP``; --conf overrides it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from match_ros.core.device import cpu_model, git_commit

EXACT_MAP = {"map_position_sigma_m": 0.0, "map_rotation_sigma_deg": 0.0}
RUNS = (("global", "drift"), ("continuous", "drift"), ("continuous", "none"), ("continuous", "delayed"))
COLUMNS = (("recall_5cm_2deg", "5cm/2deg", "{:.1%}"), ("recall_25cm_5deg", "25cm/5deg", "{:.1%}"),
           ("wrong_poses", "wrong", "{:d}"), ("integrity_failures", "integrity", "{:d}"),
           ("nees_mean", "NEES mean", "{:.1f}"), ("nees_median", "NEES med", "{:.1f}"),
           ("within_3sigma", "in 3 sigma", "{:.1%}"), ("no_pose", "no pose", "{:d}"),
           ("ms_per_query_median", "ms/query", "{:.0f}"))


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_conf(items) -> dict:
    """["key=value", ...] -> {key: int | float | bool | str}."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--conf takes key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def run_seed(seed: int, matchers, runs, out: Path, localizer_conf: dict, odom_wait_s: float, progress: bool,
             stride: int = 1, drop_bags: bool = False, matcher_conf: dict | None = None) -> list:
    """[(matcher, mode, odometry, [QueryRecord])] of one seed's place; with ``drop_bags`` the place's bags (about
    0.7 GB a seed) are deleted once its runs are done (the maps and records stay). matcher_conf: backend settings
    for the map and the queries, each backend taking the keys it has (the map's file name carries them)."""
    from match_ros.core.relocalization.continuous import continuous_spec
    from match_ros.core.features.matcher import matcher_class
    from match_ros.evaluation.eval_reloc import run_offline
    from match_ros.sim.procedural import make_procedural_case, write_case_bags
    from match_ros.tools.build_map import build_map_from_bag

    case = make_procedural_case(seed)
    map_bag, query_bag = write_case_bags(case, out / "cases", progress=progress)
    results = []
    continuous_conf = {k: v for k, v in localizer_conf.items() if k in continuous_spec}
    localizer_conf = {k: v for k, v in localizer_conf.items() if k not in continuous_spec}
    for matcher in matchers:
        defaults = matcher_class(matcher).default_conf
        mconf = {k: v for k, v in (matcher_conf or {}).items() if k in defaults}
        # the case name carries the place's content key, the digest the backend's settings (defaults included)
        digest = hashlib.sha1(json.dumps({**defaults, **mconf}, sort_keys=True, default=str).encode()).hexdigest()
        map_path = out / "maps" / f"{case.name}_{matcher}_{digest[:8]}.db"
        if not map_path.exists():
            map_path.parent.mkdir(parents=True, exist_ok=True)
            build_map_from_bag(map_bag, map_path, matcher, progress=progress, matcher_conf=mconf)
        for mode, odometry in runs:
            records = run_offline(map_path, query_bag, matcher, mode, localizer_conf=localizer_conf,
                                  odometry=odometry, odom_delay_s=case.odom_delay_s, odom_wait_s=odom_wait_s,
                                  progress=False, continuous_conf=continuous_conf, stride=stride,
                                  matcher_conf=mconf)
            results.append((matcher, mode, odometry, records))
    if drop_bags:
        shutil.rmtree(map_bag.parent)
    return results


def table(rows: list) -> str:
    """Plain-text table of [(label, score dict)]."""
    head = ["run"] + [c[1] for c in COLUMNS]
    lines = [head]
    for label, s in rows:
        cells = [label]
        for key, _, fmt in COLUMNS:
            v = s.get(key, float("nan"))
            cells.append("-" if isinstance(v, float) and not np.isfinite(v) else fmt.format(v))
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in lines)


def main(argv=None) -> int:
    from match_ros.core.features.matcher import available_matchers, matcher_class
    from match_ros.evaluation.reloc_metrics import score
    from match_ros.sim.seeds import REPORT_SEEDS, TUNE_SEEDS, WIDE_TUNE_SEEDS, fresh_seed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--split", choices=("tune", "tune-wide", "report", "fresh"),
                       help="the tuning seeds (tune-wide: 30 more, for rare failures), the report seeds, or one fresh "
                       "random seed")
    which.add_argument("--seeds", type=int, nargs="+", help="these seeds")
    ap.add_argument("--max-seeds", type=int, default=None, help="the first N seeds of the split only")
    ap.add_argument("--matchers", nargs="+", default=["xfeat_lighterglue"], choices=available_matchers())
    ap.add_argument("--runs", nargs="+", default=[f"{m}:{o}" for m, o in RUNS],
                    help="mode:odometry pairs (default: %(default)s); plain:none is the reference pipeline "
                    "(eval_reloc --mode plain)")
    ap.add_argument("--conf", nargs="*", default=[], help="localizer and continuous-mode parameters key=value "
                    "(tuning; e.g. ambiguity_z=3 odometry_drift=0.02)")
    ap.add_argument("--matcher-conf", nargs="*", default=[], help="backend settings key=value for the maps and the "
                    "queries, each backend taking the keys it has (e.g. clahe_clip=2)")
    ap.add_argument("--stride", type=int, default=1, help="every N-th query frame only (for slow matchers; in "
                    "continuous mode the skipped frames are not seen, so priors are older)")
    ap.add_argument("--odom-wait-s", type=float, default=0.5, help="how long a frame waits for its odometry")
    ap.add_argument("--out", default="build/bench_integrity", help="cases, maps and per-query records")
    ap.add_argument("--json", default=None, help="write the report here too")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--drop-bags", action="store_true", help="delete each place's bags after its runs (they are "
                    "regenerated from the seed when needed; about 0.7 GB a seed)")
    args = ap.parse_args(argv)
    try:
        # the places' maps are built from their exact poses and rendered depth: no map error to add (a user's map
        # from SLAM declares its own, map_position_sigma_m / map_rotation_sigma_deg)
        conf = {**EXACT_MAP, **parse_conf(args.conf)}
        matcher_conf = parse_conf(args.matcher_conf)
        known = set().union(*(matcher_class(m).default_conf for m in args.matchers))
        if set(matcher_conf) - known:
            raise ValueError(f"--matcher-conf: {sorted(set(matcher_conf) - known)} is a setting of none of "
                             f"{args.matchers}")
        runs = [tuple(r.split(":")) for r in args.runs]
        if any(len(r) != 2 or r[0] not in ("global", "continuous", "plain") for r in runs):
            raise ValueError(f"--runs takes mode:odometry pairs, got {args.runs}")
    except ValueError as e:
        ap.error(str(e))
    seeds = args.seeds or {"tune": list(TUNE_SEEDS), "tune-wide": list(WIDE_TUNE_SEEDS), "report": list(REPORT_SEEDS),
                           "fresh": [fresh_seed()]}[args.split]
    seeds = seeds[: args.max_seeds] if args.max_seeds else seeds
    commit = git_commit()  # at the start: the checkout may move on while a long run goes
    print(f"seeds ({args.split or 'given'}): {' '.join(map(str, seeds))}; commit {commit}; localizer: {conf}",
          flush=True)
    out = Path(args.out)
    pooled: dict = {}
    per_seed = []
    t0 = time.time()
    for k, seed in enumerate(seeds):
        for matcher, mode, odometry, records in run_seed(seed, args.matchers, runs, out, conf, args.odom_wait_s,
                                                         not args.quiet, args.stride, args.drop_bags, matcher_conf):
            pooled.setdefault((matcher, mode, odometry), []).extend(records)
            s = score(records)
            per_seed.append({"seed": seed, "matcher": matcher, "mode": mode, "odometry": odometry, **s})
            rec_dir = out / "records" / f"{seed}_{matcher}_{mode}_{odometry}.json"
            rec_dir.parent.mkdir(parents=True, exist_ok=True)
            rec_dir.write_text(json.dumps([{key: (v.tolist() if isinstance(v, np.ndarray) else v)
                                            for key, v in asdict(r).items()} for r in records]))
            print(f"[{k + 1}/{len(seeds)}] seed {seed} {matcher} {mode}/{odometry}: "
                  f"{s['recall_5cm_2deg']:.0%} within 5 cm, {s['wrong_poses']} wrong, "
                  f"{s['integrity_failures']} integrity failures, NEES {s['nees_mean']:.1f}", flush=True)
    rows = [(f"{m} {mode}" + (f"/{o}" if mode == "continuous" else ""), score(r)) for (m, mode, o), r in
            pooled.items()]
    report = {"split": args.split or "given", "seeds": seeds, "matchers": args.matchers, "localizer": conf,
              "matcher_conf": matcher_conf,
              "odom_wait_s": args.odom_wait_s, "stride": args.stride, "cpu": cpu_model(), "commit": commit,
              "minutes": (time.time() - t0) / 60,
              "pooled": {label: s for label, s in rows}, "per_seed": per_seed}
    print()
    print(table(rows))
    print(f"\nseeds: {' '.join(map(str, seeds))}  ({args.split or 'given'}); commit {commit}; CPU: {report['cpu']}; "
          f"{report['minutes']:.1f} min" + (f"; every {args.stride}th query" if args.stride > 1 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
