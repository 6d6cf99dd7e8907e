"""bfloat16 on the CPU only where it pays: measured on the machine it runs on, once per CPU model.

``choose_cpu_bf16(name, conf, device)`` times a frame (extract both images of a pair, match them) of backend
``name`` in float32 and with ``cpu_bf16`` (and ``cpu_bf16_glue`` where the backend has it), interleaved, and
compares their matches on a real photo pair (a packaged texture and a warp of it). bfloat16 is chosen when it is at
least ``MIN_SPEEDUP`` times faster and at least ``MIN_AGREEMENT`` of the float32 matches are found again (both ends
within 1 px). On a CPU without native bf16 (no AVX512-BF16 / AMX: emulated, slower) or off the CPU nothing is
measured. The decision is cached per CPU model, torch version, backend, keypoints and threads in
``$XDG_CACHE_HOME/match_ros/precision.json`` (``~/.cache``), so a node pays the ~2-4 s of measurement once.

Why: bf16 made XFeat + LighterGlue 1.4-1.5x faster on an Intel Xeon with AMX and gained nothing (0-5 ms of ~50)
on an AMD EPYC with AVX512-BF16, where it still cost 4-7 % of the matches (issue #24).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from match_ros.core.device import cpu_model

MIN_SPEEDUP = 1.1
PHOTO = Path(__file__).resolve().parents[1] / "sim" / "textures" / "building.jpg"
MIN_AGREEMENT = 0.9
CHOICES = ("auto", "true", "false")


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "match_ros" / "precision.json"


def test_pair(size=(480, 640)) -> tuple[np.ndarray, np.ndarray]:
    """A packaged photo (grey, size; multi-scale noise where the photo is missing) and the same under a 6 deg
    rotation and 0.9 scale: the pair timed and compared."""
    import cv2

    img = cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE)
    if img is None:
        rng = np.random.default_rng(0)
        img = sum(cv2.resize(rng.random((size[0] // s, size[1] // s)).astype(np.float32), (size[1], size[0]))
                  for s in (4, 16, 64))
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    A = cv2.getRotationMatrix2D((size[1] / 2, size[0] / 2), 6.0, 0.9)
    return img, cv2.warpAffine(img, A, (size[1], size[0]), borderMode=cv2.BORDER_REFLECT)


def _matched_pixels(matcher, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = matcher.extract(a), matcher.extract(b)
    m = matcher.match(fa, fb)
    pa, pb = m.points(fa, fb)
    return np.hstack([pa, pb])


def agreement(reference: np.ndarray, other: np.ndarray, tol_px: float = 1.0) -> float:
    """Share of the reference matches [N x 4] (x_a, y_a, x_b, y_b) that ``other`` has too, both ends within
    tol_px."""
    if not len(reference):
        return 1.0 if not len(other) else 0.0
    if not len(other):
        return 0.0
    d = np.abs(reference[:, None, :] - other[None, :, :]).max(axis=2)
    return float(np.mean(d.min(axis=1) <= tol_px))


def measure(build: Callable[[bool], object], repeats: int = 7) -> dict:
    """Frame times [ms] (median of ``repeats``, float32 and bf16 interleaved after a warm-up) and agreement of
    backends built by ``build(bf16)``."""
    a, b = test_pair()
    matchers = {False: build(False), True: build(True)}
    pixels = {k: _matched_pixels(m, a, b) for k, m in matchers.items()}  # also the warm-up
    times: dict = {False: [], True: []}
    for _ in range(repeats):
        for k, m in matchers.items():
            t0 = time.perf_counter()
            _matched_pixels(m, a, b)
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {"float32_ms": float(np.median(times[False])), "bf16_ms": float(np.median(times[True])),
            "agreement": agreement(pixels[False], pixels[True]), "matches": int(len(pixels[False]))}


def decide(record: dict) -> tuple[bool, str]:
    speedup = record["float32_ms"] / max(record["bf16_ms"], 1e-6)
    use = speedup >= MIN_SPEEDUP and record["agreement"] >= MIN_AGREEMENT
    why = (f"bf16 {record['bf16_ms']:.0f} ms vs float32 {record['float32_ms']:.0f} ms per frame ({speedup:.2f}x), "
           f"{100 * record['agreement']:.0f} % of the float32 matches kept")
    return use, why


def choose_cpu_bf16(name: str, conf: dict, device, threads: int = 0, cache: Optional[Path] = None,
                    build: Optional[Callable[[bool], object]] = None) -> tuple[bool, str]:
    """(use bf16, the reason with its figures) for backend ``name`` with ``conf`` on ``device``."""
    import torch

    from match_ros.core.device import cpu_has_bf16
    from match_ros.core.features.matcher import build_matcher, matcher_class

    device = torch.device(device)
    if device.type != "cpu":
        return False, f"float32 on {device.type} (cpu_bf16 acts on the CPU only)"
    known = matcher_class(name).default_conf
    if "cpu_bf16" not in known:
        return False, f"float32 ({name} has no bfloat16 mode)"
    if not cpu_has_bf16():
        return False, "float32 (this CPU has no native bfloat16: emulated it is slower)"
    key = "|".join([cpu_model(), torch.__version__, name, str(conf.get("max_keypoints", "")),
                    str(threads or torch.get_num_threads())])
    cache = cache or cache_file()
    try:
        records = json.loads(cache.read_text())
    except (OSError, ValueError):
        records = {}
    record = records.get(key)
    cached = record is not None
    if not cached:
        def default_build(bf16: bool):
            extra = {"cpu_bf16": bf16, **({"cpu_bf16_glue": bf16} if "cpu_bf16_glue" in known else {})}
            return build_matcher(name, {**conf, **extra}, device)

        record = measure(build or default_build)
        records[key] = record
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
            os.replace(tmp, cache)
        except OSError:
            pass  # measured again next time
    use, why = decide(record)
    return use, f"{'bf16' if use else 'float32'}: {why}{' (cached)' if cached else ''}"
