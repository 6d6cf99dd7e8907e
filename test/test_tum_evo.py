"""Trajectories in TUM format and ATE / RPE through evo: the files read back exactly (by the package and by evo),
evo's figures on synthetic trajectories with a known error against hand-computed values, the odometry's figures
(``trajectory_metrics``) on them, and the relocalization records as TUM files."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from match_ros.core.geometry.transforms import make_T, rotation_from_vector
from match_ros.evaluation.eval_odometry import trajectory_metrics
from match_ros.evaluation.reloc_metrics import QueryRecord, write_records_tum
from match_ros.evaluation.trajectories import ate_rpe, evo_command, write_tum_pair
from match_ros.tools.render import read_tum

STEP_M = 0.01  # 1 cm per frame along a straight line


def line(n: int, step: float = STEP_M, yaw_per_frame: float = 0.0) -> list:
    """n poses along the world x axis, optionally turning about z."""
    return [make_T(rotation_from_vector([0.0, 0.0, yaw_per_frame * k]), [step * k, 0.0, 0.0]) for k in range(n)]


def arc(n: int, radius: float = 2.0) -> list:
    """n poses on a quarter circle in the xy plane, looking along it (positions span a plane: an SE(3) / Sim(3)
    fit is unique)."""
    a = np.linspace(0.0, np.pi / 2, n)
    return [make_T(rotation_from_vector([0.0, 0.0, v]), [radius * np.sin(v), radius * (1 - np.cos(v)), 0.0])
            for v in a]


def random_poses(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [make_T(rotation_from_vector(rng.normal(size=3)), rng.normal(size=3) * 10) for _ in range(n)]


def test_tum_files_read_back_exactly_by_the_package_and_by_evo(tmp_path):
    from evo.tools.file_interface import read_tum_trajectory_file

    stamps = [1_700_000_000_123_456_789 + 33_333_333 * k for k in range(50)]
    gt, est = random_poses(50, 0), random_poses(50, 1)
    gt_path, est_path = write_tum_pair(tmp_path / "out", "room", list(zip(stamps, est)), list(zip(stamps, gt)))
    assert gt_path == tmp_path / "out" / "room_groundtruth.tum" and est_path == tmp_path / "out" / "room_estimate.tum"
    for path, poses in ((gt_path, gt), (est_path, est)):
        first = next(line for line in path.read_text().splitlines() if not line.startswith("#"))
        assert len(first.split()) == 8 and first.split()[0] == "1700000000.123456789"  # seconds, exact
        back = read_tum(path)
        assert [s for s, _ in back] == stamps  # to the nanosecond
        assert max(np.abs(T - P).max() for (_, T), P in zip(back, poses)) < 1e-8
        traj = read_tum_trajectory_file(str(path))
        assert np.allclose(traj.timestamps, np.array(stamps) * 1e-9, rtol=0, atol=1e-6)
        assert max(np.abs(T - P).max() for T, P in zip(traj.poses_se3, poses)) < 1e-8
    assert evo_command(gt_path, est_path, "origin") == f"evo_ape tum {gt_path} {est_path} --align_origin"
    assert evo_command(gt_path, est_path, "se3") == f"evo_ape tum {gt_path} {est_path} -a"
    assert evo_command(gt_path, est_path, "none") == f"evo_ape tum {gt_path} {est_path}"


def test_constant_offset():
    """Every estimated position 3 cm, 4 cm off (5 cm): ATE 5 cm without alignment, 0 once the origin or an SE(3)
    fit takes the offset out; the relative motion is exact (RPE 0). On a line no SE(3) fit is unique."""
    for gt in (line(301), arc(301)):
        est = [make_T(T[:3, :3], T[:3, 3] + [0.03, 0.04, 0.0]) for T in gt]
        raw = ate_rpe(est, gt, align="none")
        assert raw["ate_rmse_m"] == pytest.approx(0.05, abs=1e-12)
        assert np.allclose(raw["position_errors_m"], 0.05, atol=1e-12)
        assert np.allclose(raw["rotation_errors_deg"], 0, atol=1e-6)
        assert len(raw["rpe_pairs"]) > 100 and np.allclose(raw["rpe_t_m"], 0, atol=1e-12)
        assert ate_rpe(est, gt, align="origin")["ate_rmse_m"] < 1e-9
    assert ate_rpe(est, gt, align="se3")["ate_rmse_m"] < 1e-9
    with pytest.raises(ValueError, match="no se3 fit"):
        ate_rpe(line(301), line(301), align="se3")


def test_scale_drift():
    """The estimate travels 2 % too far (positions x 1.02 from the common origin): after the origin alignment the
    error at frame k is 0.02 * x_k, so ATE = 0.02 * sqrt(mean(x_k^2)); over every pair 1 m apart the relative
    motion is 2 cm too long (RPE 2 %, 0 deg). On an arc, a Sim(3) fit finds the scale 1 / 1.02 and leaves no
    error, an SE(3) fit (rotation identity: the estimate is a scaled copy) leaves 0.02 * |x_k - mean x|."""
    n, s = 301, 0.02
    gt = line(n)
    est = [make_T(T[:3, :3], (1 + s) * T[:3, 3]) for T in gt]
    x = STEP_M * np.arange(n)
    ate = s * np.sqrt(np.mean(x ** 2))  # 3 m: 0.02 * 1.7349 = 3.470 cm
    ev = ate_rpe(est, gt, align="origin")
    assert ev["ate_rmse_m"] == pytest.approx(ate, rel=1e-9)
    assert np.allclose(ev["position_errors_m"], s * x, atol=1e-12)
    # pairs 1 m (100 frames) of ground-truth path apart: frames 0..200 each with the frame 100 later, then (evo's
    # tolerance, 10 %) the frames up to 0.9 m before the end with the last one
    pairs = ev["rpe_pairs"]
    assert pairs[:201] == [(i, i + 100) for i in range(201)] and all(j == n - 1 for _, j in pairs[201:])
    path = np.array([STEP_M * (j - i) for i, j in pairs])
    assert path.min() >= 0.9 - 1e-9 and path.max() <= 1.0 + 1e-9
    assert np.allclose(ev["rpe_t_m"], s * path, atol=1e-9) and np.allclose(ev["rpe_t_pct"], 100 * s, atol=1e-7)
    assert np.allclose(ev["rpe_r_deg"], 0, atol=1e-6)
    m = trajectory_metrics(est, gt)  # the odometry's figures on it
    assert m["distance_m"] == pytest.approx(3.0, abs=1e-9)
    assert m["drift_end_pct"] == pytest.approx(100 * s, rel=1e-9) and m["drift_max_pct"] == pytest.approx(100 * s)
    assert m["ate_rmse_m"] == pytest.approx(ate, rel=1e-9) and np.isnan(m["ate_se3_rmse_m"])  # a line: no fit
    assert m["rpe_1m_pct"] == pytest.approx(100 * s, abs=1e-7) and m["rpe_1m_deg"] == pytest.approx(0, abs=1e-6)
    gt = arc(301)
    est = [make_T(T[:3, :3], (1 + s) * T[:3, 3]) for T in gt]
    P = np.array([T[:3, 3] for T in gt])
    sim3 = ate_rpe(est, gt, align="sim3")
    assert sim3["scale"] == pytest.approx(1 / (1 + s), rel=1e-9) and sim3["ate_rmse_m"] < 1e-9
    centred = s * np.sqrt(np.mean(np.sum((P - P.mean(0)) ** 2, axis=1)))
    assert ate_rpe(est, gt, align="se3")["ate_rmse_m"] == pytest.approx(centred, rel=1e-6)
    assert trajectory_metrics(est, gt)["ate_se3_rmse_m"] == pytest.approx(centred, rel=1e-6)


def test_rotation_drift():
    """The estimate turns 0.01 deg per frame more than the truth about its own z, on the true positions: rotation
    error 0.01 * k deg at frame k, 1 deg over every 1 m (100 frames) of ground-truth path, no position error."""
    n, w = 301, np.radians(0.01)
    gt = line(n)
    est = [make_T(rotation_from_vector([0.0, 0.0, w * k]), T[:3, 3]) for k, T in enumerate(gt)]
    ev = ate_rpe(est, gt, align="origin")
    assert ev["ate_rmse_m"] < 1e-12
    assert np.allclose(ev["rotation_errors_deg"], 0.01 * np.arange(n), atol=1e-6)
    full = [k for k, (i, j) in enumerate(ev["rpe_pairs"]) if j - i == 100]
    assert len(full) == 201 and np.allclose(ev["rpe_r_deg"][full], 1.0, atol=1e-6)
    m = trajectory_metrics(est, gt)
    assert m["rot_err_end_deg"] == pytest.approx(3.0, abs=1e-6) and m["rpe_1m_deg"] == pytest.approx(1.0, abs=1e-6)


def test_a_short_run_has_no_rpe_and_the_first_pose_anchors_the_odometry():
    gt = [np.eye(4), make_T(np.eye(3), [0.1, 0, 0])]
    est = [make_T(rotation_from_vector([0, 0, 0.3]), [5.0, 1.0, 0]),
           make_T(rotation_from_vector([0, 0, 0.3]), [5.0, 1.0, 0]) @ make_T(np.eye(3), [0.1, 0.01, 0])]
    m = trajectory_metrics(est, gt)
    assert m["ate_rmse_m"] == pytest.approx(0.01 / np.sqrt(2), rel=1e-9)
    assert np.isnan(m["rpe_1m_pct"]) and np.isnan(m["rpe_1m_deg"])


def test_relocalization_records_as_tum_match_the_per_query_errors(tmp_path):
    """The relocalization's TUM files: every query in the ground truth, only the poses given in the estimate;
    evo, associating them by timestamp with no alignment, finds the records' own translation errors."""
    from evo.core import metrics, sync
    from evo.tools.file_interface import read_tum_trajectory_file

    rng = np.random.default_rng(3)
    records = []
    for k, T in enumerate(line(40, step=0.05, yaw_per_frame=0.02)):
        stamp = 1_000_000_000 + 100_000_000 * k
        T_est = None if k % 7 == 3 else make_T(T[:3, :3], T[:3, 3] + rng.normal(size=3) * 0.02)
        records.append(QueryRecord(stamp, T, T_est))
    gt_path, est_path = write_records_tum(tmp_path, "offline", records)
    ref, est = read_tum_trajectory_file(str(gt_path)), read_tum_trajectory_file(str(est_path))
    assert ref.num_poses == 40 and est.num_poses == sum(r.T_est is not None for r in records)
    ref, est = sync.associate_trajectories(ref, est, max_diff=0.01)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    assert np.allclose(ape.error, [r.errors[0] for r in records if r.T_est is not None], atol=1e-8)


@pytest.mark.skipif(shutil.which("evo_ape", path=os.path.dirname(sys.executable)) is None,
                    reason="evo's command line is not installed beside this Python")
def test_the_printed_evo_ape_command_gives_the_same_ate(tmp_path):
    """The command the odometry evaluation prints, run as a user would (evo's CLI, its own settings in a fresh
    HOME): the same ATE as ``trajectory_metrics``."""
    n, s = 301, 0.02
    gt = arc(n)
    est = [make_T(rotation_from_vector([0.1, 0, 0]), [1.0, 2.0, 0.5]) @ make_T(T[:3, :3], (1 + s) * T[:3, 3])
           for T in gt]
    stamps = [10**9 + 33_333_333 * k for k in range(n)]
    gt_path, est_path = write_tum_pair(tmp_path, "line", list(zip(stamps, est)), list(zip(stamps, gt)))
    results = {}
    for align in ("origin", "se3"):
        out = tmp_path / f"{align}.zip"
        cmd = evo_command(gt_path, est_path, align).split() + ["--save_results", str(out), "--no_warnings"]
        cmd[0] = str(Path(sys.executable).parent / cmd[0])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HOME": str(tmp_path), "MPLBACKEND": "Agg"})
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        from evo.tools.file_interface import load_res_file

        results[align] = load_res_file(str(out)).stats["rmse"]
    m = trajectory_metrics(est, gt)
    assert results["origin"] == pytest.approx(m["ate_rmse_m"], rel=1e-6)
    assert results["se3"] == pytest.approx(m["ate_se3_rmse_m"], rel=1e-6)
