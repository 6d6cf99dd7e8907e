"""RGB-D visual odometry: keyframe poses chained into a metric trajectory in the odom frame.

Every frame is matched against the current keyframe (``KeyframeTracker``); with the keyframe's
depth the relative pose is a metric PnP solution, so the camera's pose in odom is

    T_odom_cam = T_odom_kf @ T_kf_cam

and its covariance is propagated to first order (``compose_covariance``). A new keyframe is
placed by that chain and then refined against a small window of earlier keyframes: its
features are matched to each of them, their depth gives 3D points in odom, and one robust PnP
over the pooled 2D-3D matches re-anchors the new keyframe to older, less drifted ones (a
frame-to-local-map step, as in keyframe RGB-D odometry). The refined pose replaces the chained
one only when both agree within ``max_refine_correction_*`` (a disagreement means a bad match,
not drift).

Without depth there is no metric odometry: ``process`` raises, the relative poses of
``KeyframeTracker`` (scale-free, flagged) are what exists.

Covariances use the convention of geometry_msgs/PoseWithCovariance and ``pose_covariance``:
(x, y, z) of the frame in the parent frame, then a small rotation about the parent's axes.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.optimize import least_squares  # at import, not at the first keyframe adjustment (a 0.4 s stall there)

from match_ros.core.config import Param, defaults, make_conf
from match_ros.core.features.matcher import Matcher
from match_ros.core.geometry.absolute_pose import PnPResult, solve_pnp
from match_ros.core.geometry.camera import backproject, depth_at_undistorted, transform_points
from match_ros.core.geometry.transforms import invert, perturb_pose, rotation_error_deg, skew
from match_ros.core.geometry.two_view import UNOBSERVED_VARIANCE, RelativePose, pose_spec
from match_ros.core.tracking.frontend import Frame, Keyframe, KeyframeTracker, TrackResult, depth_scale_problem
from match_ros.core.tracking.keyframes import KeyframeSelector

odometry_spec = {
    "window_keyframes": Param(4, "Earlier keyframes a new keyframe is refined against (0: chain only)", min=0,
                              max=50),
    "min_window_inliers": Param(60, "Pooled PnP inliers needed to refine a new keyframe", min=6, max=100000),
    "max_refine_correction_m": Param(0.10, "A refinement moving the keyframe further than this is refused", "m",
                                     0.0, 100.0),
    "max_refine_correction_deg": Param(3.0, "... or rotating it more than this", "deg", 0.0, 180.0),
    "min_pnp_inliers": Param(30, "A frame's PnP on its keyframe needs this many inliers (measured on rendered "
                             "frames: wrong poses had 15-24, right ones 28 and more)", min=6, max=100000),
    "min_pnp_inlier_ratio": Param(0.05, "... and this share of the matches", min=0.0, max=1.0),
    "restart_after_lost": Param(5, "Frames in a row without a pose after which tracking restarts from a new "
                                "keyframe at the held pose (before that, frames are matched to the old keyframe)",
                                min=1, max=1000),
    "lost_variance": Param(1.0, "Variance added to the pose (m^2, rad^2) when tracking is lost, and again when it "
                           "restarts from the pose it held", min=0.0, max=UNOBSERVED_VARIANCE),
    "max_depth_m": Param(20.0, "Depths beyond this are not used", "m", 0.1, 1000.0),
    "adjust_window": Param(True, "Jointly adjust the window's keyframe poses at each new keyframe (local "
                           "adjustment)"),
    "window_matching": Param("fast", "How a new keyframe is matched to the window's earlier keyframes: fast (the "
                             "backend's cheaper matching, e.g. XFeat descriptors by mutual nearest neighbours "
                             "instead of LighterGlue: a keyframe in ~250 instead of 500-900 ms on one core) or "
                             "matcher (the configured matcher)", choices=("fast", "matcher")),
    "max_adjust_chi2": Param(22.5, "The adjustment is refused when it moves a keyframe further than the "
                             "uncertainty it gained since the window's oldest keyframe allows (squared Mahalanobis "
                             "distance, 6 dof; 22.5: 99.9 %; 0: no check)", min=0.0, max=1e9),
}
default_odometry_conf = defaults(odometry_spec)

# optical frame (z forward, x right, y down) -> body frame (x forward, y left, z up), REP 103
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def compose_covariance(T_a_b: np.ndarray, cov_a_b: np.ndarray, T_b_c: np.ndarray, cov_b_c: np.ndarray) -> np.ndarray:
    """Covariance [6 x 6] of T_a_c = T_a_b @ T_b_c from the two independent factors' covariances.

    With t_ac = t_ab + R_ab t_bc and R_ac = R_ab R_bc, a perturbation (dt, dr) of T_a_b moves
    t_ac by dt + dr x (R_ab t_bc) and rotates by dr; one of T_b_c, expressed in frame b, moves
    and rotates T_a_c by R_ab dt and R_ab dr.
    """
    R = T_a_b[:3, :3]
    J_ab = np.eye(6)
    J_ab[:3, 3:] = -skew(R @ T_b_c[:3, 3])
    J_bc = np.zeros((6, 6))
    J_bc[:3, :3] = J_bc[3:, 3:] = R
    return J_ab @ cov_a_b @ J_ab.T + J_bc @ cov_b_c @ J_bc.T


def twist_between(T_odom_a: np.ndarray, T_odom_b: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear [3] m/s, angular [3] rad/s) of a frame that moved from pose a to pose b in dt_s, in the
    frame's own axes at b (nav_msgs/Odometry's twist convention)."""
    import cv2

    T_a_b = invert(T_odom_a) @ T_odom_b
    w = cv2.Rodrigues(T_a_b[:3, :3])[0].ravel() / dt_s  # the rotation axis is the same in a and b
    return T_a_b[:3, :3].T @ T_a_b[:3, 3] / dt_s, w


@dataclass
class OdometryResult:
    """One frame's odometry.

    T_odom_cam:  [4 x 4] camera (optical) pose in odom, or None before the first frame
    covariance:  [6 x 6] of T_odom_cam
    status:      "initialized", "tracking", "keyframe", "lost: <why>" (pose held at the last one)
    track:       the front end's TrackResult of this frame
    refined:     a new keyframe was refined against the window (and by how much: correction_m / _deg)
    depth_refused: why the frame, due to become a keyframe, was not (its depth disagrees with the map's), or ""
    """

    T_odom_cam: Optional[np.ndarray]
    covariance: np.ndarray
    status: str
    track: TrackResult
    refined: bool = False
    correction_m: float = 0.0
    correction_deg: float = 0.0
    window_inliers: int = 0
    adjusted_m: float = 0.0
    timings_ms: dict = field(default_factory=dict)
    depth_refused: str = ""  # why this frame's depth was not made a keyframe's (``max_depth_scale_change``)

    @property
    def lost(self) -> bool:
        return self.status.startswith("lost")


@dataclass
class _PlacedKeyframe:
    """A keyframe with its pose in odom; links: its observations of earlier keyframes' depth points, each
    (earlier _PlacedKeyframe, [N x 3] points in that keyframe's camera frame, [N x 2] pixels in this one)."""

    keyframe: Keyframe
    T_odom_kf: np.ndarray
    covariance: np.ndarray
    links: list = field(default_factory=list)


class VisualOdometry:
    """Metric odometry from RGB-D frames. ``initial_pose``: the camera's pose in odom at the first
    frame (e.g. T_base_cam so that odom starts at the robot's base; default R_BODY_OPTICAL: odom axes
    x forward, y left, z up at the first camera position)."""

    def __init__(self, matcher: Matcher, conf: dict | None = None, keyframe_conf: dict | None = None,
                 pose_conf: dict | None = None, initial_pose: np.ndarray | None = None):
        self.conf = make_conf(odometry_spec, conf, "visual odometry")
        self.tracker = KeyframeTracker(matcher, KeyframeSelector(keyframe_conf), pose_conf)
        self.initial_pose = np.eye(4) if initial_pose is None else np.asarray(initial_pose, np.float64)
        if initial_pose is None:
            self.initial_pose[:3, :3] = R_BODY_OPTICAL
        self.window: deque = deque()
        self.current: Optional[_PlacedKeyframe] = None
        self.last_pose: Optional[np.ndarray] = None
        self.last_cov = np.zeros((6, 6))
        self.distance_m = 0.0
        self.lost_streak = 0

    def reset(self, initial_pose: np.ndarray | None = None) -> None:
        if initial_pose is not None:
            self.initial_pose = np.asarray(initial_pose, np.float64)
        self.tracker.reset()
        self.window.clear()
        self.current, self.last_pose, self.last_cov, self.distance_m = None, None, np.zeros((6, 6)), 0.0
        self.lost_streak = 0

    def process(self, frame: Frame) -> OdometryResult:
        if frame.depth is None:
            raise ValueError("visual odometry needs depth aligned with the image (RGB-D)")
        if frame.K is None:
            raise ValueError("visual odometry needs the camera matrix (camera_info)")
        track = self.tracker.process(frame)
        pose = track.pose
        if self.current is None or track.keyframe is not self.current.keyframe:
            # first frame (or restart after the tracker replaced its keyframe on an image size change)
            T = self.initial_pose if self.last_pose is None else self.last_pose
            cov = self.last_cov
            status = "initialized" if self.last_pose is None else "lost: restarted at the last pose"
            if self.last_pose is not None:
                cov = cov + self.conf["lost_variance"] * np.eye(6)
            self._place(self.tracker.keyframe, T, cov, reset_window=True)
            return self._result(T, cov, status, track)
        kf = self.current
        recovered = None
        c = self.conf
        if pose.valid and pose.scale_known and (pose.num_inliers < c["min_pnp_inliers"] or pose.num_inliers
                                                < c["min_pnp_inlier_ratio"] * len(track.matches)):
            pose = RelativePose(False, inliers=pose.inliers, num_inliers=pose.num_inliers,
                                reason=f"{pose.num_inliers} PnP inliers of {len(track.matches)} matches: too few")
        if pose.valid and pose.scale_known:
            T = kf.T_odom_kf @ pose.T_ref_query
            cov = compose_covariance(kf.T_odom_kf, kf.covariance, pose.T_ref_query, pose.covariance)
            status = "tracking"
        elif self.window and (recovered := self._window_pnp(track, frame))[0].valid:
            # the current keyframe alone failed (a gap, a blurred frame): the window's points place the frame
            pnp, placed, owner = recovered[:3]
            T, cov = pnp.T_map_cam, pnp.covariance + self._anchor(placed, owner, pnp).covariance
            status = "tracking"
        else:  # held, and no longer as certain: the camera moves on while nothing is measured
            grow = 0.0 if self.lost_streak else self.conf["lost_variance"]  # once per loss
            T, cov = self.last_pose, self.last_cov + grow * np.eye(6)
            status = f"lost: {pose.reason or 'no metric pose'}"
        result = self._result(T, cov, status, track)
        if recovered is not None and recovered[0].valid:
            result.window_inliers = recovered[0].num_inliers
        self.lost_streak = 0 if status == "tracking" else self.lost_streak + 1
        depth_problem = track.depth_refused or (
            self._depth_scale_problem(track, frame, T) if track.is_keyframe and status == "tracking" else "")
        if depth_problem:
            # the frame's pose stands (it comes from the keyframe's depth); its own depth does not anchor anything
            result.depth_refused = depth_problem
            self.tracker.keyframe = self.current.keyframe
        elif track.is_keyframe and status != "tracking" and (
                self.lost_streak < c["restart_after_lost"] or track.num_query_keypoints < c["min_pnp_inliers"]):
            # a frame without a pose does not become a keyframe: the next frames are matched against the old
            # one (and the window) again; only a longer loss restarts from the held pose, on a frame with keypoints
            # enough for a PnP (not a covered lens)
            self.tracker.keyframe = self.current.keyframe
        elif track.is_keyframe:
            links = []
            if status == "tracking":
                links = self._refine(result, frame)
                result.status = "keyframe"
            else:  # lost for long: restart from the held pose, a break of its own: the motion while lost is missed
                self.lost_streak = 0  # (its covariance grows again, which says so on ~/odom: the relocalizer links
                result.covariance = result.covariance + self.conf["lost_variance"] * np.eye(6)  # no fix across)
                self.last_cov = result.covariance
            self._place(self.tracker.keyframe, result.T_odom_cam, result.covariance, reset_window=status != "tracking")
            if links and self.conf["adjust_window"]:
                self.current.links = links
                t0 = time.perf_counter()
                result.adjusted_m = self._adjust_window()
                result.timings_ms["adjust"] = 1e3 * (time.perf_counter() - t0)
                result.T_odom_cam = self.last_pose = self.current.T_odom_kf.copy()
        return result

    # ------------------------------------------------------------------------------------------------
    @property
    def _pnp_covariance_scale(self) -> float:
        """The two-view ``covariance_scale`` (16: measured on rendered frame pairs) the frame-to-keyframe PnP's
        covariance carries; the window PnP's carries it too (without it a refined keyframe took a covariance 16x
        smaller than the chain's: ORB on the rendered office, mean position NEES 6.5, 15 % beyond 3 sigma)."""
        return float(make_conf(pose_spec, self.tracker.pose_conf, "two-view geometry")["covariance_scale"])

    def _depth_scale_problem(self, track: TrackResult, frame: Frame, T_odom_cam: np.ndarray) -> str:
        """Why this frame's depth cannot anchor the odometry, or "" (``frontend.depth_scale_problem`` with the
        odometry's pose: it also covers a frame placed through the window when its own pose failed)."""
        kf = self.current
        if track.pose.inliers is None:
            return ""
        inl = np.asarray(track.pose.inliers, bool)
        problem = depth_scale_problem(track.pts_ref[inl], track.pts_query[inl], kf.keyframe, frame,
                                      invert(kf.T_odom_kf) @ T_odom_cam, self.tracker.selector.conf[
                                          "max_depth_scale_change"], self.conf["max_depth_m"])
        return f"{problem}: not made a keyframe" if problem else ""

    def _result(self, T, cov, status, track) -> OdometryResult:
        if T is not None and self.last_pose is not None and not status.startswith("lost"):
            self.distance_m += float(np.linalg.norm(T[:3, 3] - self.last_pose[:3, 3]))
        self.last_pose, self.last_cov = T, cov
        return OdometryResult(T, cov, status, track, timings_ms=dict(track.timings_ms))

    def _place(self, keyframe: Keyframe, T: np.ndarray, cov: np.ndarray, reset_window: bool) -> None:
        if reset_window:
            self.window.clear()
        elif self.current is not None:
            self.window.append(self.current)
            while len(self.window) > self.conf["window_keyframes"]:
                self.window.popleft()
            # links to keyframes that left the window are never read again (``_adjust_window``), and through them
            # every keyframe since the start (depth image, features) stayed alive: visual_odometry grew by
            # ~350 MB/min at 11 Hz (issue #20)
            for pk in self.window:
                pk.links = [link for link in pk.links if any(link[0] is w for w in self.window)]
        self.current = _PlacedKeyframe(keyframe, T.copy(), cov.copy())

    def _window_pnp(self, track: TrackResult, frame: Frame):
        """One robust PnP of this frame on the depth points of the current and window keyframes (its features
        matched to each; the tracker's matches for the current one). Returns (PnPResult, keyframes, owner,
        X [N x 3] points in odom, x [N x 2] pixels) with owner [N] the keyframe index of each correspondence."""
        c = self.conf
        placed = list(self.window) + [self.current]
        feats = track.query_features
        X, x, owner = [], [], []
        for i, pk in enumerate(placed):
            kf = pk.keyframe
            if feats is None or kf.depth is None or kf.K is None or kf.features.image_size != feats.image_size:
                continue
            if pk is self.current:  # matched already by the tracker
                p_kf, p_new = track.pts_ref, track.pts_query
            else:  # "fast": the window PnP's RANSAC checks every match anyway
                matcher = self.tracker.matcher
                m = (matcher.match_fast if c["window_matching"] == "fast" else matcher.match)(kf.features, feats)
                p_kf, p_new = m.points(kf.features, feats)
            z = depth_at_undistorted(kf.depth, p_kf, kf.K, kf.distortion, max_depth=c["max_depth_m"])
            ok = np.isfinite(z)
            X.append(transform_points(pk.T_odom_kf, backproject(p_kf[ok], z[ok], kf.K)))
            x.append(p_new[ok])
            owner.append(np.full(int(ok.sum()), i))
        if not X:
            return PnPResult(False, reason="no keyframe to match"), placed, np.zeros(0, int), None, None
        X, x, owner = np.concatenate(X), np.concatenate(x), np.concatenate(owner)
        h, w = frame.image.shape[:2]
        pnp = solve_pnp(X, x, np.asarray(frame.K, np.float64), (w, h), {"min_inliers": c["min_window_inliers"]})
        if pnp.valid:
            pnp.covariance = pnp.covariance * self._pnp_covariance_scale
        return pnp, placed, owner, X, x

    @staticmethod
    def _anchor(placed: list, owner: np.ndarray, pnp) -> "_PlacedKeyframe":
        """The keyframe that gave most of the PnP's inliers: the window's points carry its uncertainty."""
        return placed[int(np.bincount(owner[pnp.inliers], minlength=len(placed)).argmax())]

    def _refine(self, result: OdometryResult, frame: Frame) -> list:
        """Re-anchor a new keyframe (this frame) on the current and earlier keyframes' depth points. Returns the
        new keyframe's links (PnP inliers per earlier keyframe) when the refinement is accepted, else []."""
        c = self.conf
        if not self.window:
            return []
        t0 = time.perf_counter()
        pnp, placed, owner, X, x = self._window_pnp(result.track, frame)
        result.timings_ms["refine"] = 1e3 * (time.perf_counter() - t0)
        result.window_inliers = pnp.num_inliers
        if not pnp.valid:
            return []
        T_chain = result.T_odom_cam
        dt = float(np.linalg.norm(pnp.T_map_cam[:3, 3] - T_chain[:3, 3]))
        dr = rotation_error_deg(pnp.T_map_cam[:3, :3], T_chain[:3, :3])
        result.correction_m, result.correction_deg = dt, dr
        if dt > c["max_refine_correction_m"] or dr > c["max_refine_correction_deg"]:
            return []
        cov = pnp.covariance + self._anchor(placed, owner, pnp).covariance
        if np.trace(cov) < np.trace(result.covariance):
            result.covariance = cov
        result.T_odom_cam, result.refined = pnp.T_map_cam, True
        self.last_pose, self.last_cov = result.T_odom_cam, result.covariance
        links = []
        for i, pk in enumerate(placed):
            sel = pnp.inliers & (owner == i)
            if sel.sum() >= 6:
                links.append((pk, transform_points(invert(pk.T_odom_kf), X[sel]), x[sel]))
        return links

    @staticmethod
    def _move_chi2(delta: np.ndarray, cov: np.ndarray, cov_gauge: np.ndarray, floor: float = 1e-6) -> float:
        """Squared Mahalanobis distance of a keyframe's move (dt, dr) under the uncertainty it gained since the
        gauge keyframe (its covariance less the gauge's, eigenvalues floored at ``floor``: 1 mm, 0.06 deg)."""
        w, V = np.linalg.eigh(0.5 * ((cov - cov_gauge) + (cov - cov_gauge).T))
        y = V.T @ np.asarray(delta, np.float64)
        return float(np.sum(y ** 2 / np.maximum(w, floor)))

    def _adjust_window(self) -> float:
        """Local adjustment of the window: the poses of every keyframe but the oldest (the gauge) minimise the
        robust (Huber, 1.5 px) reprojection error of all links between window keyframes, depth points held fixed
        in their keyframes (scipy.optimize.least_squares). Returns how far the newest keyframe moved [m]; a
        solution moving any keyframe beyond max_refine_correction_m / _deg, or beyond what its covariance gained
        since the gauge allows (max_adjust_chi2), is refused (0.0)."""
        c = self.conf
        kfs = list(self.window) + [self.current]
        index = {id(pk): k for k, pk in enumerate(kfs)}
        obs = [(index[id(ref)], k, X, uv) for k, pk in enumerate(kfs) for ref, X, uv in pk.links if id(ref) in index]
        if len(kfs) < 3 or not obs:
            return 0.0
        T0 = [pk.T_odom_kf for pk in kfs]

        def poses(x):
            return [T0[0]] + [perturb_pose(T0[k], x[6 * (k - 1):6 * k]) for k in range(1, len(kfs))]

        n = len(kfs) - 1  # unknowns: (dt, dr) of keyframes 1..n, applied in odom as in ``pose_covariance``

        def project(x):
            """Residuals [2M], the poses, and per observation the pieces of the Jacobian."""
            Ts = poses(x)
            res, parts = [], []
            for i, k, X, uv in obs:
                K = kfs[k].keyframe.K
                Pw = transform_points(Ts[i], X)
                Rk, tk = Ts[k][:3, :3], Ts[k][:3, 3]
                P = (Pw - tk) @ Rk  # rows: R_k^T (Pw - t_k)
                z = P[:, 2:3]
                res.append((P[:, :2] / z * [K[0, 0], K[1, 1]] + K[:2, 2] - uv).ravel())
                parts.append((i, k, Pw, P, K))
            return np.concatenate(res), Ts, parts

        def residuals(x):
            return project(x)[0]

        def jacobian(x):
            _, Ts, parts = project(x)
            rows = []
            for i, k, Pw, P, K in parts:
                m = len(P)
                x_, y_, z = P[:, 0], P[:, 1], P[:, 2]
                dproj = np.zeros((m, 2, 3))  # d(u, v) / d(point in camera k)
                dproj[:, 0, 0], dproj[:, 0, 2] = K[0, 0] / z, -K[0, 0] * x_ / z ** 2
                dproj[:, 1, 1], dproj[:, 1, 2] = K[1, 1] / z, -K[1, 1] * y_ / z ** 2
                Rk_T = Ts[k][:3, :3].T
                J = np.zeros((m, 2, 6 * n))
                if i > 0:  # P_w moves by dt_i + dr_i x (P_w - t_i)
                    dPw = np.concatenate([np.broadcast_to(np.eye(3), (m, 3, 3)),
                                          -skew(Pw - Ts[i][:3, 3])], axis=2)  # [m x 3 x 6]
                    J[:, :, 6 * (i - 1):6 * i] += dproj @ (Rk_T @ dPw)
                if k > 0:  # camera k moves: P = R_k^T (P_w - t_k) changes by -R_k^T dt_k + R_k^T [P_w - t_k]x dr_k
                    dPk = np.concatenate([np.broadcast_to(-Rk_T, (m, 3, 3)), Rk_T @ skew(Pw - Ts[k][:3, 3])],
                                         axis=2)
                    J[:, :, 6 * (k - 1):6 * k] += dproj @ dPk
                rows.append(J.reshape(2 * m, 6 * n))
            return np.concatenate(rows)

        sol = least_squares(residuals, np.zeros(6 * n), jac=jacobian, loss="huber", f_scale=1.5, max_nfev=10,
                            x_scale=np.tile([0.01, 0.01, 0.01, 0.002, 0.002, 0.002], n))
        Ts = poses(sol.x)
        moves = [(float(np.linalg.norm(T[:3, 3] - pk.T_odom_kf[:3, 3])), rotation_error_deg(T[:3, :3],
                  pk.T_odom_kf[:3, :3])) for T, pk in zip(Ts, kfs)]
        # (success is False when max_nfev ends a run that still improved: judged by the cost instead)
        if sol.status < 0 or not np.isfinite(sol.cost) or any(
                m > c["max_refine_correction_m"] or r > c["max_refine_correction_deg"] for m, r in moves):
            return 0.0
        # a few links can pull a keyframe centimetres off in one step (ORB on dim frames: 6-9 cm at a keyframe
        # whose sigma was 2-3 cm, kept at that sigma ever after): a move its uncertainty cannot explain is refused
        chi2 = [self._move_chi2(sol.x[6 * (k - 1):6 * k], kfs[k].covariance, kfs[0].covariance)
                for k in range(1, len(kfs))]
        if c["max_adjust_chi2"] > 0 and max(chi2) > c["max_adjust_chi2"]:
            return 0.0
        for T, pk in zip(Ts, kfs):
            pk.T_odom_kf = T
        return moves[-1][0]
