"""match_ros_eval_pairs: accuracy of every matcher on real image pairs with ground truth.

- graf1 -> graf3 (Oxford graffiti, homography): matches, share within 3 px of the
  ground-truth homography, corner error of a USAC-MAGSAC homography from the matches.
- aloe (Middlebury, rectified stereo, GT disparity): share of matches whose
  disparity is within 1 px of the ground truth (and rows within 1 px).
Prints a markdown table (for the README) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ..core.geometry import homography_corner_error


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
        out["corner_err_px"] = homography_corner_error(H_est, H, a.shape[1], a.shape[0]) if H_est is not None else float("inf")
    return out


def aloe_metrics(matcher, data: Path) -> dict:
    left, right = _rgb(data / "aloeL.jpg"), _rgb(data / "aloeR.jpg")
    disp = cv2.imread(str(data / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float64)
    fl, fr = matcher.extract(left), matcher.extract(right)
    m = matcher.match(fl, fr)
    pl, pr = m.points(fl, fr)
    col = np.clip(np.round(pl[:, 0]).astype(int), 0, disp.shape[1] - 1)
    row = np.clip(np.round(pl[:, 1]).astype(int), 0, disp.shape[0] - 1)
    d = disp[row, col]
    valid = d > 0
    err = np.abs((pl[:, 0] - pr[:, 0]) - d)
    ok = valid & (err <= 1.0) & (np.abs(pl[:, 1] - pr[:, 1]) <= 1.0)
    return {"matches": len(m), "with_gt": int(valid.sum()),
            "within_1px": float(ok[valid].mean()) if valid.any() else 0.0}


def main(argv=None) -> int:
    from ..core.device import resolve_device
    from ..core.matcher import available_matchers, build_matcher

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matchers", nargs="+", default=None, help="backends (default: all)")
    ap.add_argument("--max-keypoints", type=int, default=None, help="override each backend's keypoint count")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--data", default=str(default_data_dir()), help="folder with graf*/aloe* files")
    ap.add_argument("--json", default="build/eval/pairs.json", help="where to write the figures")
    args = ap.parse_args(argv)
    data, device = Path(args.data), resolve_device(args.device)
    rows = {}
    for name in args.matchers or available_matchers():
        conf = {"max_keypoints": args.max_keypoints} if args.max_keypoints else None
        matcher = build_matcher(name, conf, device)
        graf_metrics(matcher, data)  # warm-up (first call allocates)
        rows[name] = {"conf": matcher.conf, "graf": graf_metrics(matcher, data), "aloe": aloe_metrics(matcher, data)}
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"| matcher | keypoints | graf matches | graf correct (3 px) | graf corner err | aloe matches | "
          f"aloe within 1 px | extract ms (800x640) | match ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        g, a = r["graf"], r["aloe"]
        print(f"| {name} | {r['conf'].get('max_keypoints', '-')} | {g['matches']} | {100 * g.get('correct', 0):.1f}% | "
              f"{g.get('corner_err_px', float('nan')):.2f} px | {a['matches']} | {100 * a['within_1px']:.1f}% | "
              f"{g['extract_ms']:.0f} | {g['match_ms']:.0f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
