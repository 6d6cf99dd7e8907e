"""Photometric consistency of a relative motion (pure core) on rendered frames whose true motion is known."""
import numpy as np
import pytest

from match_ros.core.geometry.photometric import check_motion, perturbations, photometric_errors, support_mask
from match_ros.core.geometry.transforms import invert, make_T, perturb_pose
from match_ros.sim import make_sequence


@pytest.fixture(scope="module")
def room():
    return make_sequence("room", n_frames=12, seed=0)


def _pair(room, i, j):
    a, b = room[i], room[j]
    return a.rgb, a.depth, b.rgb, invert(a.T_world_cam) @ b.T_world_cam


@pytest.mark.parametrize("gap", [1, 5, 10])
def test_the_true_motion_beats_identity_and_every_perturbation(room, gap):
    ref, depth, query, T_true = _pair(room, 0, gap)
    check = check_motion(ref, depth, query, room.camera.K, T_true)
    assert check.pixels > 20000 and check.consistent
    assert check.estimate < 0.8 * check.perturbed.min()  # a clear minimum, not a tie
    assert check.identity_is_rival and check.estimate < 0.8 * check.identity  # the room turns 1.6 deg per frame


def test_identity_is_no_rival_within_half_a_step(room):
    """A still camera: the estimate (1 mm / 0.1 deg off identity) and identity are one motion at the check's
    resolution; identity does not count, the perturbations still do."""
    ref, depth, _, _ = _pair(room, 3, 3)
    nearly = perturb_pose(np.eye(4), [0.001, 0, 0, 0, np.radians(0.1), 0])
    check = check_motion(ref, depth, ref, room.camera.K, nearly)
    assert not check.identity_is_rival and check.identity < check.estimate and check.consistent
    assert not check_motion(ref, depth, ref, room.camera.K, perturb_pose(np.eye(4), [0.015, 0, 0, 0, 0, 0])).consistent


def test_a_wrong_motion_is_not_consistent(room):
    ref, depth, query, T_true = _pair(room, 2, 8)
    for delta in ([0.03, 0, 0, 0, 0, 0], [0, 0, 0, 0, np.radians(1.5), 0], [0, -0.02, 0.02, 0, 0, 0]):
        wrong = perturb_pose(T_true, delta)
        assert not check_motion(ref, depth, query, room.camera.K, wrong).consistent, delta
    # the error grows with the distance from the truth along one axis
    errors, _ = photometric_errors(ref, depth, query, room.camera.K,
                                   [perturb_pose(T_true, [d, 0, 0, 0, 0, 0]) for d in (0.0, 0.01, 0.02, 0.04)])
    assert np.all(np.diff(errors) > 0)


def test_all_motions_are_scored_on_the_same_pixels(room):
    ref, depth, query, T_true = _pair(room, 0, 4)
    K = room.camera.K
    far_off = make_T(np.eye(3), [5.0, 0, 0])  # moves every pixel out of the image
    errors, n = photometric_errors(ref, depth, query, K, [T_true, far_off])
    assert n == 0 and np.all(np.isnan(errors))
    mask = np.zeros(depth.shape, bool)
    mask[100:200, 100:300] = True
    _, n_masked = photometric_errors(ref, depth, query, K, T_true, mask=mask, stride=1)
    assert 0 < n_masked <= mask.sum()


def test_perturbations_and_support_mask():
    T = make_T(np.eye(3), [0.1, 0.2, 0.3])
    P = perturbations(T, 0.02, 1.0)
    assert P.shape == (12, 4, 4)
    assert np.allclose(P[0][:3, 3] - T[:3, 3], [0.02, 0, 0]) and np.allclose(P[1][:3, 3] - T[:3, 3], [-0.02, 0, 0])
    assert np.allclose(P[6][:3, 3], T[:3, 3]) and not np.allclose(P[6][:3, :3], np.eye(3))
    m = support_mask(np.array([[10.0, 20.0], [-5.0, 3.0]]), (48, 64), radius_px=3)
    assert m.shape == (48, 64) and m[20, 10] and m[23, 10] and m[20, 13] and not m[24, 10] and not m[20, 14]
    assert 21 <= m.sum() <= 37 and not m[:, :3].any()  # one disc; the point outside the image adds nothing


def test_bad_input_raises_value_error(room):
    ref, depth, query, T_true = _pair(room, 0, 1)
    K = room.camera.K
    with pytest.raises(ValueError, match="depth_ref"):
        photometric_errors(ref, depth[:-1], query, K, T_true)
    with pytest.raises(ValueError, match="motions"):
        photometric_errors(ref, depth, query, K, np.eye(3))
    with pytest.raises(ValueError, match="stride"):
        photometric_errors(ref, depth, query, K, T_true, stride=0)
    with pytest.raises(ValueError, match="mask"):
        photometric_errors(ref, depth, query, K, T_true, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError):
        check_motion(ref, depth, query, np.zeros((3, 3)), T_true)
