"""Localizer unit tests (pure core): global relocalization and tracking against ground truth on rendered scenes
with a changed-day query run, never a wrong pose at any top_k, ambiguity between look-alike places refused,
implausible priors refused, retrieval by visual words, honest covariance; integrity: a wrong calibration refused,
correlated matches counted once, priors without odometry trusted only when young and confirmed."""
import numpy as np
import pytest

from match_ros.core.features.matcher import build_matcher
from match_ros.core.geometry.absolute_pose import cell_weights, occupied_cells, pose_covariance
from match_ros.core.geometry.transforms import make_T, perturb_pose, rotation_error_deg
from match_ros.core.relocalization.continuous import ContinuousLocalizer
from match_ros.core.relocalization.global_desc import GlobalDescriptor
from match_ros.core.relocalization.localizer import LocalizationResult, Localizer
from match_ros.core.relocalization.mapping import MapBuilder
from match_ros.evaluation.reloc_metrics import keyframe_sees_view, nees
from match_ros.sim import (Camera, Plane, Scene, Sequence, load_photos, look_at, make_changed_day_sequence,
                           make_sequence, pose_from_ypr)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable run time on a busy runner (conftest)


@pytest.fixture(scope="module")
def matcher():
    return build_matcher("orb_teblid", {"max_keypoints": 1024})


@pytest.fixture(scope="module")
def office(matcher):
    """Office map from the mapping run (every 3rd of 300 frames, depth), changed-day queries (every 10th of 300)."""
    seq = make_sequence("office", n_frames=300, seed=0)
    builder = MapBuilder(matcher, GlobalDescriptor())
    for i in range(0, 300, 3):
        f = seq[i]
        builder.add_frame(f.rgb, f.T_world_cam, seq.camera.K, f.stamp_ns, f.depth)
    queries = make_changed_day_sequence("office", 300, seed=1)
    return builder.build(), queries, [queries[i] for i in range(0, 300, 10)]


def errors(T, T_gt):
    return float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3])), rotation_error_deg(T[:3, :3], T_gt[:3, :3])


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_global_relocalization_on_a_changed_day(office, matcher):
    m, q, frames = office
    loc = Localizer(m, matcher)
    results = [(loc.localize(f.rgb, q.camera.K), f) for f in frames]
    err = np.array([errors(r.T_map_cam, f.T_world_cam) if r.success else (np.inf, np.inf) for r, f in results])
    # measured (orb_teblid, 30 queries, 2026-12-06): 23 poses, all within 5 cm / 2 deg; 6 refused (weak geometry, a
    # dark frame), 1 as ambiguous between two basins 7 deg apart with as much evidence (basin_check; 24 poses without)
    assert np.mean((err[:, 0] < 0.05) & (err[:, 1] < 2.0)) >= 0.75
    assert not np.any(np.isfinite(err[:, 0]) & ((err[:, 0] > 1.0) | (err[:, 1] > 10.0)))  # no wrong pose
    for r, _ in results:
        if r.success:
            assert r.mode == "global" and r.num_inliers >= 40
            assert len([k for k, v in r.support.items() if v >= 10]) >= 2
            assert r.matched and r.matched[0].inliers.sum() == max(r.support.values())
            assert np.all(np.linalg.eigvalsh(r.covariance) > 0)
        else:
            assert r.reason  # always says why


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
@pytest.mark.parametrize("top_k", [1, 5, 20])
def test_no_wrong_pose_at_any_top_k(office, matcher, top_k):
    m, q, frames = office
    loc = Localizer(m, matcher, conf={"top_k": top_k, "max_keyframes_matched": min(top_k, 10)})
    for f in frames[::2]:
        r = loc.localize(f.rgb, q.camera.K)
        if r.success:
            t, rot = errors(r.T_map_cam, f.T_world_cam)
            assert t < 1.0 and rot < 10.0, (top_k, t, rot, r.reason)


def test_tracking_from_an_odometry_prior_and_fallback(office, matcher):
    m, q, _ = office
    loc = Localizer(m, matcher)
    sharp = [i for i in range(40, 80) if q.blur[i] is None]  # ORB finds little in the motion-blurred frames
    f0, f1 = q[sharp[0]], q[sharp[3]]
    # a prior 3 cm / 1 deg off the truth (odometry since the last fix): tracked, accurate
    c, s = np.cos(np.radians(1.0)), np.sin(np.radians(1.0))
    nudge = make_T(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), [0.03, -0.01, 0.0])
    r = loc.localize(f1.rgb, q.camera.K, prior_T_map_cam=nudge @ f1.T_world_cam)
    assert r.success and r.mode == "tracking" and r.timings_ms["retrieval"] == 0.0
    t, rot = errors(r.T_map_cam, f1.T_world_cam)
    assert t < 0.05 and rot < 2.0
    # a prior 3 m away: tracking fails, the global search finds the truth
    far = make_T(np.eye(3), [3.0, 0.0, 0.0]) @ f0.T_world_cam
    r = loc.localize(f0.rgb, q.camera.K, prior_T_map_cam=far)
    assert r.success and r.mode == "global"
    assert errors(r.T_map_cam, f0.T_world_cam)[0] < 0.05


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_retrieval_by_visual_words_finds_the_place(office, matcher):
    m, q, frames = office
    loc = Localizer(m, matcher)
    hits = []
    for f in frames:
        r = loc.localize(f.rgb, q.camera.K)
        hits.append([keyframe_sees_view(m[k], f.T_world_cam, q.camera.K, (640, 480)) for k, _ in r.retrieved[:3]])
    assert np.mean([any(h) for h in hits]) >= 0.9  # measured 1.0


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_covariance_is_honest(office, matcher):
    """Errors within 3 sigma for >= 80 % of the poses (6-DoF NEES of the scaled first-order covariance)."""
    m, q, frames = office
    loc = Localizer(m, matcher)
    stats = []
    for f in frames:
        r = loc.localize(f.rgb, q.camera.K)
        if r.success:
            stats.append(nees(r.T_map_cam, f.T_world_cam, r.covariance))
    s = np.array(stats)
    assert len(s) >= 20 and np.mean((s[:, 1] <= 3.0) & (s[:, 2] <= 3.0)) >= 0.8


def test_two_identical_places_are_ambiguous_not_wrong(matcher):
    """One poster on two walls 4 m apart: a view of only one of them fits both places equally; the localizer
    must refuse (ambiguous) or be right, never pick the wrong wall."""
    photo = load_photos(names=("cards",))["cards"]
    texture = np.ascontiguousarray(photo[40:440, 20:620])
    scene = Scene([Plane((3, 1.5, 2.2), (0, -3, 0), (0, 0, -2.2), texture, "poster_a"),
                   Plane((3, 5.5, 2.2), (0, -3, 0), (0, 0, -2.2), texture, "poster_b")])
    cam = Camera()
    poses = [pose_from_ypr((0.0, y + dy, 1.1), 0.0, 0.0) for y in (0.0, 4.0) for dy in np.linspace(-0.6, 0.6, 7)]
    seq = Sequence(scene, cam, [(i, T) for i, T in enumerate(poses)])
    builder = MapBuilder(matcher, GlobalDescriptor())
    for f in seq:
        builder.add_frame(f.rgb, f.T_world_cam, cam.K, f.stamp_ns, f.depth)
    loc = Localizer(builder.build(), matcher, conf={"top_k": 20, "max_keyframes_matched": 10})
    for y in (0.1, 4.1):
        T = pose_from_ypr((0.3, y, 1.1), 0.05, 0.0)
        rgb, _ = scene.render(T, cam)
        r = loc.localize(rgb, cam.K)
        if r.success:
            assert errors(r.T_map_cam, T)[0] < 0.1, r.reason
        else:
            assert "ambiguous" in r.reason


@pytest.mark.slow
def test_a_photo_the_map_holds_twice_is_ambiguous_not_wrong(matcher):
    """Every wrong global pose left on the tune and retired report seeds (254, 124, 8004, 8009) was this: a view
    filled by a photo that the map holds twice, on two walls 90 deg apart, the copy the camera does not see mapped
    closer and better. Here a corner with the same poster on both walls, poster A mapped from 1-1.6 m, poster B
    only from 3.5-4.5 m: views of B from 0.9 m go to A, 3 m / 90 deg off with 600 inliers, when nothing else is
    checked. The map holds the copy (its own descriptors of the two posters match: 146-255 map points agree with
    one rigid motion), so with copy_check (off by default: it also refuses right views of photos hung twice) a view
    on that plane alone is refused as ambiguous, never wrong."""
    photos = load_photos(names=("board", "building", "street"))
    scene = Scene([Plane((3, 3, 2.5), (0, -6, 0), (0, 0, -2.5), np.ascontiguousarray(photos["building"]), "wall1"),
                   Plane((-3, 3, 2.5), (6, 0, 0), (0, 0, -2.5), np.ascontiguousarray(photos["street"]), "wall2"),
                   Plane((2.99, 1.0, 1.8), (0, -1.2, 0), (0, 0, -0.9), photos["board"], "poster_a"),
                   Plane((-1.0, 2.99, 1.8), (1.2, 0, 0), (0, 0, -0.9), photos["board"], "poster_b")])
    cam = Camera()
    poses = [look_at((3 - d, 0.4 + dy, 1.35), (3, 0.4 + dy / 2, 1.35))
             for d in (1.0, 1.3, 1.6) for dy in (-0.3, 0, 0.3)]
    poses += [look_at((-0.4 + dx, 3 - d, 1.35), (-0.4 + 0.3 * dx, 3, 1.35)) for d in (3.5, 4.0, 4.5)
              for dx in (-1.5, -0.5, 1.0)]
    builder = MapBuilder(matcher, GlobalDescriptor())
    for f in Sequence(scene, cam, [(i, T) for i, T in enumerate(poses)]):
        builder.add_frame(f.rgb, f.T_world_cam, cam.K, f.stamp_ns, f.depth)
    m = builder.build()
    views = [look_at((-0.4 + dx, 2.1, 1.35), (-0.4, 3, 1.35)) for dx in (-0.2, 0.0, 0.2)]
    images = [scene.render(T, cam, gain=0.8, gamma=1.1)[0] for T in views]
    unchecked = [Localizer(m, matcher, conf={"copy_check": False}).localize(rgb, cam.K) for rgb in images]
    assert all(r.success and errors(r.T_map_cam, T)[0] > 2.5 for r, T in zip(unchecked, views))  # the failure
    for rgb, T in zip(images, views):
        r = Localizer(m, matcher, conf={"copy_check": True}).localize(rgb, cam.K)
        assert not r.success and "copy_check" in r.reason and r.stats["copy_consistent"] >= 20, r.reason


def test_implausible_poses_are_refused(office, matcher):
    """A map of a ground robot's camera: a pose 2 m above its keyframes is refused as implausible."""
    m, q, frames = office
    loc = Localizer(m, matcher)
    f = frames[3]
    r = loc.localize(f.rgb, q.camera.K)
    assert r.success
    up = make_T(np.eye(3), [0.0, 0.0, 2.0]) @ r.T_map_cam
    assert "implausible" in loc._implausible(up, list(r.support))
    assert loc._implausible(r.T_map_cam, list(r.support)) == ""
    relaxed = Localizer(m, matcher, conf={"max_height_change_m": 0.0})
    assert relaxed._implausible(up, list(r.support)) == ""


def test_configuration_is_checked(office, matcher):
    m, _, _ = office
    with pytest.raises(ValueError, match="unknown configuration keys"):
        Localizer(m, matcher, conf={"top_kk": 3})
    with pytest.raises(ValueError, match="guided_min_similarity must be finite"):
        Localizer(m, matcher, conf={"guided_min_similarity": float("nan")})
    with pytest.raises(ValueError, match="top_k = 0 is below its minimum"):
        Localizer(m, matcher, conf={"top_k": 0})
    with pytest.raises(ValueError, match="retrieval 'global' needs a global descriptor"):
        Localizer(m, matcher, conf={"retrieval": "global"})


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_the_map_point_cache_is_bounded(office, matcher):
    """A long run visits every keyframe of a large map: the prepared map points are an LRU of point_cache
    keyframes, and a small cache gives the same poses."""
    m, _, queries = office
    small, full = Localizer(m, matcher, conf={"point_cache": 4}), Localizer(m, matcher)
    K = office[1].camera.K
    for f in queries[:6]:
        a, b = small.localize(f.rgb, K), full.localize(f.rgb, K)
        assert a.success == b.success and (not a.success or np.allclose(a.T_map_cam, b.T_map_cam, atol=1e-6))
        assert len(small._points) <= 4
    assert len(full._points) > 4


def test_a_blank_image_gives_no_pose_and_says_why(office, matcher):
    m, q, _ = office
    r = Localizer(m, matcher).localize(np.zeros((480, 640, 3), np.uint8), q.camera.K)
    assert not r.success and "keypoints in the image" in r.reason


# ---- integrity: calibration, correlated matches, priors without odometry ----------------------------------------

def test_a_wrong_calibration_is_refused_not_localized(office, matcher):
    """camera_info with the focal length doubled (plausible, wrong): measured before the check, poses metres off
    with hundreds of inliers. The map's calibration is known: the query says why it is refused; the same camera
    at half the resolution (K scaled with the image) is the same calibration and passes."""
    m, q, frames = office
    loc = Localizer(m, matcher)
    f = frames[3]
    K2 = q.camera.K.copy()
    K2[0, 0] *= 2.0
    K2[1, 1] *= 2.0
    r = loc.localize(f.rgb, K2)
    assert not r.success and "calibration differs from the map's" in r.reason and "fx" in r.reason
    K_half = q.camera.K.copy()
    K_half[:2] *= 0.5
    assert loc.calibration_problem(K_half, (320, 240)) == ""
    assert Localizer(m, matcher, conf={"max_calibration_change": 0.0}).calibration_problem(K2, (640, 480)) == ""


def test_correlated_matches_do_not_shrink_the_covariance():
    """Each correspondence repeated ten times (a dense matcher's neighbours, the same point at several scales) is
    the same evidence: with cell weights the covariance stays that of the single set; without, it shrinks 10x."""
    rng = np.random.default_rng(3)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    X = np.c_[rng.uniform(-2, 2, (80, 2)), rng.uniform(3, 6, 80)]
    x = X[:, :2] / X[:, 2:] * 500.0 + [320, 240]
    T = np.eye(4)
    one = pose_covariance(T, X, x, K, 1.0, weights=cell_weights(x, 4.0))
    Xr, xr = np.repeat(X, 10, axis=0), np.repeat(x, 10, axis=0) + rng.normal(0, 0.3, (800, 2))
    weighted = pose_covariance(T, Xr, xr, K, 1.0, weights=cell_weights(xr, 4.0))
    plain = pose_covariance(T, Xr, xr, K, 1.0)
    assert np.allclose(np.diag(weighted), np.diag(one), rtol=0.35)
    assert np.allclose(np.diag(plain) * 10, np.diag(one), rtol=0.35)
    # the ambiguity test weighs the same evidence: 800 matches are < 160 observations (noise crosses cell borders),
    # as many as the weights sum to
    assert occupied_cells(x, 4.0) == 80 and occupied_cells(xr, 4.0) < 160
    assert occupied_cells(xr, 4.0) == round(cell_weights(xr, 4.0).sum())
    assert occupied_cells(x, 0.0) == len(x) and occupied_cells(np.zeros((0, 2)), 4.0) == 0


def test_nearby_basins_with_as_much_evidence_widen_the_covariance(matcher):
    """Repeated texture: two candidates' hypotheses settle 0.15 m / 3 deg apart with 120 and 110 cells of evidence.
    The kept pose's covariance must then cover the other (within one sigma); a basin that clearly loses and one within
    the uncertainty change nothing. (Another place is the rival test's business: the global search passes only
    poses at the same place, tracking from shifted priors every pose found, however far.)"""
    loc = Localizer(None, matcher)
    cov = np.diag([0.01 ** 2] * 3 + [np.radians(0.2) ** 2] * 3)
    T0 = make_T(np.eye(3), [1.0, 2.0, 1.2])

    def result(dx, deg, evidence):
        T = perturb_pose(T0, [dx[0], dx[1], dx[2], 0.0, 0.0, np.radians(deg)])
        return LocalizationResult(True, T, cov.copy(), evidence=evidence)

    best = result((0, 0, 0), 0.0, 120)
    near, losing, same = (result((0.15, 0, 0), 3.0, 110), result((0, 0.15, 0), 0.0, 40),
                          result((0.002, 0, 0), 0.0, 125))
    loc._cover_near_basins(best, [near, losing, same])
    assert best.stats["near_basins"] == 1 and "widened" in best.reason
    assert nees(near.T_map_cam, best.T_map_cam, best.covariance)[0] <= 1.0 + 1e-9  # the other basin at 1 sigma
    assert best.covariance[1, 1] == pytest.approx(cov[1, 1])  # no widening towards the losing basin
    assert best.stats["position_sigma_m"] > 0.15
    # basins far enough apart that 3 sigma reaches a wrong pose (1 m / 10 deg): no answer
    refused = result((0, 0, 0), 0.0, 120)
    loc._cover_near_basins(refused, [result((0.1, 0, 0), 8.0, 115)])
    assert not refused.success and "ambiguous" in refused.reason and not np.any(np.isfinite(refused.covariance))
    untouched = result((0, 0, 0), 0.0, 120)
    loc._cover_near_basins(untouched, [losing, same])
    assert untouched.stats["near_basins"] == 0 and np.array_equal(untouched.covariance, cov)


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_a_pose_must_hold_matches_where_the_map_expects_them(office, matcher):
    """min_evidence_share: a dense matcher matches every textured cell, so a pose one tile off on a repeated wall
    (nemf_dense on tune seed 100: 1.11 m off at sigma 2 cm) leaves cells empty that the map projects into (0.58 of
    them held inliers; its right poses 0.77-1.00). The share is measured on every pose, checked per backend."""
    m, q, frames = office
    loc = Localizer(m, matcher)
    assert loc.min_evidence_share() == 0.0  # sparse keypoints: no check (right orb_teblid poses down to 0.07)
    shares, found = [], []
    for f in frames[5:20:3]:
        r = loc.localize(f.rgb, q.camera.K)
        if r.success:
            shares.append(r.stats["evidence_share"])
            found.append(f)
            t, rot = errors(r.T_map_cam, f.T_world_cam)
            assert t < 0.05 and rot < 2.0
    assert shares and all(0.0 < s <= 1.0 for s in shares), shares
    strict = Localizer(m, matcher, conf={"min_evidence_share": min(1.0, max(shares) + 0.05)})
    for f in frames[5:20:3]:
        r = strict.localize(f.rgb, q.camera.K)
        assert not r.success and r.reason
    r = strict._verify(_query(strict, found[0], q.camera.K), found[0].T_world_cam, "global")  # at the truth
    assert not r.success and "cells the map projects into" in r.reason, r.reason


def test_a_pose_the_matcher_contradicts_is_refused(office, matcher):
    """matcher_check: the global search proposes poses from nearest-neighbour votes and verifies them with guided
    matches; on a wall of fine stripes both settled one period off (xfeat_lighterglue, tune seed 124: 1.28 m / 27
    deg at sigma 0.9 cm). LighterGlue's own matches with the pose's strongest keyframe: 0 of 13 agreed with it, and
    at least 13 or 45 % with each right pose of the tune seeds. Here the configured matcher's matches agree with
    a found pose and contradict the same pose moved 0.4 m."""
    import copy

    m, q, frames = office
    loc = Localizer(m, matcher)
    r, f = next((r, f) for r, f in ((loc.localize(f.rgb, q.camera.K), f) for f in frames[5:20:3]) if r.success)
    # a global fix was checked, and the matcher supports it
    assert r.stats["matcher_agree"] >= 12  # orb_teblid's ratio test: 69 of 142 matches, the others outliers
    assert r.timings_ms["matcher_check"] > 0
    moved = copy.deepcopy(r)
    moved.T_map_cam = r.T_map_cam @ make_T(np.eye(3), [0.4, 0.0, 0.0])
    loc._matcher_check(_query(loc, f, q.camera.K), moved)
    assert not moved.success and not np.isfinite(moved.covariance).any()
    assert "contradicted by the matcher" in moved.reason and moved.stats["matcher_agree"] < 12, moved.reason
    unchecked = Localizer(m, matcher, conf={"matcher_check": False}).localize(f.rgb, q.camera.K)
    assert unchecked.success and "matcher_agree" not in unchecked.stats


def test_a_pose_on_one_small_patch_is_refused_without_odometry(office, matcher):
    """min_guess_coverage: a pose from a guess whose inliers' bounding box spans a small share of the image rests on
    one patch, which may be a copy of one the map holds elsewhere (retired seed 4011, orb_teblid: 2.3 m / 180 deg
    off at sigma 1.1 cm on inliers over 6 % of the image; right poses of the tune seeds >= 12.8 %). A fix reports
    its coverage; the same query is refused, saying why, when its coverage is under the threshold, and a pose
    tracked from an odometry prior is not held to it."""
    m, q, frames = office
    loc = Localizer(m, matcher)
    r, f = next((r, f) for r, f in ((loc.localize(f.rgb, q.camera.K), f) for f in frames[5:20:3]) if r.success)
    assert 0.1 <= r.stats["coverage"] <= 1.0
    strict = Localizer(m, matcher, conf={"min_guess_coverage": min(1.0, r.stats["coverage"] + 0.01)})
    refused = strict.localize(f.rgb, q.camera.K)
    assert not refused.success and "one small patch" in refused.reason, refused.reason
    tracked = strict.localize(f.rgb, q.camera.K, prior_T_map_cam=r.T_map_cam, prior_covariance=r.covariance)
    assert tracked.success and tracked.mode == "tracking", tracked.reason


def test_a_rival_that_explains_another_part_of_the_view_refuses_the_pose(office, matcher):
    """max_rival_exclusive_share: retired seed 5011 held a poster that the map also holds 1.3 m away, well mapped
    there; the wrong place won by 107 against 61 cells of inliers (3.6 sigma), but 43 of the rival's 61 cells (the
    true pose's, on the wall beside the poster) held none of the wrong pose's inliers. Two places each explaining
    their own part of the view are not told apart by the counts. Here, on a right office fix: a rival whose
    inliers are the pose's own keypoints (repeated structure re-explaining the same features) leaves the pose
    alone; one whose inliers lie in cells the pose has none in refuses it, saying why."""
    import dataclasses

    m, q, frames = office
    loc = Localizer(m, matcher)
    r, f = next((r, f) for r, f in ((loc.localize(f.rgb, q.camera.K), f) for f in frames[5:20:3]) if r.success)
    query = _query(loc, f, q.camera.K)
    cell = loc.conf["covariance_cell_px"]
    own = {tuple(c) for c in np.floor(query.kp[r.inlier_query] / cell).astype(int).tolist()}
    elsewhere = np.array([i for i in range(len(query.kp))
                          if tuple(np.floor(query.kp[i] / cell).astype(int).tolist()) not in own])
    same = dataclasses.replace(r, inlier_query=r.inlier_query[: len(r.inlier_query) // 2],
                               evidence=r.evidence // 2, T_map_cam=r.T_map_cam.copy(), stats=dict(r.stats))
    assert loc._exclusive_evidence(query, same, r) == 0
    kept = dataclasses.replace(r, stats=dict(r.stats))
    loc._refuse_split_view(kept, same, loc._exclusive_evidence(query, same, r))
    assert kept.success
    n_cells = len({tuple(c) for c in np.floor(query.kp[elsewhere] / cell).astype(int).tolist()})
    assert n_cells >= loc.conf["min_rival_exclusive"]
    other = dataclasses.replace(r, inlier_query=elsewhere, evidence=n_cells, T_map_cam=r.T_map_cam.copy())
    other.T_map_cam[:3, 3] += [1.3, 0.0, 0.0]
    exclusive = loc._exclusive_evidence(query, other, r)
    assert exclusive == n_cells
    refused = dataclasses.replace(r, stats=dict(r.stats))
    loc._refuse_split_view(refused, other, exclusive)
    assert not refused.success and "explains another part of the view" in refused.reason, refused.reason
    assert "1.3 m away" in refused.reason and not np.isfinite(refused.covariance).any()


def test_a_pose_that_wins_only_where_the_rival_map_says_nothing_is_refused(office, matcher):
    """max_rival_common_share: retired report seed 6004 had the same photo on two facing walls; the copy seen
    frontally, densely mapped, won by 205 against 135 cells of inliers, while in the cells both places' maps project
    points into the true place held 130 and the wrong one 115. Here, on a right office fix: a rival holding half the
    pose's inliers (same map, so the same predicted cells) leaves it alone; one holding all of them refuses it."""
    import dataclasses

    m, q, frames = office
    loc = Localizer(m, matcher)
    r, f = next((r, f) for r, f in ((loc.localize(f.rgb, q.camera.K), f) for f in frames[5:20:3]) if r.success)
    query = _query(loc, f, q.camera.K)
    half = dataclasses.replace(r, inlier_query=r.inlier_query[::2], evidence=r.evidence // 2,
                               T_map_cam=r.T_map_cam.copy(), stats=dict(r.stats))
    kept = dataclasses.replace(r, stats=dict(r.stats))
    loc._refuse_unresolved_rival(query, kept, half, 0)
    assert kept.success and kept.stats["rival_common_evidence"] < kept.stats["common_evidence"]
    assert kept.stats["common_evidence"] == r.evidence  # every inlier cell lies where the map predicts
    twin = dataclasses.replace(r, T_map_cam=r.T_map_cam.copy(), stats=dict(r.stats))
    refused = dataclasses.replace(r, stats=dict(r.stats))
    loc._refuse_unresolved_rival(query, refused, twin, 0)
    assert not refused.success and "where both maps predict matches" in refused.reason, refused.reason
    assert not np.isfinite(refused.covariance).any()
    off = Localizer(m, matcher, conf={"max_rival_common_share": 0.0})
    untouched = dataclasses.replace(r, stats=dict(r.stats))
    off._refuse_unresolved_rival(query, untouched, twin, 0)
    assert untouched.success and "common_evidence" not in untouched.stats


def test_a_tracked_pose_beside_the_true_basin_gives_way_to_one_solved_without_the_prior(office, matcher):
    """tracking_basin_keyframes: on tune seeds 185 and 187 (continuous mode, drifting odometry) a fix 7-10 cm off,
    moved by odometry, put the guided search beside the true basin; the tracked pose settled there, 16 cm off at
    sigma 1 cm with 137 inliers (the truth verifies with 575), and anchored the next frames. Here a right office
    fix moved 8 cm / 1 deg with a third of its evidence stands for that pose: the pose solved from
    nearest-neighbour matches with its strongest keyframes replaces it; a right tracked pose is kept as it is."""
    import dataclasses

    m, q, frames = office
    loc = Localizer(m, matcher)
    r, f = next((r, f) for r, f in ((loc.localize(f.rgb, q.camera.K), f) for f in frames[5:20:3]) if r.success)
    query = _query(loc, f, q.camera.K)
    right = loc._verify(query, r.T_map_cam, "tracking")
    assert right.success
    kept = loc._tracking_basins(query, right, 15.0)
    # tracked again from priors moved 8 px along its least certain direction, it comes back: nothing widened
    assert kept is right and kept.stats["near_basins"] == 0 and kept.stats["shifted_priors_verified"] == 2
    moved = perturb_pose(right.T_map_cam, [0.08, 0.0, 0.0, 0.0, 0.0, np.radians(1.0)])
    beside = dataclasses.replace(right, T_map_cam=moved, evidence=right.evidence // 3, stats=dict(right.stats))
    found = loc._tracking_basins(query, beside, 15.0)
    assert found is not beside and found.success and "solved without the prior" in found.stats["tracking_basin"]
    t, rot = errors(found.T_map_cam, f.T_world_cam)
    assert t < 0.03 and rot < 1.0, (t, rot)
    off = Localizer(m, matcher, conf={"tracking_basin_keyframes": 0, "tracking_shift_px": 0.0})
    prior = perturb_pose(f.T_world_cam, [0.03, -0.01, 0.0, 0.0, 0.0, np.radians(1.0)])
    assert "near_basins" not in off._track(query, prior, 15.0).stats


def _query(loc, frame, K):
    from match_ros.core.relocalization.localizer import _Query
    return _Query(loc.matcher.extract(frame.rgb), K, (frame.rgb.shape[1], frame.rgb.shape[0]))


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_a_stale_prior_without_odometry_is_not_trusted(office, matcher):
    """Continuous mode without odometry (the node's default when none is on /tf): measured before, poses tracked
    from the last fix drifted to 2 m / 58 deg at sigma 2 cm. A last fix is a prior only while it is young, and a
    pose tracked from it needs the retrieval's agreement; the state says which prior each frame used."""
    m, q, _ = office
    sharp = [i for i in range(0, 300) if q.blur[i] is None]
    tracker = ContinuousLocalizer(Localizer(m, matcher), {"max_fix_age_s": 1.0})
    f0 = q[sharp[0]]
    r = tracker.localize(f0.rgb, q.camera.K, f0.stamp_ns)
    assert r.success and r.stats["prior"] == "none"
    # 0.33 s later (a 3 Hz query): tracked from the last fix, confirmed by the retrieval
    f1 = q[sharp[0] + 10]
    prior, source, age, confirmed, cov = tracker.prior(f1.stamp_ns, None)
    assert source == "last fix" and not confirmed and cov is None and age == pytest.approx(10 / 30, abs=1e-3)
    # 5 s later: the last fix is no prior, the frame is searched globally
    late = q[sharp[0]].stamp_ns + 5 * 10**9
    assert tracker.prior(late, None)[1] == "none"
    # by default (max_fix_age_s 0) never: without odometry every frame is searched globally
    default = ContinuousLocalizer(Localizer(m, matcher))
    assert default.localize(f0.rgb, q.camera.K, f0.stamp_ns).success
    assert default.prior(f0.stamp_ns + 1, None)[1] == "none"
    # a last fix 0.7 m / 20 deg off the camera (as after frames were dropped): never a wrong pose
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    for i in sharp[5:60:6]:
        f = q[i]
        tracker.last_fix = make_T(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), [0.5, 0.5, 0.0]) @ f.T_world_cam
        tracker.last_fix_ns, tracker.fail_streak = f.stamp_ns - 300_000_000, 0
        r = tracker.localize(f.rgb, q.camera.K, f.stamp_ns)
        if r.success:
            t, rot = errors(r.T_map_cam, f.T_world_cam)
            assert t < 0.25 and rot < 5.0, (i, t, rot, r.mode, r.stats.get("prior"), r.reason)


@pytest.mark.slow
def test_a_pose_tracked_from_a_last_fix_onto_look_alike_points_is_searched_again():
    """A distro check (odometry_relocalize at 1x, the odometry late): a frame 0.1 s after a fix, tracked from it
    without odometry, settled 0.24 m / 11 deg off at sigma 3 cm on 45 inliers, 31 of which match clearly better
    elsewhere in the map. Such a pose is refused (max_elsewhere_share) and the frame searched globally. Same room,
    same 45-frame xfeat_lighterglue map and changed-light 30 Hz run as there (match_ros_bag_write --photometric):
    each frame tracked from the fix 3 frames before. Measured without the rule: 11 of these 12 frames fail tracking
    (the camera turns fast) and are found globally, one (start 38) tracks onto 65 inliers 0.11 m / 7.4 deg off, 52
    of them better elsewhere (the check's own bag: 3 of 87)."""
    from match_ros.sim import make_sequence

    matcher = build_matcher("xfeat_lighterglue", {"max_keypoints": 1024})
    seq = make_sequence("room", n_frames=45, seed=0)
    builder = MapBuilder(matcher, GlobalDescriptor())
    for f in seq:
        builder.add_frame(f.rgb, f.T_world_cam, seq.camera.K, f.stamp_ns, f.depth)
    m = builder.build()
    queries = make_sequence("room", n_frames=90, seed=0, photometric=True)
    refused = 0
    for start in range(32, 44):
        tracker = ContinuousLocalizer(Localizer(m, matcher), {"max_fix_age_s": 0.25})  # the default before
        a, b = queries[start], queries[start + 3]
        assert tracker.localize(a.rgb, queries.camera.K, a.stamp_ns).success
        r = tracker.localize(b.rgb, queries.camera.K, b.stamp_ns)
        assert r.success, r.reason  # the global search finds it
        t, rot = errors(r.T_map_cam, b.T_world_cam)
        assert t < 0.05 and rot < 2.0, (start, t, rot, r.stats.get("prior"), r.stats.get("elsewhere"), r.reason)
        if r.stats["prior"] == "last fix (failed)":  # and the status can say why
            assert r.mode == "global" and r.stats["tracking_failed"], r.stats
            refused += 1
    print(f"frames whose pose tracked from the last fix failed or was refused, then found globally: {refused} of 12")


def _tracker_after_a_fix(office, matcher, last_frame):
    """(queries, sharp frame indices in 40..last_frame, a ContinuousLocalizer fixed on the first of them with
    odometry, T_odom_map of that odometry, the first frame)."""
    m, q, _ = office
    sharp = [i for i in range(40, last_frame) if q.blur[i] is None]
    tracker = ContinuousLocalizer(Localizer(m, matcher))
    T_odom_map = make_T(np.eye(3), [1.0, 2.0, 0.0])
    f0 = q[sharp[0]]
    assert tracker.localize(f0.rgb, q.camera.K, f0.stamp_ns, T_odom_map @ f0.T_world_cam).success
    return q, sharp, tracker, T_odom_map, f0


def test_odometry_prior_and_a_time_jump(office, matcher):
    """With odometry the map -> odom of the last fix is the prior ("odometry"); a stamp older than the last one
    (a bag restarted) clears the state."""
    q, sharp, tracker, T_odom_map, f0 = _tracker_after_a_fix(office, matcher, 120)
    f1 = q[sharp[2]]
    r = tracker.localize(f1.rgb, q.camera.K, f1.stamp_ns, T_odom_map @ f1.T_world_cam)
    assert r.success and r.mode == "tracking" and r.stats["prior"] == "odometry"
    assert errors(r.T_map_cam, f1.T_world_cam)[0] < 0.05
    assert np.allclose(tracker.T_map_odom, np.linalg.inv(T_odom_map), atol=0.05)
    r = tracker.localize(f0.rgb, q.camera.K, f0.stamp_ns - 10**9)
    assert "reset" in r.stats and r.stats["prior"] == "none" and tracker.T_map_odom is None


def test_a_global_fix_that_contradicts_the_odometry_waits_for_a_second(office, matcher):
    """A wrong global fix taken as map -> odom would steer every later frame (tracked from a confirmed prior). A
    global fix 2 m from the odometry's prediction (here the odometry jumped) is held back; the next fix that
    implies the same map -> odom is accepted and the state follows it."""
    q, sharp, tracker, T_odom_map, _ = _tracker_after_a_fix(office, matcher, 160)
    jumped = make_T(np.eye(3), [2.0, 0.0, 0.0]) @ T_odom_map  # the odometry jumps 2 m
    results = []
    for i in sharp[3:12:3]:
        f = q[i]
        results.append((tracker.localize(f.rgb, q.camera.K, f.stamp_ns, jumped @ f.T_world_cam), f))
    first, f1 = results[0]
    assert not first.success and "held back" in first.reason, first.reason
    accepted = [(r, f) for r, f in results[1:] if r.success]
    assert accepted, [r.reason for r, _ in results]
    r, f = accepted[0]
    assert errors(r.T_map_cam, f.T_world_cam)[0] < 0.05
    assert np.allclose(tracker.T_map_odom[:3, 3], np.linalg.inv(jumped)[:3, 3], atol=0.05)


def test_across_an_odometry_break_a_global_fix_is_taken_at_once(office, matcher):
    """visual_odometry lost track, restarted from the pose it held and said so (its covariance jumped on ~/odom: a
    break). Its prediction across the break is the stale pose (in a distro check at 1x the right fix was refused as
    0.90 m / 123 deg from it and held back while the bag ended): the frame after the break is searched without the
    odometry and its fix sets map -> odom at once; the frames after it are tracked from the odometry again."""
    q, sharp, tracker, T_odom_map, _ = _tracker_after_a_fix(office, matcher, 160)
    jumped = make_T(np.eye(3), [2.0, 0.0, 0.0]) @ T_odom_map  # restarted 2 m from where it should be
    f1, f2 = q[sharp[3]], q[sharp[6]]
    tracker.note_odometry_break(f1.stamp_ns - 1)
    r = tracker.localize(f1.rgb, q.camera.K, f1.stamp_ns, jumped @ f1.T_world_cam)
    assert r.success and r.mode == "global" and "odometry_broke" in r.stats, r.reason
    assert errors(r.T_map_cam, f1.T_world_cam)[0] < 0.05
    assert np.allclose(tracker.T_map_odom[:3, 3], np.linalg.inv(jumped)[:3, 3], atol=0.05)
    r = tracker.localize(f2.rgb, q.camera.K, f2.stamp_ns, jumped @ f2.T_world_cam)
    assert r.success and r.stats["prior"] == "odometry" and "odometry_broke" not in r.stats
    assert errors(r.T_map_cam, f2.T_world_cam)[0] < 0.05
    # a break before the fix behind map -> odom changes nothing
    tracker.note_odometry_break(f1.stamp_ns - 2)
    assert not tracker.odometry_broken(f2.stamp_ns + 5)
    tracker.note_odometry_break(f2.stamp_ns + 3)
    assert not tracker.odometry_broken(f2.stamp_ns + 2) and tracker.odometry_broken(f2.stamp_ns + 5)
    assert tracker.prior(f2.stamp_ns + 5, jumped @ f2.T_world_cam)[1] != "odometry"


def test_a_pose_the_odometry_cannot_explain_is_not_integrated(office, matcher):
    """Measured on the integrity benchmark: poses tracked from an odometry prior locked onto a wrong basin 0.3 m /
    10 deg off, inside the fixed max_prior_deviation_* gates. The odometry's prediction carries a covariance (the
    fix's, moved along, plus drift per metre): a fix that the odometry says is 0.2 m off right after the last fix
    (an odometry that jumped, or a wrong pose) is not integrated at once, though it is well inside 0.5 m / 10 deg;
    a second fix that implies the same map -> odom is accepted."""
    q, sharp, tracker, T_odom_map, f0 = _tracker_after_a_fix(office, matcher, 160)
    f1 = q[sharp[1]]
    # the prediction's covariance: the fix's plus 5 % of the distance moved (and 2 deg per metre)
    pred, source, _, confirmed, cov = tracker.prior(f1.stamp_ns, T_odom_map @ f1.T_world_cam)
    assert source == "odometry" and confirmed and cov is not None
    moved = float(np.linalg.norm(f1.T_world_cam[:3, 3] - f0.T_world_cam[:3, 3]))
    assert np.sqrt(np.linalg.eigvalsh(cov[:3, :3])).max() < 0.05 * moved + 0.05
    jumped = make_T(np.eye(3), [0.2, 0.0, 0.0]) @ T_odom_map  # the odometry is suddenly 0.2 m off
    results = [(tracker.localize(q[i].rgb, q.camera.K, q[i].stamp_ns, jumped @ q[i].T_world_cam), q[i])
               for i in sharp[1:10:2]]
    first, _ = results[0]
    assert not first.success and "held back" in first.reason and "chi2" in first.reason, first.reason
    accepted = [(r, f) for r, f in results[1:] if r.success]
    assert accepted, [r.reason for r, _ in results]
    for r, f in accepted:  # never the odometry's wrong prediction: the camera where it is
        assert errors(r.T_map_cam, f.T_world_cam)[0] < 0.05
    assert np.allclose(tracker.T_map_odom[:3, 3], np.linalg.inv(jumped)[:3, 3], atol=0.05)


def test_the_odometry_reports_its_own_drift_where_it_exceeds_the_model(office, matcher):
    """visual_odometry publishes its covariance on ~/odom. Where it reports more drift since the fix than the
    per-metre model allows (a poor stretch), the prediction is that uncertain: an odometry 0.2 m off that says it may
    be (sigma 0.15 m) is not a contradiction, the frame is localized where it is and the pose does not lean on the
    prediction; a report of less drift than the model does not narrow it; the growth is rotated from odom to map."""
    q, sharp, tracker, T_odom_map, f0 = _tracker_after_a_fix(office, matcher, 160)
    f1 = q[sharp[1]]
    at_fix = np.diag([1e-4] * 3 + [1e-5] * 3)
    tracker._anchor = tracker._anchor[:3] + (at_fix,)  # the fix above had no report: give it one
    model = tracker.prior(f1.stamp_ns, T_odom_map @ f1.T_world_cam)[4]
    small = tracker.prior(f1.stamp_ns, T_odom_map @ f1.T_world_cam, at_fix + 1e-8 * np.eye(6))[4]
    assert np.allclose(small, model)
    grown = at_fix + np.diag([0.15 ** 2, 0.0, 0.0, 0.0, 0.0, 0.0])  # along odom's x axis
    wide = tracker.prior(f1.stamp_ns, T_odom_map @ f1.T_world_cam, grown)[4]
    x_in_map = tracker.T_map_odom[:3, :3] @ [1.0, 0.0, 0.0]
    assert x_in_map @ wide[:3, :3] @ x_in_map >= 0.15 ** 2 - 1e-9
    assert np.linalg.eigvalsh(wide - model).min() > -1e-12
    jumped = make_T(np.eye(3), [0.2, 0.0, 0.0]) @ T_odom_map  # 0.2 m off, as in the test above, but reported
    r = tracker.localize(f1.rgb, q.camera.K, f1.stamp_ns, jumped @ f1.T_world_cam, odom_covariance=grown)
    assert r.success and "held_back" not in r.stats, r.reason
    assert errors(r.T_map_cam, f1.T_world_cam)[0] < 0.05
    assert tracker._anchor[3] is grown  # the next prediction grows from this report


def test_backends_the_integrity_benchmark_does_not_vouch_for_are_named():
    """The relocalizer warns at start for a backend the integrity benchmark has not measured on its report seeds
    (or found unsafe on its tune seeds)."""
    from match_ros.core.relocalization.localizer import COVARIANCE_CALIBRATION, INTEGRITY_MEASURED, integrity_warning
    assert all(integrity_warning(m) == "" and m in COVARIANCE_CALIBRATION for m in INTEGRITY_MEASURED)
    assert integrity_warning("nemf_dense") == ""  # measured on the report seeds since the fifth session
    assert "not been measured" in integrity_warning("coam_xfeat") and "vouched" in integrity_warning("a2net_align")


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
def test_the_plain_reference_pipeline(office, matcher):
    """The benchmarks' reference column (evaluation.baselines.PlainPipeline: retrieval, the matcher against the
    short-list, one PnP over the pooled matches of the best keyframes, no checks) localizes the changed day
    against the ground truth and says why when it cannot."""
    from match_ros.evaluation.baselines import PlainPipeline

    m, q, frames = office
    plain = PlainPipeline(Localizer(m, matcher))
    results = [(plain.localize(f.rgb, q.camera.K), f) for f in frames]
    err = np.array([errors(r.T_map_cam, f.T_world_cam) if r.success else (np.inf, np.inf) for r, f in results])
    # measured (orb_teblid, 30 queries, 2026-12-06): 28 poses, 26 within 5 cm / 2 deg, one beyond 25 cm / 5 deg (the
    # package's own localizer on the same queries: 23 poses, all within 5 cm / 2 deg, none beyond)
    assert np.mean((err[:, 0] < 0.05) & (err[:, 1] < 2.0)) >= 0.7, err
    for r, _ in results:
        assert r.mode == "plain" and r.reason and r.stats.get("pooled_keyframes", 0) <= 3
        if r.success:
            assert r.num_inliers >= 40 and np.all(np.linalg.eigvalsh(r.covariance) > 0)
    blank = plain.localize(np.full((480, 640, 3), 128, np.uint8), q.camera.K)
    assert not blank.success and blank.reason
    with pytest.raises(ValueError):
        PlainPipeline(Localizer(m, matcher), pool=0)
