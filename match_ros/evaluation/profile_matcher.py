"""Per-stage timing of a matcher backend on 640x480 frames: extract(query) + match(keyframe, query), as the
keyframe_matcher node runs them (the keyframe is extracted once and cached).

    python -m match_ros.evaluation.profile_matcher --matcher xfeat_lighterglue --max-keypoints 1024

Prints the median over --runs of extract, match and their sum, then the median time spent inside each torch
submodule of the backend (forward hooks; CPU runs synchronously, so wall times are exact there), grouped by stage.
Time of a stage not covered by a listed submodule (NMS, top-k, filtering, pruning, Python) is shown as "other".
``--ops N`` adds the N torch operators with most time per match() (torch profiler), e.g. for the packed
LighterGlue, whose layers are not called as modules.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from match_ros.core.features import DEFAULT_MATCHER
from match_ros.core.config import parse_overrides
from match_ros.core.features.matcher import available_matchers, build_matcher


def _timed_modules(matcher) -> dict:
    """name -> module: the children of each torch module held by the matcher, ModuleLists and transformer
    layers opened one level further (so each LightGlue layer's self/cross block shows on its own)."""
    out = {}
    for attr, top in vars(matcher).items():
        if not isinstance(top, torch.nn.Module):
            continue
        for name, mod in top.named_children():
            kids = list(mod.named_children())
            if isinstance(mod, torch.nn.ModuleList):
                for i, layer in kids:
                    sub = dict(layer.named_children())
                    if "self_attn" in sub and "cross_attn" in sub:
                        out.update({f"{attr}.{name}.{i}.{k}": sub[k] for k in ("self_attn", "cross_attn")})
                    else:
                        out[f"{attr}.{name}.{i}"] = layer
            else:
                out[f"{attr}.{name}"] = mod
    return out


def _hook(modules: dict, acc: dict) -> list:
    handles = []
    for name, mod in modules.items():
        def pre(_m, _a, name=name):
            acc[name + "#t0"] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            acc[name] += time.perf_counter() - acc.pop(name + "#t0")

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def _frames(gap: int):
    from match_ros.sim import make_sequence

    seq = make_sequence("room", n_frames=max(30, gap + 1))
    return seq[0].rgb, seq[gap].rgb


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--matcher", default=DEFAULT_MATCHER, choices=available_matchers(), help="backend name")
    p.add_argument("--max-keypoints", type=int, default=None, help="max_keypoints override (default: backend's)")
    p.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                   help="further backend configuration entries (values parsed as Python literals)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--runs", type=int, default=15, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--gap", type=int, default=3, help="query = frame GAP of the rendered 'room' sequence")
    p.add_argument("--ops", type=int, default=0, metavar="N",
                   help="also the N torch operators with most time per match() (torch profiler, self CPU time): "
                        "what a backend spends below its modules, e.g. the packed LighterGlue's")
    args = p.parse_args(argv)
    conf = parse_overrides(args.conf)
    if args.max_keypoints is not None:
        conf["max_keypoints"] = args.max_keypoints
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    matcher = build_matcher(args.matcher, conf, device="cpu")
    key_img, query_img = _frames(args.gap)
    key = matcher.extract(key_img)
    modules = _timed_modules(matcher)
    acc: dict = defaultdict(float)
    handles = _hook(modules, acc)
    rows = defaultdict(list)
    for run in range(args.warmup + args.runs):
        acc.clear()
        t0 = time.perf_counter()
        query = matcher.extract(query_img)
        t1 = time.perf_counter()
        extract_mod = dict(acc)
        matches = matcher.match(key, query)
        t2 = time.perf_counter()
        if run < args.warmup:
            continue
        rows["extract"].append(t1 - t0)
        rows["match"].append(t2 - t1)
        rows["total"].append(t2 - t0)
        for name in modules:
            rows[name].append(acc.get(name, 0.0))
        rows["extract: other"].append(t1 - t0 - sum(extract_mod.get(n, 0.0) for n in modules))
        rows["match: other"].append(t2 - t1 - sum(acc.get(n, 0.0) - extract_mod.get(n, 0.0) for n in modules))
    for h in handles:
        h.remove()

    def ms(name: str) -> float:
        return 1e3 * statistics.median(rows[name])

    print(f"{args.matcher} conf={conf} threads={torch.get_num_threads()} keypoints={len(key)}/{len(query)} "
          f"matches={len(matches)} runs={args.runs} (median ms)")
    for name in ("extract", "match", "total"):
        print(f"  {name:<34s}{ms(name):8.2f}")
    print("  per stage:")
    for name in list(modules) + ["extract: other", "match: other"]:
        if ms(name) >= 0.005:
            print(f"    {name:<32s}{ms(name):8.2f}")
    if args.ops > 0:
        _print_ops(matcher, key, query, args.runs, args.ops)


def _print_ops(matcher, key, query, runs: int, n: int) -> None:
    """The n operators with most self CPU time in ``runs`` match() calls, in ms per call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            matcher.match(key, query)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"  match() by torch operator (self CPU ms per call; all operators {total / 1e3 / runs:.2f}):")
    for e in ops[:n]:
        print(f"    {e.key:<50s}{e.self_cpu_time_total / 1e3 / runs:8.2f}  ({e.count // runs} calls)")


if __name__ == "__main__":
    main()
