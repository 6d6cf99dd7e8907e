"""Poses in a valley: views that do not pin the pose, in procedural places (retired report seeds).

Stripes (seed 6011, 8-12.5 s): the camera faces a wall of stripes, and a valley of poses (decimetres sideways,
degrees of turn) verifies with as many inliers as the truth, each with its own stripe-aligned matches. Tracked from
the true pose, the guided search settles 5-19 cm / 1-6 deg off at a sigma of 1 cm (measured with
``tracking_shift_px`` 0); in continuous mode each such pose anchored the next frame's prior and the error grew (13 cm
/ 7 deg at sigma 1.3 cm, two integrity failures). ``tracking_shift_px`` tracks again from priors moved along the
pose's least certain direction; where those verify elsewhere as well, the pose is no better known than their spread.

Two clusters (seed 7000, 18.67 s): a dark view where only two small patches of texture show. Global search found a
pose 0.68 m / 27 deg off at sigma 3.5 cm / 1.5 deg with 64 cells of inliers (the truth has 63): sliding sideways
while turning back keeps both patches in place. ``global_shift_px`` tracks the global pose again from shifted
priors; they settle a decimetres-wide valley away with as much evidence, and the pose is refused.
Each builds its place's map (xfeat_lighterglue, about a minute on 2 cores, 0.6 GB of bags in a temporary folder).
"""
import numpy as np
import pytest

from match_ros.evaluation.reloc_metrics import nees

pytestmark = pytest.mark.slow  # renders a place and builds its map (slow tier)

SEED = 6011
VALLEY_SEED, VALLEY_S = 7000, (15.0, 22.0)  # two clusters of texture at 18.67 s, textured views around it
STRIPES_S = (8.0, 12.5)  # the query frames facing the striped wall (seconds after the first stamp)
# the frame at 7.5 s, at the stripes' edge, is left out of both sets: tracked 1.6 cm / 0.9 deg off at sigma 0.7 cm,
# it kept over 80 % of its guided matches (tracking_basin_max_ratio), so the check does not run there
EDGE_S = 7.5
FIRST_NS = 1_700_000_000_000_000_000


def _place(out, seed: int, seconds: tuple):
    """The place's xfeat_lighterglue map, its matcher and the query frames between ``seconds`` after the first."""
    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.relocalization.mapstore import Map
    from match_ros.sim.procedural import make_procedural_case, write_case_bags
    from match_ros.tools.bagframes import BagFrames
    from match_ros.tools.build_map import build_map_from_bag

    case = make_procedural_case(seed)
    map_bag, query_bag = write_case_bags(case, out / "cases", progress=False)
    build_map_from_bag(map_bag, out / "map.db", "xfeat_lighterglue", progress=False)
    m = Map.load(out / "map.db")
    frames = [f for f in BagFrames(query_bag, "auto", "auto", "", "auto")
              if seconds[0] <= (f.stamp_ns - FIRST_NS) * 1e-9 <= seconds[1]]
    return m, build_matcher(m.matcher_name, shared_conf(m.matcher_name), "cpu"), frames


@pytest.fixture(scope="module")
def striped(tmp_path_factory):
    return _place(tmp_path_factory.mktemp("striped"), SEED, (4.0, 14.0))


@pytest.fixture(scope="module")
def two_clusters(tmp_path_factory):
    return _place(tmp_path_factory.mktemp("two_clusters"), VALLEY_SEED, VALLEY_S)


def _within_3_sigma(r, f) -> bool:
    _, pos, rot = nees(r.T_map_cam, f.T_map_cam, r.covariance)
    return pos <= 3.0 and rot <= 3.0


def test_tracked_poses_on_stripes_are_refused_or_cover_their_error(striped):
    from match_ros.core.relocalization.localizer import Localizer

    m, matcher, frames = striped
    exact_map = {"map_position_sigma_m": 0.0, "map_rotation_sigma_deg": 0.0}  # the place's keyframe poses are exact
    checked = Localizer(m, matcher, None, exact_map)
    unchecked = Localizer(m, matcher, None, dict(exact_map, tracking_shift_px=0.0))
    on_stripes = [f for f in frames if STRIPES_S[0] <= (f.stamp_ns - FIRST_NS) * 1e-9 <= STRIPES_S[1]]
    elsewhere = [f for f in frames if f not in on_stripes and f.stamp_ns != FIRST_NS + int(EDGE_S * 1e9)]
    assert len(on_stripes) >= 8 and len(elsewhere) >= 8
    slid = 0
    for f in on_stripes:  # tracked from the true pose itself
        r = checked.localize(f.image, f.K, prior_T_map_cam=f.T_map_cam)
        assert not r.success or _within_3_sigma(r, f), (f.stamp_ns, r.reason)
        u = unchecked.localize(f.image, f.K, prior_T_map_cam=f.T_map_cam)
        slid += u.success and not _within_3_sigma(u, f)
    assert slid >= len(on_stripes) // 2  # without the check the valley shows: most poses beyond their 3 sigma
    for f in elsewhere:  # a textured view pins the pose: tracked, right and as certain as before
        r = checked.localize(f.image, f.K, prior_T_map_cam=f.T_map_cam)
        assert r.success and r.mode == "tracking", (f.stamp_ns, r.reason)
        t = np.linalg.norm(r.T_map_cam[:3, 3] - f.T_map_cam[:3, 3])
        assert t < 0.03 and _within_3_sigma(r, f), (f.stamp_ns, t)


def test_a_global_pose_that_slides_between_two_clusters_is_refused(two_clusters):
    from match_ros.core.relocalization.localizer import Localizer

    m, matcher, frames = two_clusters
    exact_map = {"map_position_sigma_m": 0.0, "map_rotation_sigma_deg": 0.0}
    checked = Localizer(m, matcher, None, exact_map)
    unchecked = Localizer(m, matcher, None, dict(exact_map, global_shift_px=0.0))
    valley = FIRST_NS + 18_666_666_667
    assert any(f.stamp_ns == valley for f in frames) and len(frames) >= 6
    kept = 0
    for f in frames:
        u = unchecked.localize(f.image, f.K)
        r = checked.localize(f.image, f.K)
        if f.stamp_ns == valley:  # without the check: decimetres off, far beyond its sigma
            assert u.success and np.linalg.norm(u.T_map_cam[:3, 3] - f.T_map_cam[:3, 3]) > 0.25
            assert not _within_3_sigma(u, f)
            assert not r.success and "nearby pose(s) fit as well" in r.reason, r.reason
        elif u.success:  # the textured views around it: the same right pose, with the check run or not
            assert r.success, (f.stamp_ns, r.reason)
            assert np.linalg.norm(r.T_map_cam[:3, 3] - f.T_map_cam[:3, 3]) < 0.03 and _within_3_sigma(r, f)
            kept += 1
    assert kept >= 4
