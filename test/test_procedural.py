"""Procedural relocalization cases (match_ros.sim.procedural): determinism, variety, the seed split, clearance,
rendered content, query timing and odometry (pure: no ROS; small images, a few rendered frames)."""
import functools
import json
import math

import cv2
import numpy as np
import pytest

from match_ros.sim import Camera
from match_ros.sim.procedural import (REPORT_SEEDS, TUNE_SEEDS, case_paths, fresh_seed, make_procedural_case,
                                      odometry_poses, photo_pool, seed_split, write_case_bags)

SMALL = Camera().scaled(0.25)  # 160 x 120
SEEDS = TUNE_SEEDS[:6]  # rooms and streets (100-103 rooms, 104-105 streets)


@functools.lru_cache(maxsize=None)
def _case(seed):
    return make_procedural_case(seed, camera=SMALL)


def _all_positions(case):
    """[N x 3] camera centres of the mapping run and of the whole query walk at 30 Hz."""
    return np.array([T[:3, 3] for _, T in case.map_sequence.poses] + [T[:3, 3] for T in case.query_dense_poses])


def _distance_to_rectangle(p, plane):
    """Distance from a point to a textured rectangle, from its four corners (independent of the library's own)."""
    c = plane.corners()
    u, v = c[1] - c[0], c[3] - c[0]
    a = np.clip((p - c[0]) @ u / (u @ u), 0, 1)
    b = np.clip((p - c[0]) @ v / (v @ v), 0, 1)
    return float(np.linalg.norm(p - (c[0] + a * u + b * v)))


def test_pool_has_the_package_photos_and_no_small_or_vector_images():
    pool = photo_pool()
    assert len(set(pool)) == len(pool)
    names = {p.rsplit("/", 1)[-1] for p in pool}
    assert {"aero1.jpg", "coins.png", "vtest_frame0.jpg"} <= names
    assert not any(p.endswith(".svg") for p in pool)
    from PIL import Image

    for p in pool:
        with Image.open(p) as img:
            assert min(img.size) >= 200, p


def test_the_pool_order_does_not_depend_on_where_the_package_lives():
    """Sorted by absolute path, a checkout under /tmp listed the package's textures before /usr's photos and every
    seed was another place than under /work. Now: system folders, then scikit-image's files, then the textures."""
    from pathlib import Path

    from match_ros.sim import default_textures_dir

    pool = photo_pool()
    ranks = [0 if p.startswith("/usr/share/") else 2 if Path(p).parent == default_textures_dir() else 1 for p in pool]
    assert ranks == sorted(ranks) and 2 in ranks
    textures = [Path(p).name for p, r in zip(pool, ranks) if r == 2]
    assert textures == sorted(textures)


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_same_seed_gives_a_bitwise_identical_case():
    a, b = _case(SEEDS[0]), make_procedural_case(SEEDS[0], camera=SMALL)
    assert a is not b and a.key == b.key and a.place == b.place
    for sa, sb in ((a.map_sequence, b.map_sequence), (a.query_sequence, b.query_sequence)):
        assert sa.stamps_ns == sb.stamps_ns
        assert all(np.array_equal(Ta, Tb) for (_, Ta), (_, Tb) in zip(sa.poses, sb.poses))
        fa, fb = sa[0], sb[0]
        assert np.array_equal(fa.rgb, fb.rgb) and np.array_equal(fa.depth, fb.depth)
    assert all(np.array_equal(pa.texture, pb.texture) for pa, pb in zip(a.scene.planes, b.scene.planes))
    assert a.textures == b.textures and a.dropped == b.dropped and a.odom_delay_s == b.odom_delay_s
    assert np.array_equal(a.T_map_odom, b.T_map_odom)
    assert all(np.array_equal(x, y) for x, y in zip(odometry_poses(a, "drift"), odometry_poses(b, "drift")))


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_different_seeds_give_different_places():
    cases = [_case(s) for s in SEEDS]
    assert {c.place for c in cases} == {"room", "street"}
    assert len({json.dumps(c.dims, sort_keys=True) for c in cases}) == len(cases)
    assert len({c.key for c in cases}) == len(cases)
    for i, a in enumerate(cases):
        for b in cases[i + 1:]:
            assert not np.allclose(a.map_sequence.poses[0][1], b.map_sequence.poses[0][1])
            assert [t["file"] for t in a.textures] != [t["file"] for t in b.textures]
    # textures come from the whole pool, not from a fixed handful
    assert len(set().union(*(c.texture_files for c in cases))) >= 12


def test_touching_planes_show_different_photos():
    for case in (_case(SEEDS[3]), _case(SEEDS[5])):
        files = {t["plane"]: t["file"] for t in case.textures}
        planes = case.scene.planes
        for i, a in enumerate(planes):
            for b in planes[i + 1:]:
                touching = min(_distance_to_rectangle(c, b) for c in a.corners()) < 0.05
                if touching:
                    assert files[a.name] != files[b.name], (a.name, b.name)


def test_seed_split_is_fixed_and_disjoint():
    assert TUNE_SEEDS == tuple(range(100, 110)) and REPORT_SEEDS == tuple(range(10000, 10012))
    assert not set(TUNE_SEEDS) & set(REPORT_SEEDS)
    fresh = {fresh_seed() for _ in range(5)}
    assert len(fresh) == 5 and min(fresh) >= 10 ** 6 and not fresh & set(TUNE_SEEDS + REPORT_SEEDS)
    splits = [seed_split(s) for s in (100, 139, 10011, 1011, 2011, 3011, 4011, 5011, 6011, 7011, 8011, 9011, 10 ** 6,
                                      5)]
    assert splits == ["tune", "tune", "report", "tune", "tune", "tune", "tune", "tune", "tune", "tune", "tune", "tune",
                      "fresh", "other"]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_bad_seed_raises(bad):
    with pytest.raises(ValueError):
        make_procedural_case(bad, camera=SMALL)


def test_every_pose_is_in_free_space_and_clear_of_every_plane():
    for seed in SEEDS:
        case = _case(seed)
        pos = _all_positions(case)
        assert case.in_free_space(pos).all(), seed
        assert ((pos[:, 2] >= 1.2) & (pos[:, 2] <= 1.7)).all(), seed
        (x0, x1), (y0, y1), _ = case.bounds
        assert ((pos[:, 0] > x0) & (pos[:, 0] < x1) & (pos[:, 1] > y0) & (pos[:, 1] < y1)).all(), seed
        for o in case.obstacles:  # not inside an obstacle's footprint (a box is closed, a partition thin)
            lo, hi = o["polygon"].min(axis=0), o["polygon"].max(axis=0)
            inside = (pos[:, 0] > lo[0]) & (pos[:, 0] < hi[0]) & (pos[:, 1] > lo[1]) & (pos[:, 1] < hi[1])
            assert not inside.any() or o["kind"] == "partition", seed
        for p in pos[::7]:
            assert min(_distance_to_rectangle(p, plane) for plane in case.scene.planes) >= 0.5, (seed, p)


def test_query_frames_show_surfaces_not_background():
    for seed in (SEEDS[0], SEEDS[2], SEEDS[4]):  # two rooms and a street
        seq = _case(seed).query_sequence
        for i in (0, len(seq) // 2, len(seq) - 1):
            f = seq[i]
            assert (f.depth == 0).mean() < 0.1, (seed, i)
            assert (f.rgb.max(axis=2) < 10).mean() < 0.1, (seed, i)
            assert float(cv2.cvtColor(f.rgb, cv2.COLOR_RGB2GRAY).std()) > 5.0, (seed, i)


def test_query_run_is_a_changed_day():
    case = _case(SEEDS[1])
    q, m = case.query_sequence, case.map_sequence
    assert q.lighting is not None and 0.25 <= q.lighting.ambient <= 0.5
    assert 3.0 <= q.noise_sigma <= 6.0 and np.ptp(q.gamma) > 0.01
    assert 0.2 <= sum(b is not None for b in q.blur) / len(q) <= 0.4
    assert m.lighting is None and m.blur is None and m.noise_sigma == 0
    # off the mapped loop by 0.2-0.6 m (+ the loop's own shape) and looking up to ~40 deg (+ the scan) elsewhere
    mp = np.array([T[:3, 3] for _, T in m.poses])
    off = [np.min(np.linalg.norm(mp[:, :2] - T[:2, 3], axis=1)) for _, T in q.poses]
    assert 0.1 <= np.median(off) <= 0.7


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_query_stamps_are_1_to_3_hz_with_drops(seed):
    case = _case(seed)
    assert 1.0 <= case.query_rate_hz <= 3.0
    period_ns = 1e9 / case.query_rate_hz
    gaps = np.diff(case.query_sequence.stamps_ns) / period_ns
    assert np.allclose(gaps, np.round(gaps), atol=1e-6) and set(np.round(gaps).astype(int)) == {1, 2}
    share = len(case.dropped) / case.query_nominal_frames
    assert 0.05 - 1 / case.query_nominal_frames <= share <= 0.15 + 1 / case.query_nominal_frames
    assert len(case.query_sequence) >= 40 and len(case.query_sequence) + len(case.dropped) == case.query_nominal_frames
    # the camera walks on between query frames: 0.1-0.5 m from one nominal frame to the next
    nominal = np.array([case.query_dense_poses[k * case.query_period_frames][:3, 3]
                        for k in range(case.query_nominal_frames)])
    step = np.linalg.norm(np.diff(nominal, axis=0), axis=1)
    assert step.min() >= 0.08 and step.max() <= 0.55


def test_odometry_kinds():
    case = _case(SEEDS[4])
    truth = [T for _, T in case.query_sequence.poses]
    assert odometry_poses(case, "none") is None
    drift = odometry_poses(case, "drift")
    assert len(drift) == len(truth)
    seen = [case.T_map_odom @ T for T in drift]  # odometry put into the map with the true map -> odom
    err_t = np.array([np.linalg.norm(a[:3, 3] - b[:3, 3]) for a, b in zip(seen, truth)])
    err_r = np.array([math.degrees(math.acos(np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1)))
                      for a, b in zip(seen, truth)])
    third = len(err_t) // 3
    assert err_t[0] < 1e-9 and err_t[-third:].mean() > err_t[:third].mean() and err_t[-1] > 0.005
    assert err_t.max() < 0.3 and err_r.max() < 3.0
    # the odometry's frame is offset from the map by a transform of the seed: in its own frame it is elsewhere
    assert np.linalg.norm(drift[0][:3, 3] - truth[0][:3, 3]) > 0.1
    assert not np.allclose(case.T_map_odom, _case(SEEDS[5]).T_map_odom)
    # frame-to-frame motion is nearly right: drift is small per step
    for k in range(1, len(drift)):
        rel_o = np.linalg.inv(drift[k - 1]) @ drift[k]
        rel_t = np.linalg.inv(truth[k - 1]) @ truth[k]
        assert np.linalg.norm(rel_o[:3, 3] - rel_t[:3, 3]) < 0.05
    delayed = odometry_poses(case, "delayed")
    assert all(np.array_equal(a, b) for a, b in zip(drift, delayed))
    assert 0.05 <= case.odom_delay_s <= 0.6
    assert len({_case(s).odom_delay_s for s in SEEDS}) == len(SEEDS)
    with pytest.raises(ValueError):
        odometry_poses(case, "wheel")


def test_hard_cases_are_what_they_say():
    kinds = set()
    for seed in SEEDS:
        case = _case(seed)
        tex = {p.name: p.texture for p in case.scene.planes}
        for hard in case.hard_cases:
            kind, names = hard.split(":")
            kinds.add(kind)
            if kind == "mirror":
                t = tex[names]
                assert np.array_equal(t, t[:, ::-1]), hard
            elif kind == "repetitive":
                t = tex[names]
                tiled = [(r, c) for r in range(1, 7) for c in range(1, 7) if 3 <= r * c <= 6
                         and t.shape[0] % r == 0 and t.shape[1] % c == 0
                         and np.array_equal(t, np.tile(t[:t.shape[0] // r, :t.shape[1] // c], (r, c, 1)))]
                assert tiled, hard
            else:
                a, b = (tex[n] for n in names.split("="))
                b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
                assert np.abs(a.astype(float) - b).mean() < 8.0, hard
                pa, pb = (next(p for p in case.scene.planes if p.name == n) for n in names.split("="))
                assert np.linalg.norm(pa.corners().mean(0) - pb.corners().mean(0)) >= 3.0
    assert {"mirror", "repetitive", "lookalike"} <= kinds
    assert any(not _case(s).hard_cases for s in SEEDS)


def test_write_case_bags_writes_once(tmp_path):
    from match_ros.sim import Sequence
    from match_ros.tools.bagio import read_topic

    full = _case(SEEDS[4])
    # the same case cut to a few frames, so that the test writes in a second
    case = make_procedural_case(SEEDS[4], camera=SMALL)
    case.map_sequence = Sequence(case.scene, SMALL, full.map_sequence.poses[:3])
    q = full.query_sequence
    case.query_sequence = Sequence(case.scene, SMALL, q.poses[:4], gamma=q.gamma[:4], noise_sigma=q.noise_sigma,
                                   seed=q.seed, lighting=q.lighting, blur=q.blur[:4])
    case.query_dense_index = full.query_dense_index[:4]
    map_bag, query_bag = write_case_bags(case, tmp_path)
    folder, _, _, meta = case_paths(case, tmp_path)
    assert str(SEEDS[4]) in map_bag.name and case.key in map_bag.name and case.key in query_bag.name
    assert len(read_topic(map_bag, "/camera/depth")) == 3 and len(read_topic(map_bag, "/camera/image_raw")) == 3
    assert "/camera/depth" in (map_bag / "metadata.yaml").read_text()
    assert "/camera/depth" not in (query_bag / "metadata.yaml").read_text()
    tf = read_topic(query_bag, "/tf")
    assert [m.transforms[0].header.frame_id for _, m in tf] == ["odom"] * 4
    odom = odometry_poses(case, "drift")
    assert np.allclose([m.transforms[0].transform.translation.x for _, m in tf], [T[0, 3] for T in odom])
    info = json.loads(meta.read_text())
    assert info["seed"] == SEEDS[4] and info["odom_delay_s"] == case.odom_delay_s and info["query_frames"] == 4
    assert np.allclose(info["T_map_odom"], case.T_map_odom) and info["texture_files"] == case.texture_files
    stamp = (map_bag / "metadata.yaml").stat().st_mtime_ns
    assert write_case_bags(case, tmp_path) == (map_bag, query_bag)
    assert (map_bag / "metadata.yaml").stat().st_mtime_ns == stamp
