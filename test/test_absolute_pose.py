"""PnP, checks and covariance on synthetic 2D-3D data with known pose."""
import cv2
import numpy as np
import pytest

from match_ros.core.geometry.absolute_pose import (covariance_cover, evidence_where_both_predict, fuse_poses,
                                                   least_certain_shift, moved_covariance, pose_covariance,
                                                   pose_difference, pose_mahalanobis, solve_pnp)
from match_ros.core.geometry.camera import project, transform_points
from match_ros.core.geometry.transforms import invert, make_T, perturb_pose, rotation_error_deg

K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])


def _data(rng, n=400, outliers=0.3, noise=0.5):
    T_map_cam = make_T(cv2.Rodrigues(rng.normal(size=3) * 0.5)[0], rng.normal(size=3))
    x = rng.uniform([0, 0], [640, 480], (n, 2))
    z = rng.uniform(2, 6, n)
    X_cam = np.column_stack([(x - K[:2, 2]) / K[0, 0] * z[:, None], z])
    X_map = X_cam @ T_map_cam[:3, :3].T + T_map_cam[:3, 3]
    x_obs = x + rng.normal(scale=noise, size=x.shape)
    k = int(outliers * n)
    x_obs[:k] = rng.uniform([0, 0], [640, 480], (k, 2))
    return X_map, x_obs, T_map_cam, k


@pytest.mark.parametrize("seed", range(3))
def test_pnp_recovers_pose_and_flags_outliers(seed):
    rng = np.random.default_rng(seed)
    X, x, T_gt, k = _data(rng)
    r = solve_pnp(X, x, K, (640, 480))
    assert r.valid, r.reason
    assert np.linalg.norm(r.T_map_cam[:3, 3] - T_gt[:3, 3]) < 0.01
    assert rotation_error_deg(r.T_map_cam[:3, :3], T_gt[:3, :3]) < 0.2
    assert r.inliers[:k].mean() < 0.05 and r.inliers[k:].mean() > 0.95
    assert r.rmse_px < 1.0
    assert np.all(np.linalg.eigvalsh(r.covariance) > 0)


def test_covariance_matches_monte_carlo_spread():
    """The first-order covariance predicts the scatter of repeated solutions under pixel noise."""
    rng = np.random.default_rng(5)
    X, x_clean, T_gt, _ = _data(rng, n=150, outliers=0.0, noise=0.0)
    sigma = 1.0
    cov = pose_covariance(T_gt, X, x_clean, K, sigma)
    samples = []
    for _ in range(200):
        x = x_clean + rng.normal(scale=sigma, size=x_clean.shape)
        ok, rvec, tvec = cv2.solvePnP(X, x, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
        T = invert(make_T(cv2.Rodrigues(rvec)[0], tvec))
        dR = T[:3, :3] @ T_gt[:3, :3].T
        samples.append(np.r_[T[:3, 3] - T_gt[:3, 3], cv2.Rodrigues(dR)[0].ravel()])
    emp = np.cov(np.array(samples).T)
    ratio = np.diag(emp) / np.diag(cov)
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


def test_weak_or_degenerate_input_is_rejected_with_a_reason():
    rng = np.random.default_rng(1)
    X, x, _, _ = _data(rng, n=30)
    r = solve_pnp(X, x, K, (640, 480))
    assert not r.valid and "30 2D-3D" in r.reason
    X, x, _, _ = _data(rng, n=400, outliers=1.0)  # all random: no consistent pose
    r = solve_pnp(X, x, K, (640, 480))
    assert not r.valid and r.reason
    with pytest.raises(ValueError):
        solve_pnp(np.zeros((10, 3)), np.zeros((9, 2)), K, (640, 480))


def test_moved_covariance_matches_monte_carlo_of_a_moved_pose():
    """A fix's covariance carried along an exact motion (the odometry's prediction): sampled fixes moved by the
    same motion spread as moved_covariance says; the rotation error swings the position by the lever arm."""
    rng = np.random.default_rng(3)
    T_fix = make_T(cv2.Rodrigues(np.array([0.1, -0.3, 1.2]))[0], [1.0, 2.0, 0.5])
    motion = make_T(cv2.Rodrigues(np.array([0.0, 0.4, 0.0]))[0], [0.3, -0.1, 2.0])
    scale = np.r_[[0.02] * 3, [0.01] * 3]  # 2 cm, 0.6 deg, correlated
    A = rng.normal(size=(6, 6)) * 0.3
    cov = np.outer(scale, scale) * (np.eye(6) + A @ A.T)
    samples = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    moved = T_fix @ motion
    diffs = np.array([pose_difference(perturb_pose(T_fix, d) @ motion, moved) for d in samples])
    predicted = moved_covariance(cov, T_fix, moved)
    assert np.allclose(np.cov(diffs.T), predicted, atol=0.05 * np.abs(predicted).max())
    # the squared Mahalanobis distances of the samples average the 6 degrees of freedom
    m = [pose_mahalanobis(perturb_pose(T_fix, d) @ motion, moved, predicted) for d in samples[:2000]]
    assert np.mean(m) == pytest.approx(6.0, rel=0.1)
    assert np.isnan(pose_mahalanobis(moved, moved, np.full((6, 6), np.nan)))


def test_fused_poses_lean_on_the_more_certain_one_and_stay_consistent_when_correlated():
    """Two estimates of a pose (a weak view's and the odometry's prediction from the previous view): equal ones meet
    half-way with the same covariance (covariance intersection assumes nothing about their correlation); a far more
    certain one wins; estimates that share a common error (the map's, a view's bias) stay within their fused
    covariance, where a Kalman update, assuming independence, is overconfident."""
    rng = np.random.default_rng(5)
    T = make_T(cv2.Rodrigues(np.array([0.2, -0.1, 0.9]))[0], [1.0, -2.0, 0.4])
    cov = np.diag([0.02 ** 2] * 3 + [0.01 ** 2] * 3)
    shifted = perturb_pose(T, [0.04, 0.0, 0.0, 0.0, 0.0, 0.02])
    F, C = fuse_poses(T, cov, shifted, cov)
    assert np.allclose(pose_difference(F, T), [0.02, 0, 0, 0, 0, 0.01], atol=1e-4) and np.allclose(C, cov)
    F, C = fuse_poses(shifted, cov * 1e4, T, cov)
    assert np.linalg.norm(pose_difference(F, T)) < 1e-3 and np.allclose(C, cov)
    # a camera localized 15 times against one map, each fix fused with the previous one (exact odometry plus a
    # little drift): the map's error is common to all of them
    measured, drift = np.diag([0.02 ** 2] * 3 + [0.01 ** 2] * 3), np.diag([0.002 ** 2] * 3 + [0.001 ** 2] * 3)
    fused, kalman = [], []
    for _ in range(300):
        bias = rng.multivariate_normal(np.zeros(6), measured * 0.5)
        views = [perturb_pose(T, bias + rng.multivariate_normal(np.zeros(6), measured * 0.5)) for _ in range(15)]
        F, C, K, P = views[0], measured, views[0], measured
        for view in views[1:]:
            F, C = fuse_poses(view, measured, F, C + drift)
            gain = measured @ np.linalg.inv(measured + P + drift)
            K, P = perturb_pose(view, gain @ pose_difference(K, view)), (np.eye(6) - gain) @ measured
        fused.append(pose_mahalanobis(F, T, C))
        kalman.append(pose_mahalanobis(K, T, P))
    assert np.mean(fused) <= 6.6 and np.mean(kalman) > 20.0, (np.mean(fused), np.mean(kalman))
    with pytest.raises(ValueError, match="finite"):
        fuse_poses(T, np.full((6, 6), np.nan), T, cov)


def test_covariance_cover_is_at_least_as_large_as_both_and_no_larger_than_needed():
    """The cover of a drift model and an odometry's report: no direction less uncertain than either; where one
    contains the other, that one; for two crossed ellipses, inside their sum (which is larger than needed)."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        A, B = (M @ M.T for M in rng.normal(size=(2, 6, 6)) * rng.uniform(0.01, 0.1, (2, 1, 1)))
        C = covariance_cover(A, B)
        assert np.linalg.eigvalsh(C - A).min() > -1e-12 and np.linalg.eigvalsh(C - B).min() > -1e-12
        assert np.linalg.eigvalsh(A + B - C).min() > -1e-12
        assert np.allclose(covariance_cover(A, 0.5 * A), A) and np.allclose(covariance_cover(0.5 * A, A), A)
    # a zero model (the robot has not moved) is covered by the report alone
    B = np.diag([0.01, 0.02, 0.03, 1e-4, 2e-4, 3e-4])
    assert np.allclose(covariance_cover(np.zeros((6, 6)), B), B, atol=1e-9)


def test_evidence_is_compared_where_both_maps_predict():
    """Two poses' inliers counted only in the cells both maps project points into: the left half of the image
    (cells of 10 px) is predicted by both, the right half only by the first pose's map."""
    grid = np.stack(np.meshgrid(np.arange(5, 640, 10.0), np.arange(5, 480, 10.0)), -1).reshape(-1, 2)
    left, right = grid[grid[:, 0] < 320], grid[grid[:, 0] >= 320]
    a = np.vstack([left[::2], right])  # the first pose: half the left cells and every right one
    b = left  # the rival: every left cell
    mine, theirs = evidence_where_both_predict(a, b, grid, left, 10.0)
    assert (mine, theirs) == (len(left[::2]), len(left))
    assert evidence_where_both_predict(a, b, grid, grid, 10.0) == (len(a), len(b))
    # several points in a cell count once; nothing predicted in common: nothing to compare
    assert evidence_where_both_predict(np.repeat(left[:3], 4, 0), left[:2], left, left, 10.0) == (3, 2)
    assert evidence_where_both_predict(a, b, left, right, 10.0) == (0, 0)


def _rms_shift(T_a, T_b, X):
    a = project(transform_points(invert(T_a), X), K)[0]
    b = project(transform_points(invert(T_b), X), K)[0]
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


def test_the_least_certain_shift_of_a_facade_seen_head_on_slides_and_turns_back():
    """A wall 4 m ahead filling a third of the image: sliding sideways while turning back keeps the view nearly
    unchanged (the valley a striped facade let tracked poses slide along, retired report seed 6011). The shift
    is that slide, sized to move the points by the asked pixels."""
    rng = np.random.default_rng(0)
    uv = rng.uniform([213, 160], [426, 320], (300, 2))
    X = np.column_stack([(uv - K[:2, 2]) / K[0, 0] * 4.0, np.full(len(uv), 4.0)])
    T = np.eye(4)
    cov = pose_covariance(T, X, uv, K, 1.0)
    step = least_certain_shift(T, cov, X, K, 8.0)
    assert _rms_shift(T, perturb_pose(T, step), X) == pytest.approx(8.0, rel=0.05)
    # along the wall's short side (y: the patch is wider than tall) with a turn about x that points the camera
    # back at the same spot (+y down, +rot_x tilts the optical axis up to -y): a slide of ~depth x turn
    slide, turn = step[1], step[3]
    assert abs(slide) > 5 * max(abs(step[0]), abs(step[2])) and abs(turn) > 5 * max(abs(step[4]), abs(step[5]))
    assert np.sign(slide) == np.sign(turn) and abs(slide / turn) == pytest.approx(4.0, rel=0.3)
    # a pure slide of the same length moves the image far more
    assert _rms_shift(T, perturb_pose(T, [0, slide, 0, 0, 0, 0]), X) > 3 * 8.0
    assert not least_certain_shift(T, np.full((6, 6), np.nan), X, K, 8.0).any()
