"""match_ros_eval_pairs: accuracy of every matcher on the same data with exact ground truth.

- graf1 -> graf3 (Oxford graffiti, homography): matches, share within 3 px of the
  ground-truth homography, corner error of a USAC-MAGSAC homography from the matches.
- aloe and motorcycle (Middlebury, rectified stereo, GT disparity): share of matches whose
  disparity is within 1 px of the ground truth (and rows within 1 px).
- rendered scenes room, corridor (scenes the learned matchers were trained on, other seeds and
  trajectories) and facade (held out): relative pose AUC@5/10/20 deg from the essential matrix.
Prints markdown tables (for docs/matchers.md) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from match_ros.evaluation.metrics import homography_corner_error


def default_data_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "test" / "data"


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def graf_metrics(matcher, data: Path) -> dict:
    fs = cv2.FileStorage(str(data / "H1to3p.xml"), cv2.FILE_STORAGE_READ)
    H = fs.getNode("H13").mat()
    fs.release()
    a, b = _rgb(data / "graf1.png"), _rgb(data / "graf3.png")
    t0 = time.perf_counter()
    fa, fb = matcher.extract(a), matcher.extract(b)
    t1 = time.perf_counter()
    m = matcher.match(fa, fb)
    t2 = time.perf_counter()
    pa, pb = m.points(fa, fb)
    out = {"matches": len(m), "extract_ms": 500 * (t1 - t0), "match_ms": 1e3 * (t2 - t1)}
    if len(m) >= 4:
        proj = cv2.perspectiveTransform(pa[None], H)[0]
        out["correct"] = float(np.mean(np.linalg.norm(proj - pb, axis=1) < 3.0))
        H_est, _ = cv2.findHomography(pa, pb, cv2.USAC_MAGSAC, 3.0)
        out["corner_err_px"] = (homography_corner_error(H_est, H, a.shape[1], a.shape[0]) if H_est is not None
                                else float("inf"))
    return out


def disparity_metrics(matcher, left: np.ndarray, right: np.ndarray, disp: np.ndarray) -> dict:
    """Rectified stereo with a left-image disparity map (0, NaN or inf = none): share of the matches with
    ground truth whose disparity x_left - x_right is within 1 px of it and whose rows differ by <= 1 px."""
    fl, fr = matcher.extract(left), matcher.extract(right)
    m = matcher.match(fl, fr)
    pl, pr = m.points(fl, fr)
    col = np.clip(np.round(pl[:, 0]).astype(int), 0, disp.shape[1] - 1)
    row = np.clip(np.round(pl[:, 1]).astype(int), 0, disp.shape[0] - 1)
    d = disp[row, col]
    valid = np.isfinite(d) & (d > 0)
    err = np.abs((pl[:, 0] - pr[:, 0]) - np.nan_to_num(d, posinf=0.0))
    ok = valid & (err <= 1.0) & (np.abs(pl[:, 1] - pr[:, 1]) <= 1.0)
    return {"matches": len(m), "with_gt": int(valid.sum()),
            "within_1px": float(ok[valid].mean()) if valid.any() else 0.0}


def aloe_metrics(matcher, data: Path) -> dict:
    disp = cv2.imread(str(data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float64)
    return disparity_metrics(matcher, _rgb(data / "aloeL.jpg"), _rgb(data / "aloeR.jpg"), disp)


def motorcycle_metrics(matcher, data: Path) -> dict:
    disp = np.load(data / "motorcycle_disp.npz")["arr_0"].astype(np.float64)
    return disparity_metrics(matcher, _rgb(data / "motorcycle_left.png"), _rgb(data / "motorcycle_right.png"), disp)


# Rendered-scene pairs: seeds no training run uses (match_ros_train's scene seeds are its data seed + < 20 000,
# texture seeds those + 5000); "facade" is never in training data.
RENDER_SEED = 90_000
SCENE_SPLIT = {"room": "training scene", "corridor": "training scene", "facade": "held out",
               "room_changed_day": "changed day", "corridor_changed_day": "changed day",
               "facade_changed_day": "changed day, held out"}


def rendered_pairs(scene: str, n_pairs: int, gap=(6, 20), seed: int = RENDER_SEED):
    """The evaluation pairs of a rendered scene: [(frame_a, frame_b)] at 640x480 and the camera K."""
    from match_ros.sim.factories import make_sequence

    frames = 240
    seq = make_sequence(scene, n_frames=frames, seed=seed, scene_seed=seed + 1, photometric=True, noise_sigma=2.0)
    rng = np.random.default_rng([seed, 3])
    starts = np.sort(rng.choice(frames - gap[1], size=n_pairs, replace=False))
    pairs = [(seq[int(a)], seq[int(a + rng.integers(gap[0], gap[1] + 1))]) for a in starts]
    return pairs, seq.camera.K


def changed_day_pairs(scene: str, n_pairs: int, seed: int = RENDER_SEED):
    """Pairs (mapping-day frame, changed-day frame) of one scene: the changed-day query run the relocalization
    evaluation uses (off the path, turned, dim and uneven light, blur, noise; ``make_changed_day_sequence``)
    against the mapping run's frame with the closest viewing direction 0.15-1 m away (``closest_view_pairs``).
    The scene textures (scene_seed 0) and both trajectories are in no training set."""
    from match_ros.sim import closest_view_pairs, make_changed_day_sequence, make_sequence

    frames = 240
    mapped = make_sequence(scene, n_frames=frames, seed=0, scene_seed=0)
    day = make_changed_day_sequence(scene, frames, seed=seed, scene_seed=0)
    pairs = closest_view_pairs(mapped, day, np.linspace(0, frames - 1, 3 * n_pairs).astype(int))
    return pairs[:n_pairs], mapped.camera.K


def pose_auc_metrics(matcher, pairs, K) -> dict:
    """Relative pose from the matches (essential matrix, USAC-MAGSAC) against the exact poses:
    error = max(rotation error, translation direction error); AUC at 5/10/20 deg."""
    from match_ros.core.geometry.two_view import estimate_relative_pose
    from match_ros.evaluation.metrics import pose_auc, pose_errors, relative_pose_gt

    feats, errors, ms = {}, [], []
    for fa, fb in pairs:
        for f in (fa, fb):  # a frame object per pair side (pairs may mix sequences with the same indices)
            if id(f) not in feats:
                feats[id(f)] = matcher.extract(f.rgb)
        a, b = feats[id(fa)], feats[id(fb)]
        t0 = time.perf_counter()
        m = matcher.match(a, b)
        ms.append(1e3 * (time.perf_counter() - t0))
        pa, pb = m.points(a, b)
        est = estimate_relative_pose(pa, pb, K, K)
        if not est.valid:
            errors.append(np.inf)
            continue
        e = pose_errors(est.T_ref_query, relative_pose_gt(fa.T_world_cam, fb.T_world_cam), scale_known=False)
        errors.append(max(e["rot_deg"], e["trans_deg"]))
    return {**pose_auc(errors), "pairs": len(pairs), "median_err_deg": float(np.median(errors)),
            "match_ms": float(np.median(ms))}


def main(argv=None) -> int:
    from match_ros.core.device import resolve_device
    from match_ros.core.features.matcher import available_matchers, build_matcher, shared_conf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matchers", nargs="+", default=None, help="backends (default: all)")
    ap.add_argument("--max-keypoints", type=int, default=None, help="override each backend's keypoint count")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--data", default=str(default_data_dir()), help="folder with graf*/aloe*/motorcycle* files")
    ap.add_argument("--scenes", nargs="*", default=list(SCENE_SPLIT), help="rendered scenes for pose AUC")
    ap.add_argument("--scene-pairs", type=int, default=30, help="frame pairs per rendered scene")
    ap.add_argument("--seed", type=int, default=RENDER_SEED,
                    help="seed of the rendered evaluation runs (another seed: other trajectories, light and pairs)")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="configuration of the (single) backend of --matchers, e.g. photometric_window=0")
    ap.add_argument("--label", default=None, help="row name of the (single) backend (default: its name)")
    ap.add_argument("--json", default="build/eval/pairs.json", help="where to write the figures")
    ap.add_argument("--tables-from", nargs="+", default=None, metavar="JSON",
                    help="print the tables of earlier runs' JSON files (rows in order, later files win) and exit")
    args = ap.parse_args(argv)
    if args.tables_from:
        rows = {}
        for f in args.tables_from:
            rows.update(json.loads(Path(f).read_text()))
        print_tables(rows)
        return 0
    from match_ros.core.config import parse_overrides

    data, device = Path(args.data), resolve_device(args.device)
    overrides = parse_overrides(args.conf)
    if (overrides or args.label) and len(args.matchers or []) != 1:
        raise SystemExit("--conf and --label need exactly one backend in --matchers")
    scenes = {s: (changed_day_pairs(s[:-len("_changed_day")], args.scene_pairs, args.seed)
                  if s.endswith("_changed_day") else rendered_pairs(s, args.scene_pairs, seed=args.seed))
              for s in args.scenes}
    rows = {}
    for name in args.matchers or available_matchers():
        conf = {**(shared_conf(name, max_keypoints=args.max_keypoints) if args.max_keypoints else {}), **overrides}
        matcher = build_matcher(name, conf, device)
        graf_metrics(matcher, data)  # warm-up (first call allocates)
        rows[args.label or name] = {
            "conf": matcher.conf, "graf": graf_metrics(matcher, data), "aloe": aloe_metrics(matcher, data),
            "motorcycle": motorcycle_metrics(matcher, data),
            "scenes": {s: pose_auc_metrics(matcher, *p) for s, p in scenes.items()}}
        print(f"{name}: done", file=sys.stderr, flush=True)
    print_tables(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0


def print_tables(rows: dict) -> None:
    """Markdown: correspondences on the real pairs, then relative pose AUC on the rendered scenes."""
    print("| matcher | keypoints | graf matches | graf correct (3 px) | graf corner err | "
          "aloe within 1 px (matches) | motorcycle within 1 px (matches) | extract ms (800x640) | match ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        g = r["graf"]
        print(f"| {name} | {r['conf'].get('max_keypoints', '-')} | {g['matches']} | "
              f"{100 * g.get('correct', 0):.1f}% | "
              f"{g.get('corner_err_px', float('nan')):.2f} px | "
              f"{100 * r['aloe']['within_1px']:.1f}% ({r['aloe']['with_gt']}) | "
              f"{100 * r['motorcycle']['within_1px']:.1f}% ({r['motorcycle']['with_gt']}) | "
              f"{g['extract_ms']:.0f} | {g['match_ms']:.0f} |")
    scenes = list(next(iter(rows.values()))["scenes"]) if rows else []
    changed = [s for s in scenes if s.endswith("_changed_day")]
    for group in ([s for s in scenes if s not in changed], changed):
        if group:
            print()
            _scene_table(rows, group)


def _scene_table(rows: dict, scenes: list) -> None:
    """One markdown table of pose AUC over ``scenes``, with the mean AUC@10 and the median match time."""
    print("| matcher | " + " | ".join(f"{s} ({SCENE_SPLIT.get(s, '?')}) AUC@5/10/20" for s in scenes)
          + " | mean AUC@10 | match ms (640x480, median) |")
    print("|---|" + "---|" * (len(scenes) + 2))
    for name, r in rows.items():
        cells = [" / ".join(f"{100 * r['scenes'][s][f'auc@{t}']:.1f}" for t in (5, 10, 20)) for s in scenes]
        mean10 = 100 * np.mean([r["scenes"][s]["auc@10"] for s in scenes])
        ms = np.median([r["scenes"][s].get("match_ms", np.nan) for s in scenes])
        print(f"| {name} | " + " | ".join(cells) + f" | {mean10:.1f} | {ms:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
