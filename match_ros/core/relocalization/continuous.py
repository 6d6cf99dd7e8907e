"""Continuous relocalization: the state a localizer keeps from one camera frame to the next (pure core; the
relocalizer node and ``match_ros_eval_reloc --mode continuous`` both run it).

Each frame is tracked from the strongest prior there is, and says which one it used (``result.stats["prior"]``):
1. ``odometry``: the map -> odom of the last fix composed with odom -> camera at the image stamp, a measured
   motion. Its covariance is the fix's, moved along, plus the odometry's drift over the path since the fix
   (``odometry_drift*``, widened where the odometry reports more: its own covariance's growth since the fix); the
   tracked pose must agree with it within the localizer's ``prior_chi2`` (and
   ``max_prior_deviation_*``): a pose in a wrong basin 10 deg off, which still verifies around itself, is refused;
   a pose that agrees is fused with the prediction (``fuse_odometry``: covariance intersection, as the two share
   the map's error; a weak view, whose own sigma is large, leans on the odometry);
2. ``initial pose``: a pose someone gave (rviz's 2D pose estimate); a guess, confirmed like the next;
3. ``last fix``: the previous fix while it is younger than ``max_fix_age_s`` (0 by default: never); a guess
   (nothing measured the motion since), so the search radius grows with its age and the tracked pose must be
   confirmed by the retrieval short-list (``Localizer.localize(prior_confirmed=False)``);
4. ``none``: the whole map is searched (global relocalization), as when tracking fails.
A global fix that contradicts the odometry's prediction (the same test) is not
trusted on its own: either the fix is wrong (repeated structure) or the odometry jumped, and a wrong map -> odom
would steer every later frame (tracked from a prior that counts as confirmed). It is held back and accepted when
the next such fix agrees with it (same map -> odom within ``same_place_*``).
An odometry that says it broke (``note_odometry_break``: visual odometry lost track and restarted from the pose it
held, its reported covariance jumped) links no fix before the break to a frame after it: such a frame is searched
globally and its fix sets map -> odom without the contradiction test (the prediction across the break is the stale
pose; a distro check at 1x refused the right fix 0.90 m / 123 deg from it).
A frame whose stamp is older than the last one's (a bag restarted, the clock reset) clears the state first.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from match_ros.core.config import Param, make_conf
from match_ros.core.geometry.absolute_pose import covariance_cover, fuse_poses, moved_covariance, pose_sigmas
from match_ros.core.geometry.camera import Distortion
from match_ros.core.geometry.transforms import invert, rotation_error_deg
from match_ros.core.relocalization.localizer import LocalizationResult, Localizer

continuous_spec = {
    # 0 since 2026-12-06 (fourth session): in a distro check (the rendered room at 30 Hz, turning) frames tracked from
    # a fix 67-100 ms old were beyond 5 cm / 2 deg in 80 of 83 tries and 5 were accepted (up to 0.18 m / 9 deg at
    # sigma 3 cm): without odometry every frame is searched globally
    "max_fix_age_s": Param(0.0, "Without odometry the last fix is the prior this long at most (0: never; above 0 a "
                           "fast-turning camera is tracked onto look-alike points: 5 wrong poses of 83 at 0.25)", "s",
                           0.0, 3600.0),
    "lost_after": Param(5, "Failed queries in a row after which the state is lost (no prior from the last fix)",
                        min=1, max=100000),
    # a wheel or visual odometry's error, generously: 5 % and 2 deg per metre; the procedural benchmark's random walk
    # (1 mm and 0.02 deg per 30 Hz step) is below it at the speeds of its paths
    "odometry_drift": Param(0.05, "Odometry's position error per metre travelled (1 sigma, a fraction)", min=0.0,
                            max=10.0),
    "odometry_drift_deg_per_m": Param(2.0, "Odometry's heading error per metre travelled (1 sigma)", "deg/m", 0.0,
                                      360.0),
    "odometry_turn_drift": Param(0.05, "Odometry's rotation error per angle turned (1 sigma, a fraction)", min=0.0,
                                 max=10.0),
    "fuse_odometry": Param(True, "Publish a pose that agrees with the odometry's prediction fused with it (both "
                           "covariances; a weak view then leans on the odometry instead of a wrong basin)"),
}

PRIORS = ("odometry", "initial pose", "last fix", "none")


class ContinuousLocalizer:
    """Tracking state around a ``Localizer``: last fix, map -> odom, failures in a row.

    Not thread-safe: one thread runs ``localize`` (the node's worker); ``set_initial_pose`` may be called from
    another thread, it only stores the pose for the next frame.
    """

    def __init__(self, localizer: Localizer, conf: dict | None = None):
        self.localizer = localizer
        self.conf = make_conf(continuous_spec, conf, "continuous localization")
        self.reset()

    def reset(self) -> None:
        """Forget every fix (a new map, a time jump)."""
        self.T_map_odom: Optional[np.ndarray] = None
        self.last_fix: Optional[np.ndarray] = None
        self.last_fix_ns: Optional[int] = None
        # the fix behind T_map_odom: (T_map_cam, covariance, T_odom_cam, the odometry's covariance there or None)
        self._anchor: Optional[tuple] = None
        self._anchor_ns: Optional[int] = None  # its stamp (None: not known, no break can be placed against it)
        self.breaks: list = []  # stamps where the odometry broke (``note_odometry_break``), newest last
        self.last_stamp_ns: Optional[int] = None
        self.fail_streak = 0
        self._initial: Optional[np.ndarray] = None
        self._pending_map_odom: Optional[np.ndarray] = None  # a contradicting fix's map -> odom, awaiting a second

    def set_initial_pose(self, T_map_cam: np.ndarray) -> None:
        """A camera pose in the map to track the next frame from (a guess: confirmed before it is trusted)."""
        self._initial = np.asarray(T_map_cam, np.float64).copy()

    @property
    def lost(self) -> bool:
        return self.fail_streak >= self.conf["lost_after"]

    def _check_against_odometry(self, result: LocalizationResult, predicted: np.ndarray,
                                predicted_covariance: Optional[np.ndarray], T_odom_cam: np.ndarray):
        """A global fix where the odometry predicted ``predicted``: refused when they disagree
        (``Localizer.prior_contradiction``), unless the previous contradicting fix gave the same map -> odom (then
        the odometry, or the map -> odom, was what had jumped)."""
        contradiction = self.localizer.prior_contradiction(result, predicted, predicted_covariance)
        if not contradiction:
            self._pending_map_odom = None
            return
        implied = result.T_map_cam @ invert(T_odom_cam)
        pending, self._pending_map_odom = self._pending_map_odom, implied
        if pending is not None and self.localizer._same_place(pending, implied):
            self._pending_map_odom = None
            result.stats["odometry_jump"] = f"{contradiction}, confirmed by a second fix"
            return
        result.stats["held_back"] = True  # the map and the odometry disagree here: which is right is not known
        result.refuse(f"global fix {contradiction} (the odometry's prediction): held back until a second fix agrees "
                      f"(a wrong fix here would steer every later frame)")

    def note_odometry_break(self, stamp_ns: int) -> None:
        """The odometry broke at ``stamp_ns`` (lost track, restarted elsewhere): odom -> camera after it is not
        connected to any fix before it."""
        self.breaks = sorted(self.breaks + [int(stamp_ns)])[-32:]

    def odometry_broken(self, stamp_ns: int) -> bool:
        """Whether the odometry broke after the fix behind map -> odom and at or before ``stamp_ns``."""
        return self._anchor_ns is not None and any(self._anchor_ns < b <= stamp_ns for b in self.breaks)

    def prior(self, stamp_ns: int, T_odom_cam: Optional[np.ndarray],
              odom_covariance: Optional[np.ndarray] = None) -> tuple:
        """(T_map_cam or None, source in PRIORS, age [s], confirmed, covariance [6 x 6] or None) for a frame at
        ``stamp_ns`` whose odometry (odom -> camera at that stamp) is ``T_odom_cam`` (None: none), with the
        odometry's own covariance ``odom_covariance`` where it reports one (``odometry_covariance``)."""
        if T_odom_cam is not None and self.T_map_odom is not None and not self.odometry_broken(stamp_ns):
            predicted = self.T_map_odom @ T_odom_cam
            return predicted, "odometry", 0.0, True, self.odometry_covariance(predicted, T_odom_cam, odom_covariance)
        if self._initial is not None:
            return self._initial, "initial pose", 0.0, False, None
        if self.last_fix is not None and not self.lost:
            age = max(0.0, (stamp_ns - self.last_fix_ns) * 1e-9)
            if 0 < self.conf["max_fix_age_s"] and age <= self.conf["max_fix_age_s"]:
                return self.last_fix, "last fix", age, False, None
        return None, "none", 0.0, False, None

    def odometry_covariance(self, predicted: np.ndarray, T_odom_cam: np.ndarray,
                            odom_covariance: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """Covariance of the odometry's prediction ``predicted`` (camera at odom -> camera ``T_odom_cam``): the
        last fix's covariance moved along, plus the drift over the path since: ``odometry_drift*`` from the
        straight-line distance and the angle turned, widened to cover what the odometry reports where it reports
        more (``odom_covariance``, its covariance of odom -> camera now, less the one it had at the fix; in the
        odom frame, the parameters of ``pose_covariance``). A visual odometry in a poor stretch knows its drift
        better than a per-metre rate; a report of less than the rate does not narrow it (the rate is the floor).
        None without a finite fix covariance."""
        if self._anchor is None or not np.all(np.isfinite(self._anchor[1])):
            return None
        fix, cov, at_fix, odom_at_fix = self._anchor
        motion = invert(at_fix) @ T_odom_cam
        dist = float(np.linalg.norm(motion[:3, 3]))
        turned = np.radians(rotation_error_deg(motion[:3, :3], np.eye(3)))
        c = self.conf
        sigma_t = c["odometry_drift"] * dist
        sigma_r = np.radians(c["odometry_drift_deg_per_m"]) * dist + c["odometry_turn_drift"] * turned
        drift = np.diag([sigma_t ** 2] * 3 + [sigma_r ** 2] * 3)
        reported = self._reported_drift(odom_at_fix, odom_covariance)
        if reported is not None:
            drift = covariance_cover(drift, reported)
        return moved_covariance(cov, fix, predicted) + drift

    @staticmethod
    def _both_reported(at_fix: Optional[np.ndarray], now: Optional[np.ndarray]) -> bool:
        """Whether the odometry reported a finite covariance at the fix and now (its growth can be used)."""
        return (at_fix is not None and now is not None
                and bool(np.all(np.isfinite(at_fix)) and np.all(np.isfinite(now))))

    def _reported_drift(self, at_fix: Optional[np.ndarray], now: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The odometry's reported covariance growth from the fix to now, in the map frame (its negative part,
        where the odometry grew more certain, dropped), or None where either report is missing or not finite."""
        if not self._both_reported(at_fix, now):
            return None
        growth = 0.5 * ((now - at_fix) + (now - at_fix).T)
        w, v = np.linalg.eigh(growth)
        growth = v @ np.diag(np.maximum(w, 0.0)) @ v.T
        R = np.kron(np.eye(2), self.T_map_odom[:3, :3])  # odom axes -> map axes, position and rotation alike
        return R @ growth @ R.T

    @staticmethod
    def _fuse(result: LocalizationResult, predicted: np.ndarray, predicted_covariance: np.ndarray) -> None:
        try:
            T, cov = fuse_poses(result.T_map_cam, result.covariance, predicted, predicted_covariance)
        except (ValueError, np.linalg.LinAlgError):
            return
        result.stats["fusion_shift_m"] = float(np.linalg.norm(T[:3, 3] - result.T_map_cam[:3, 3]))
        result.T_map_cam, result.covariance = T, cov
        result.stats["position_sigma_m"], result.stats["rotation_sigma_deg"] = pose_sigmas(cov)

    def anchor_odometry(self, T_map_cam: np.ndarray, covariance: np.ndarray, T_odom_cam: np.ndarray,
                        stamp_ns: Optional[int] = None, odom_covariance: Optional[np.ndarray] = None) -> np.ndarray:
        """Set map -> odom from a fix (pose, covariance, stamp) and odom -> camera at its stamp (which may arrive
        after the fix; with the odometry's covariance there, where it reports one); later frames are predicted from
        it. Returns the map -> odom."""
        self._anchor = (np.asarray(T_map_cam, np.float64), np.asarray(covariance, np.float64),
                        np.asarray(T_odom_cam, np.float64),
                        None if odom_covariance is None else np.asarray(odom_covariance, np.float64))
        self._anchor_ns = None if stamp_ns is None else int(stamp_ns)
        self.T_map_odom = self._anchor[0] @ invert(self._anchor[2])
        return self.T_map_odom

    def localize(self, image: np.ndarray, K: np.ndarray, stamp_ns: int, T_odom_cam: Optional[np.ndarray] = None,
                 global_only: bool = False, distortion: Optional[Distortion] = None,
                 odom_covariance: Optional[np.ndarray] = None) -> LocalizationResult:
        """Localize one frame (stamp [ns], odometry odom -> camera at the stamp or None) and update the state.
        global_only: search the whole map whatever the prior (a service request). distortion: the raw image's lens
        distortion or None (``Localizer.localize``). odom_covariance: the odometry's own covariance of odom -> camera
        at the stamp (odom frame, the parameters of ``pose_covariance``) where it reports one (visual_odometry's
        ~/odom does): the prediction is at least that uncertain (``odometry_covariance``)."""
        reset = self.last_stamp_ns is not None and stamp_ns < self.last_stamp_ns
        if reset:
            initial = self._initial
            self.reset()
            self._initial = initial
        self.last_stamp_ns = int(stamp_ns)
        prior, source, age, confirmed, prior_cov = ((None, "none", 0.0, False, None) if global_only
                                                    else self.prior(stamp_ns, T_odom_cam, odom_covariance))
        broken = T_odom_cam is not None and self.odometry_broken(stamp_ns)
        self._initial = None
        result = self.localizer.localize(image, K, prior, prior_age_s=age, prior_confirmed=confirmed,
                                         distortion=distortion, prior_covariance=prior_cov)
        result.stats["prior"] = source if result.mode == "tracking" or prior is None else f"{source} (failed)"
        if prior_cov is not None:  # how far the prior may be off (1 sigma), and whether the odometry's report counted
            result.stats["prior_sigma_m"] = pose_sigmas(prior_cov)[0]
            reported = self._both_reported(self._anchor[3], odom_covariance)
            result.stats["prior_drift"] = "model, odometry report" if reported else "model"
        if result.success and source == "odometry" and result.mode == "global":
            self._check_against_odometry(result, prior, prior_cov, T_odom_cam)
        if (result.success and source == "odometry" and prior_cov is not None and self.conf["fuse_odometry"]
                and "odometry_jump" not in result.stats):
            self._fuse(result, prior, prior_cov)
        if reset:
            result.stats["reset"] = "the stamp jumped back: tracking state cleared"
        if broken:
            result.stats["odometry_broke"] = "the odometry broke since the last fix: searched without it"
        if not result.success:
            self.fail_streak += 1
            return result
        self.fail_streak = 0
        self.last_fix, self.last_fix_ns = result.T_map_cam, int(stamp_ns)
        if T_odom_cam is not None:
            self.anchor_odometry(result.T_map_cam, result.covariance, T_odom_cam, stamp_ns, odom_covariance)
        return result


__all__ = ["ContinuousLocalizer", "PRIORS", "continuous_spec"]
