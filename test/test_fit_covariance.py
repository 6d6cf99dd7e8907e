"""match_ros.evaluation.fit_covariance: the covariance factor recovered from benchmark records. CPU, fast."""
import json

import cv2
import numpy as np
import pytest

from match_ros.evaluation.fit_covariance import consistency, fit_factor, load


def _records(path, rng, n, true_cov, published_factor, ratio, inflation=1.0, map_sigma=(0.0, 0.0)):
    """n records whose errors are drawn from inflation * (ratio^-2 * true_cov + map error) (the model with factor 1)
    and whose published covariance is made as the localizer makes it with ``published_factor`` instead."""
    floor = np.diag(np.r_[np.full(3, map_sigma[0]), np.full(3, np.radians(map_sigma[1]))] ** 2)
    out = []
    for _ in range(n):
        e = rng.multivariate_normal(np.zeros(6), inflation * (ratio ** -2.0 * true_cov + floor))
        T_gt = np.eye(4)
        T_gt[:3, 3] = rng.uniform(-3, 3, 3)
        T_est = T_gt.copy()
        T_est[:3, 3] += e[:3]
        T_est[:3, :3] = cv2.Rodrigues(e[3:])[0] @ T_gt[:3, :3]
        factor = published_factor * ratio ** -2.0
        cov = inflation * (factor * true_cov + floor)
        out.append({"T_gt": T_gt.tolist(), "T_est": T_est.tolist(), "covariance": cov.tolist(),
                    "stats": {"inliers": int(100 * ratio), "guided": 100, "covariance_factor": factor,
                              "consistency_inflation": inflation, "map_position_sigma_m": map_sigma[0],
                              "map_rotation_sigma_deg": map_sigma[1]}})
    path.write_text(json.dumps(out))


@pytest.fixture
def true_cov():
    A = np.random.default_rng(0).normal(size=(6, 6))
    D = np.diag(np.r_[np.full(3, 0.003), np.full(3, 0.001)])  # a few mm, a few hundredths of a degree
    return D @ (A @ A.T + 6 * np.eye(6)) @ D / 12


def test_the_first_order_part_is_recovered_and_the_factor_fitted(tmp_path, true_cov):
    """Records published with a wrong factor (x0.2, inflated, with a map error on top): the tool undoes how each
    covariance was made, so factor 1 (the model the errors come from) is consistent (mean NEES ~6) and the factor
    fitted for the share within 3 sigma that a Gaussian gives lands near 1."""
    rng = np.random.default_rng(1)
    for run, kw in (("global_drift", {"ratio": 0.8}), ("continuous_drift", {"ratio": 0.5, "inflation": 2.0}),
                    ("continuous_delayed", {"ratio": 0.9, "map_sigma": (0.001, 0.01)})):
        _records(tmp_path / f"7_m_{run}.json", rng, 400, true_cov, 0.2, **kw)
    d = load(tmp_path, "m", [7])
    assert len(d["e"]) == 1200
    s = consistency(d, 1.0, 2.0)
    assert 5.4 < s["nees_mean"] < 6.6 and 0.91 < s["within_3sigma"] < 0.97
    assert set(s["runs"]) == {"global_drift", "continuous_drift", "continuous_delayed"}
    factor = fit_factor(d, 2.0, within=s["within_3sigma"])
    assert 0.8 < factor < 1.25
    # a twice larger factor halves the NEES, and more errors fall within 3 sigma
    s2 = consistency(d, 2.0, 2.0)
    assert s2["nees_mean"] == pytest.approx(s["nees_mean"] / 2, rel=0.1) and s2["within_3sigma"] > s["within_3sigma"]


def test_wrong_poses_and_records_without_the_making_are_left_out(tmp_path, true_cov):
    rng = np.random.default_rng(2)
    _records(tmp_path / "7_m_global_drift.json", rng, 5, true_cov, 1.0, 1.0)
    recs = json.loads((tmp_path / "7_m_global_drift.json").read_text())
    recs[0]["T_est"][0][3] += 2.0  # 2 m off: the integrity guard's business, not the covariance's
    del recs[1]["stats"]["covariance_factor"]  # a record of older code
    recs[2]["T_est"] = recs[2]["covariance"] = None  # no pose
    recs[3]["stats"]["fusion_shift_m"] = 0.004  # fused with the odometry: another covariance than the localizer's
    recs[4]["stats"]["fusion_shift_m"] = 0.0  # the fusion kept the localizer's pose and covariance: counted
    (tmp_path / "7_m_global_drift.json").write_text(json.dumps(recs))
    for run in ("continuous_drift", "continuous_delayed"):
        (tmp_path / f"7_m_{run}.json").write_text("[]")
    assert len(load(tmp_path, "m", [7])["e"]) == 1
    with pytest.raises(FileNotFoundError, match="match_ros_bench_integrity --seeds 8"):
        load(tmp_path, "m", [8])
