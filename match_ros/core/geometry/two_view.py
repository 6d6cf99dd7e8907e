"""Two-view geometry: relative pose of a query camera in a reference camera from matched pixels.

Frames follow REP 103: camera frames are optical frames (z forward, x right,
y down). ``T_a_b`` is a 4x4 float64 transform mapping points in frame b into
frame a (the pose of b expressed in a).

Without depth the pose comes from the essential matrix and is only as good as the geometry
allows. Two failure modes are common between video frames and both are handled here:

- *The planar twin.* On a scene dominated by one plane (a wall, a facade) a 5-point RANSAC
  often returns the second solution of that plane's homography: a rotation that absorbs the
  parallax and a translation along the plane normal. It fits the epipolar constraint as well as
  the truth but puts many points behind a camera. The candidates are therefore the four
  decompositions of the RANSAC essential matrix and those of a homography fitted to the same
  matches; the one with most matches that fit *and* lie in front of both cameras wins.
- *Too little parallax.* With a small baseline (or a pure rotation) the translation direction
  is not observable: another motion explains the matches about as well. A pose keeps its
  translation only when the median parallax reaches ``min_parallax_deg`` and no other candidate
  motion explains ``ambiguity_ratio`` of its support; otherwise a rotation-only model is fitted
  and published as such when it explains the matches, else the pose is invalid, with the reason.
- *A moving object.* A camera that stands still (or only turns) while something in view moves: the object's
  coherent parallax and the static background fit one essential matrix, a translation the camera never made.
  When a pure rotation explains most of the pose's matches all over the image, or the matches that need the
  translation form one compact cluster, the pose is rotation-only (``_moving_object``).

The kept motion is the best-supported candidate by the same count the ambiguity test uses (a point whose rays
are near-parallel under both motions counts for both; a kept motion below the parallax a translation needs counts
as the rotation it will be published as), so no verdict names a rival that explains more than the pose; where the
pairwise counts go round (each motion kept in turn has a better rival) the pose is at most a rotation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np

from match_ros.core.config import Param, defaults, make_conf
from match_ros.core.geometry.absolute_pose import pose_covariance
from match_ros.core.geometry.camera import (Distortion, backproject, check_K, depth_at_undistorted,
                                            normalize_points)
from match_ros.core.geometry.five_point import essential_from_five
from match_ros.core.geometry.transforms import (invert, rotation_error_deg, rotation_from_vector, skew,
                                                translation_angle_deg)

# Variance [m^2 or unit^2] written for a translation that is not observed (rotation-only poses).
UNOBSERVED_VARIANCE = 1e6


@dataclass
class RelativePose:
    """Result of two-view estimation between a reference and a query camera.

    T_ref_query:       [4 x 4] pose of the query camera in the reference camera frame
    inliers:           [M] bool, per input match
    scale_known:       True when the translation is metric (from reference depth)
    translation_valid: False for a rotation-only pose (translation zero, not observed)
    parallax_deg:      median angle between inlier bearing rays after rotation
    covariance:        [6 x 6] of (x, y, z, rot_x, rot_y, rot_z) of T_ref_query in the reference
                       frame (first order, scaled); the translation block is that of the unit
                       direction when the scale is unknown, UNOBSERVED_VARIANCE when not observed
    reason:            why the pose is invalid or rotation-only ("" for a full pose)
    """

    valid: bool
    T_ref_query: np.ndarray = field(default_factory=lambda: np.eye(4))
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    num_inliers: int = 0
    scale_known: bool = False
    parallax_deg: float = 0.0
    reason: str = ""
    translation_valid: bool = True
    covariance: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))


pose_spec = {
    "ransac_threshold_px": Param(1.0, "Largest epipolar / reprojection error of an inlier", "px", 0.01, 100.0),
    "confidence": Param(0.999, "RANSAC confidence", min=0.5, max=0.999999),
    "max_iterations": Param(2000, "RANSAC iteration cap", min=1, max=1000000),
    "min_inliers": Param(15, "Fewer inliers give no pose", min=5, max=100000),
    "min_depth_m": Param(0.05, "Reference depths below this are invalid", "m", 0.0, 1000.0),
    "min_parallax_deg": Param(1.0, "Without depth, a translation needs this median parallax (else rotation only)",
                              "deg", 0.0, 90.0),
    "ambiguity_ratio": Param(0.9, "Another motion supported by this share of the pose's matches makes the "
                             "translation ambiguous (rotation only)", min=0.1, max=1.0),
    "max_rotation_share": Param(0.6, "A full pose is refused when a pure rotation explains this share of its "
                                "matches, spread over the image: the parallax is a moving object's, the camera only "
                                "turned (1 disables)", min=0.1, max=1.0),
    "rotation_only_min_share": Param(0.9, "A rotation-only pose must explain this share of the epipolar inliers",
                                     min=0.1, max=1.0),
    "covariance_scale": Param(16.0, "Factor on the first-order covariance (measured on rendered frame pairs)",
                              min=0.01, max=1000.0),
}
default_pose_conf = defaults(pose_spec)

# Two solutions differ when their translation directions are this far apart [deg] or their rotations [deg].
_DIFFERENT_T_DEG, _DIFFERENT_R_DEG = 15.0, 1.0
# Rays closer to parallel than this many inlier thresholds have a depth whose sign the noise decides.
_PARALLEL_RAYS = 3.0
# Candidates (by support) refined before the best is chosen.
_REFINED_CANDIDATES, _REFINE_WITHIN = 3, 0.8
# The homography only proposes candidates (its twin decompositions): a shorter search suffices (measured on 464
# pairs: the same decisions within 1-3 pairs, ORB's pose stage 18 -> 16 ms per frame)
_H_ITERATIONS = 500
# Minimal 5-point samples scored by strict support, and how many of their best essential matrices are decomposed.
_STRICT_SAMPLES, _STRICT_KEPT = 40, 6
# ... drawn when the best candidate keeps less than this share of RANSAC's epipolar inliers in front of the cameras
_STRICT_TRIGGER = 0.95
# A better-supported candidate replaces the kept motion at most this many times.
_SWITCHES = 3
# A rotation's inliers spread over this share of the pose's inliers' area (convex hull) are background, not a far
# cluster (``_moving_object``).
_ROTATION_SPREAD = 0.5
# ... and the matches that carry the parallax must cover this share of it (else one compact cluster carries it).
_PARALLAX_SPREAD = 0.5
# Pairs of matches drawn for that rotation fit: a background worth refusing a translation for holds half the
# matches or more, and 50 pairs miss it with probability 0.75^50 < 1e-6 (a full fit draws 200: a quarter of its cost).
_MOVING_ROTATION_SAMPLES = 50


def estimate_relative_pose(pts_ref: np.ndarray, pts_query: np.ndarray, K_ref: np.ndarray,
                           K_query: np.ndarray, depth_ref: np.ndarray | None = None,
                           conf: dict | None = None, depth_distortion: Distortion | None = None) -> RelativePose:
    """Relative pose T_ref_query from matched pixels.

    pts_ref, pts_query: [M x 2] pixel coordinates of the same points, of ideal pinhole cameras (undistorted:
                        ``camera.undistort_points``, when the images were not rectified)
    K_ref, K_query:     [3 x 3] camera matrices
    depth_ref:          optional [H x W] float depth of the reference image in metres;
                        when given, PnP on back-projected reference points gives a
                        metric pose (scale_known=True), else the essential matrix
                        gives a unit-length translation or a rotation-only pose.
    depth_distortion:   the lens distortion of the raw reference image depth_ref is registered to (None: none):
                        the depth of an undistorted pts_ref is read at its raw pixel.
    """
    c = make_conf(pose_spec, conf, "two-view geometry")
    pts_ref = np.asarray(pts_ref, np.float64).reshape(-1, 2)
    pts_query = np.asarray(pts_query, np.float64).reshape(-1, 2)
    if pts_ref.shape != pts_query.shape:
        raise ValueError(f"point arrays differ in shape: {pts_ref.shape} vs {pts_query.shape}")
    K_ref, K_query = check_K(K_ref), check_K(K_query)
    m = len(pts_ref)
    if m < max(5, c["min_inliers"]):
        return RelativePose(False, inliers=np.zeros(m, bool), reason=f"only {m} matches")
    if depth_ref is not None:
        result = _pose_pnp(pts_ref, pts_query, K_ref, K_query, depth_ref, c, depth_distortion)
        if result.valid:
            R = result.T_ref_query[:3, :3]
            result.parallax_deg = _median_parallax(pts_ref[result.inliers], pts_query[result.inliers],
                                                   K_ref, K_query, R)
        return result
    return _pose_essential(pts_ref, pts_query, K_ref, K_query, c)


def _pose_essential(pts_ref, pts_query, K_ref, K_query, c) -> RelativePose:
    n_ref, n_query = normalize_points(pts_ref, K_ref), normalize_points(pts_query, K_query)
    focal = 0.25 * (K_ref[0, 0] + K_ref[1, 1] + K_query[0, 0] + K_query[1, 1])
    th = c["ransac_threshold_px"] / focal
    m = len(pts_ref)
    E, mask = cv2.findEssentialMat(n_ref, n_query, np.eye(3), method=cv2.USAC_MAGSAC,
                                   prob=c["confidence"], threshold=th, maxIters=c["max_iterations"])
    if E is None or E.shape != (3, 3) or mask is None:
        return RelativePose(False, inliers=np.zeros(m, bool), reason="essential matrix failed")
    x0, x1 = _homogeneous(n_ref), _homogeneous(n_query)  # every motion below is scored on these
    candidates = _essential_candidates(E)
    H, _ = cv2.findHomography(n_ref, n_query, cv2.USAC_MAGSAC, th, maxIters=min(c["max_iterations"], _H_ITERATIONS),
                              confidence=c["confidence"])
    if H is not None and H.shape == (3, 3):
        _, Rs, ts, _ = cv2.decomposeHomographyMat(H, np.eye(3))
        candidates += [(R, t.ravel() / np.linalg.norm(t)) for R, t in zip(Rs, ts) if np.linalg.norm(t) > 1e-9]
    # x_query = R x_ref + t for every candidate
    scored = _scored(candidates, x0, x1, th)
    # RANSAC counts matches that fit the epipolar constraint; near the bas-relief ambiguity (short baselines)
    # a wrong motion fits about as many and puts a fifth of them behind a camera. Then minimal samples scored by
    # the strict support (fits and in front) add the candidates it missed.
    if scored[0][0].sum() < _STRICT_TRIGGER * int(mask.sum()):
        sampled = _strict_samples(n_ref, n_query, th, _STRICT_SAMPLES)
        scored = sorted(scored + _scored(sampled, x0, x1, th), key=lambda s: -s[0].sum())
    refined = []
    # the best after refinement is not always the best before: refine the few close to the best
    close = [x for x in scored[:_REFINED_CANDIDATES] if x[0].sum() >= _REFINE_WITHIN * scored[0][0].sum()]
    for inliers, R, t in close:
        if inliers.sum() >= 5:
            R, t = _refine_essential(R, t, x0[inliers], x1[inliers], th)
            inliers = _support(R, t, x0, x1, th)
        refined.append((inliers, R, t))
    inliers, R, t = max(refined, key=lambda s: int(s[0].sum()))
    candidates += [(R2, t2) for _, R2, t2 in refined]
    # the kept motion must be the best-supported one by the rival test's rule (``_fair_counts``): a candidate that
    # explains more of the matches than the kept one replaces it, refined (strict support alone can prefer a motion
    # that the fairer count beats). At any parallax: below min_parallax_deg the kept motion counts as the rotation
    # it will be published as (its near-parallel rays count whatever their depth's sign). Without that, a static
    # camera's near-identity motion lost to motions 1-4 deg off in rotation whose translation invents the parallax
    # (ViSP's cube: 6 (XFeat) and 15 (SIFT) of 210 verdicts named a rival that explains more than the pose; switching
    # to them by the strict count took the rotation p90 from 0.13 to 0.38 deg).
    kept = []  # (margin over the best rival, R, t, inliers, parallax, fair counts) of every motion kept so far
    for switches in range(_SWITCHES + 1):
        parallax = _median_parallax(pts_ref[inliers], pts_query[inliers], K_ref, K_query, R.T)
        fair = _fair_counts(R, t, candidates, x0, x1, th, parallax < c["min_parallax_deg"])
        kept.append((float(np.min(fair[1] - fair[2])) if len(fair[0]) else np.inf, R, t, inliers, parallax, fair))
        better = _best_rival(*fair)
        if better is not None and any(translation_angle_deg(better[1], t2) < _DIFFERENT_T_DEG and rotation_error_deg(
                better[0], R2) < _DIFFERENT_R_DEG for _, R2, t2, *_ in kept):
            better = None  # back to a motion kept before: the counts go round; the one that fares best is kept
        if switches == _SWITCHES or better is None:
            _, R, t, inliers, parallax, fair = max(kept, key=lambda k: k[0])
            break
        R, t = better
        inliers = _support(R, t, x0, x1, th)
        if inliers.sum() >= 5:  # refined, unless that loses support (it can slide off a near-degenerate motion)
            R2, t2 = _refine_essential(R, t, x0[inliers], x1[inliers], th)
            refined_support = _support(R2, t2, x0, x1, th)
            # ... or the unrefined motion fares better against the other candidates by the fair count (refinement
            # can slide a motion off the near-parallel rays it shared with a rival, or lift its parallax over
            # min_parallax_deg; the two would then switch back and forth)
            margins = [_margin(R_, t_, support, others, x0, x1, th, c, pts_ref, pts_query, K_ref, K_query)
                       for R_, t_, support, others in ((R2, t2, refined_support, candidates + [(R, t)]),
                                                       (R, t, inliers, candidates))]
            if refined_support.sum() >= inliers.sum() and margins[0] >= margins[1]:
                R, t, inliers = R2, t2, refined_support
                candidates.append((R, t))
    strict = inliers  # the covariance's matches (with the near-parallel ones it would shrink below the error)
    if parallax < c["min_parallax_deg"]:  # a rotation: its near-parallel matches are explained too (_fair_counts)
        inliers = inliers | (np.abs(_sampson(R, t, x0, x1)) < th) & (_ray_angles(R, x0, x1) < _PARALLEL_RAYS * th)
    n_good = int(inliers.sum())
    if n_good < c["min_inliers"]:
        return RelativePose(False, inliers=inliers, num_inliers=n_good,
                            reason=f"{n_good} inliers < min_inliers {c['min_inliers']}")
    if _best_rival(*fair) is not None:
        # the pairwise fair count is not transitive: every motion kept in turn had a rival that explains more (a
        # cycle; 4 of 420 static-camera pairs of ViSP's cube, none of 464 rendered pairs): no motion is the
        # best-supported, the pose is at most a rotation, from the pure-rotation fit
        apart, owns, rivals = fair
        k = int(np.argmax(rivals - owns))
        return _rotation_only(n_ref, n_query, th, focal, inliers, parallax,
                              f"no best-supported motion: each kept motion has a rival that explains more (here "
                              f"{rivals[k]} matches against {owns[k]}, a motion {apart[k][2]:.0f} deg / "
                              f"{apart[k][3]:.1f} deg apart)", c, pts_ref=pts_ref)
    other_t, other_R = _rivals(*fair, c["ambiguity_ratio"])
    cov = _essential_covariance(R, t, x0[strict], x1[strict], focal) * c["covariance_scale"]
    moving, rotation = "", None
    if parallax >= c["min_parallax_deg"] and not other_t:
        rotation = _fit_rotation(n_ref, n_query, th, _MOVING_ROTATION_SAMPLES)
        moving = _moving_object(pts_ref, inliers, rotation[1], c["max_rotation_share"])
    if parallax < c["min_parallax_deg"]:
        why_not = f"parallax {parallax:.2f} deg < {c['min_parallax_deg']:g}: translation not observable"
    elif other_t:
        why_not = f"ambiguous translation: {other_t}"
    elif moving:
        # the camera only turned (or stood still) and something in view moved: the rotation is that of the
        # matches spread over the image, not the pose's (which bends to fit the moving part as well)
        return _rotation_only(n_ref, n_query, th, focal, inliers, parallax, f"parallax from a moving object: {moving}",
                              c, rotation)
    else:
        T_query_ref = np.eye(4)
        T_query_ref[:3, :3], T_query_ref[:3, 3] = R, t
        return RelativePose(True, invert(T_query_ref), inliers, n_good, scale_known=False,
                            parallax_deg=parallax, covariance=cov)
    if not other_R and parallax < c["min_parallax_deg"]:
        # under the parallax a translation needs, one compact cluster of matches that no rotation explains is
        # something moving in front of a still camera (``_moving_object``'s second signature): the kept motion's
        # rotation bends to fit it, the pure rotation of the rest is the camera's. (The first signature, a rotation
        # explaining 60 % all over the image, is also what a translating camera's far points give here: on rendered
        # pairs the pure rotation was 0.5 deg off where the kept motion is 0.1 deg.) ViSP's cube, SIFT: rotation p90
        # 0.44 -> 0.04 deg; XFeat 0.21 unchanged; rendered pairs: no change.
        rotation = _fit_rotation(n_ref, n_query, th, _MOVING_ROTATION_SAMPLES)
        background = _moving_object(pts_ref, inliers, rotation[1], 1.0)
        if background and rotation[1].sum() < c["rotation_only_min_share"] * n_good:
            return _rotation_only(n_ref, n_query, th, focal, inliers, parallax,
                                  f"{why_not}; the rest moves otherwise: {background}", c, rotation)
    if not other_R:  # the rotation is not in doubt: keep it, drop the translation
        T_ref_query = np.eye(4)
        T_ref_query[:3, :3] = R.T
        cov[:3, :] = cov[:, :3] = 0.0
        cov[:3, :3] = np.eye(3) * UNOBSERVED_VARIANCE
        return RelativePose(True, T_ref_query, inliers, n_good, scale_known=False, parallax_deg=parallax,
                            reason=f"rotation only ({why_not})", translation_valid=False, covariance=cov)
    return _rotation_only(n_ref, n_query, th, focal, inliers, parallax, f"{why_not}; ambiguous rotation: {other_R}",
                          c, pts_ref=pts_ref)


def _fair_counts(R, t, candidates, n_ref, n_query, th, rotation: bool = False):
    """The candidates that differ from the motion (R, t) (by _DIFFERENT_T_DEG or _DIFFERENT_R_DEG) as
    [(R2, t2, translation angle deg, rotation angle deg)], and per candidate (matches the motion explains, matches
    the candidate explains) [C] each, compared fairly: a point whose rays are near-parallel under both motions
    counts for both whatever the sign of its depth.

    rotation: the motion's median parallax over its strict support is below min_parallax_deg (measured by the
    caller): it will be published as a rotation, and as a rotation it explains every match that fits with its rays
    near-parallel, whatever the sign of the depth (the noise's there). Without this a static camera's near-identity
    motion loses to a motion off in rotation whose translation invents the parallax (it puts the points in front).
    The candidates keep the two-motion rule: counted as rotations too, they made 8 correct rotation-only poses of
    rendered pairs ambiguous (they are 1 deg off in rotation and explain as much), and a candidate is a rival for
    its translation."""
    apart = [(R2, t2, translation_angle_deg(t2, t), rotation_error_deg(R2, R)) for R2, t2 in candidates]
    apart = [a for a in apart if a[2] >= _DIFFERENT_T_DEG or a[3] >= _DIFFERENT_R_DEG]
    if not apart:
        return [], np.zeros(0, int), np.zeros(0, int)
    Rs, ts = np.array([a[0] for a in apart]), np.array([a[1] for a in apart])
    parallel = _ray_angles(R, n_ref, n_query) < _PARALLEL_RAYS * th
    both = parallel & (_ray_angles(Rs, n_ref, n_query) < _PARALLEL_RAYS * th)  # [C x M]
    fits, front = _fits_in_front(R[None], t[None], n_ref, n_query, th)
    fits2, front2 = _fits_in_front(Rs, ts, n_ref, n_query, th)
    owns = fits & (front | both | (parallel & rotation))
    rivals = fits2 & (front2 | both)
    return apart, np.sum(owns, axis=1), np.sum(rivals, axis=1)


def _margin(R, t, support, candidates, x0, x1, th, c, pts_ref, pts_query, K_ref, K_query) -> float:
    """How many more matches the motion (R, t) explains than its best rival among the candidates, by the fair
    count (``_fair_counts``; support: its strict support, whose median parallax decides whether it counts as a
    rotation); inf without a rival."""
    parallax = _median_parallax(pts_ref[support], pts_query[support], K_ref, K_query, R.T)
    _, owns, rivals = _fair_counts(R, t, candidates, x0, x1, th, parallax < c["min_parallax_deg"])
    return float(np.min(owns - rivals)) if len(owns) else np.inf


def _best_rival(apart, owns, rivals):
    """(R2, t2) of the candidate that explains the most matches, when that is more than the motion explains by the
    same fair count (``_fair_counts``' results); else None."""
    if not apart:
        return None
    k = int(np.argmax(rivals - owns))
    return (apart[k][0], apart[k][1]) if rivals[k] > owns[k] else None


def _rivals(apart, owns, rivals, ratio) -> tuple[str, str]:
    """(a rival motion with another translation, one with another rotation): descriptions, "" when none.

    A rival is a candidate motion that explains ``ratio`` of the matches the pose explains, compared
    fairly (``_fair_counts``' results): a point whose rays are near-parallel under both motions counts for both.
    """
    other_t = other_R = ""
    for (_, _, dt, dR), own, rival in zip(apart, owns, rivals):
        if rival >= ratio * own:
            text = f"a motion {dt:.0f} deg / {dR:.1f} deg apart explains {rival} of the pose's {own} matches"
            other_t = other_t or (text if dt >= _DIFFERENT_T_DEG else "")
            other_R = other_R or (text if dR >= _DIFFERENT_R_DEG else "")
    return other_t, other_R


def _rotation_only(n_ref, n_query, th, focal, epipolar, parallax, why_not, c, moving=None,
                   pts_ref=None) -> RelativePose:
    """The pose of a camera that (as far as the matches tell) only turned, or no pose.

    epipolar: [M] bool, the matches the best essential-matrix motion explains. An invalid pose keeps them
    as its inliers: the matches are fine, only the geometry is undetermined (keyframe selection counts them).
    The rotation must explain ``rotation_only_min_share`` of them, unless the rest is known to move otherwise:
    moving, the rotation fit (R, inliers) of ``_moving_object``'s verdict, needs only min_inliers; so does a
    rotation that shows the first signature of ``_moving_object`` itself (pts_ref [M x 2] pixels given: it explains
    ``max_rotation_share`` of the matches, spread over the image; the rest is something moving in front of a still
    or turning camera).
    """
    n_epipolar = int(epipolar.sum())
    R, inliers = _fit_rotation(n_ref, n_query, th) if moving is None else moving
    n_rot = int(inliers.sum())
    if moving is None and pts_ref is not None and n_rot < c["rotation_only_min_share"] * n_epipolar:
        background = _moving_object(pts_ref, epipolar, inliers, c["max_rotation_share"])
        if background.startswith("a rotation explains"):
            moving, why_not = (R, inliers), f"{why_not}; the rest moves otherwise: {background}"
    if n_rot < max(c["min_inliers"], c["rotation_only_min_share"] * n_epipolar * (moving is None)):
        return RelativePose(False, inliers=epipolar, num_inliers=n_epipolar, parallax_deg=parallax,
                            reason=f"{why_not}; a rotation explains only {n_rot} of {n_epipolar} matches")
    T_ref_query = np.eye(4)
    T_ref_query[:3, :3] = R.T
    cov = np.zeros((6, 6))
    cov[:3, :3] = np.eye(3) * UNOBSERVED_VARIANCE
    cov[3:, 3:] = _rotation_covariance(R, n_ref[inliers], n_query[inliers], focal) * c["covariance_scale"]
    return RelativePose(True, T_ref_query, inliers, n_rot, scale_known=False, parallax_deg=parallax,
                        reason=f"rotation only ({why_not})", translation_valid=False, covariance=cov)


def _hull_area(pts: np.ndarray) -> float:
    """Area [px^2] of the convex hull of [N x 2] points (0 for fewer than 3)."""
    return float(cv2.contourArea(cv2.convexHull(pts.astype(np.float32)))) if len(pts) >= 3 else 0.0


def _moving_object(pts_ref, inliers, rot, max_share) -> str:
    """Why a full pose's parallax comes from something moving in front of a camera that only turned, or "".

    A static (or purely rotating) camera watching a moving object: the object's matches move coherently and an
    essential matrix explains them together with (part of) the static background, a translation plus a rotation
    that bends to fit both. Two signatures, either refuses the translation:

    - a pure rotation explains as many matches as ``max_share`` of the pose's inliers, and its inliers cover at
      least _ROTATION_SPREAD of the pose inliers' area (convex hull): the background, all over the image;
    - the pose's inliers that no rotation explains (the ones whose parallax the translation is needed for) cover
      less than _PARALLAX_SPREAD of the pose inliers' area: one compact cluster carries the parallax.

    With a translating camera a rotation explains only the points too far away (or too near the epipole) to show
    parallax: on 193 full poses of rendered pairs (room, corridor, facade, office) at most 0.53 of the inliers, and
    the others cover 0.95 of the area or more; on ViSP's cube (a static camera, a hand moving a cube) 0.63-1.0 and
    0.08-0.32 (SIFT), 0.78 and 0.81 (XFeat + LighterGlue).

    pts_ref: [M x 2] reference pixels; inliers: [M] bool, the pose's; rot: [M] bool, a pure rotation's
    (``_fit_rotation``).
    """
    n_pose, n_rot = int(inliers.sum()), int(rot.sum())
    area = max(_hull_area(pts_ref[inliers]), 1e-9)
    spread = _hull_area(pts_ref[rot]) / area
    if n_rot >= max_share * n_pose and spread >= _ROTATION_SPREAD:
        return (f"a rotation explains {n_rot} matches (the pose {n_pose}) over {100 * min(spread, 1.0):.0f} % of "
                f"the pose's area")
    carried = inliers & ~rot
    cluster = _hull_area(pts_ref[carried]) / area
    if cluster < _PARALLAX_SPREAD:
        return (f"the {int(carried.sum())} matches a rotation does not explain (of {n_pose}) cover "
                f"{100 * cluster:.0f} % of the pose's area")
    return ""


def _pose_pnp(pts_ref, pts_query, K_ref, K_query, depth_ref, c, depth_distortion=None) -> RelativePose:
    m = len(pts_ref)
    z = depth_at_undistorted(depth_ref, pts_ref, K_ref, depth_distortion, min_depth=c["min_depth_m"])
    has_depth = np.isfinite(z)
    if has_depth.sum() < max(6, c["min_inliers"]):
        return RelativePose(False, inliers=np.zeros(m, bool),
                            reason=f"only {int(has_depth.sum())} matches with valid depth")
    X_ref = backproject(pts_ref[has_depth], z[has_depth], K_ref)
    inliers = np.zeros(m, bool)
    try:
        ok, rvec, tvec, idx = cv2.solvePnPRansac(X_ref, pts_query[has_depth], K_query, None,
                                                 iterationsCount=c["max_iterations"],
                                                 reprojectionError=c["ransac_threshold_px"] * 2.0,
                                                 confidence=c["confidence"], flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error as e:  # SQPnP asserts on points bunched together (every match on one small patch)
        return RelativePose(False, inliers=inliers, reason=f"PnP failed: {e.err.strip() or 'OpenCV error'}")
    if not ok or idx is None or len(idx) < c["min_inliers"]:
        n = 0 if idx is None else len(idx)
        return RelativePose(False, inliers=inliers, num_inliers=n, reason=f"PnP found {n} inliers")
    sel = idx.ravel()
    X_in, x_in = X_ref[sel], pts_query[has_depth][sel]
    rvec, tvec = cv2.solvePnPRefineLM(X_in, x_in, K_query, None, rvec, tvec)
    inliers[np.flatnonzero(has_depth)[sel]] = True
    T_query_ref = np.eye(4)
    T_query_ref[:3, :3], T_query_ref[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    T_ref_query = invert(T_query_ref)
    residual = cv2.projectPoints(X_in, rvec, tvec, K_query, None)[0].reshape(-1, 2) - x_in
    sigma = max(float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1)) / 2.0)), 0.1)
    cov = pose_covariance(T_ref_query, X_in, x_in, K_query, sigma) * c["covariance_scale"]
    return RelativePose(True, T_ref_query, inliers, int(inliers.sum()), scale_known=True, covariance=cov)


def _essential_candidates(E: np.ndarray) -> list:
    R1, R2, t = cv2.decomposeEssentialMat(E)
    return [(R, s * t.ravel()) for R in (R1, R2) for s in (1.0, -1.0)]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product over the last axis of broadcastable [... x 3] arrays; np.cross costs more in dispatch than
    in arithmetic."""
    a, b = np.broadcast_arrays(a, b)
    return np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def _homogeneous(n: np.ndarray) -> np.ndarray:
    """[N x 3] homogeneous coordinates of [N x 2] points (returned unchanged when already [N x 3])."""
    return n if n.shape[1] == 3 else np.column_stack([n, np.ones(len(n))])


def _sampson(Rs, ts, n_ref, n_query) -> np.ndarray:
    """Signed Sampson distance [normalised image units] of each match to x_query^T [t]x R x_ref = 0.

    One motion (R [3 x 3], t [3]) -> [M]; C motions (Rs [C x 3 x 3], ts [C x 3]) -> [C x M] in one pass.
    n_ref, n_query: [M x 2] normalised points, or [M x 3] homogeneous ones (cheaper when reused).
    """
    ts = np.asarray(ts)
    return _sampson_of(skew(ts / np.linalg.norm(ts, axis=-1, keepdims=True)) @ Rs, _homogeneous(n_ref),
                       _homogeneous(n_query))


def _sampson_of(E, x0, x1) -> np.ndarray:
    """Signed Sampson distances of homogeneous matches x0, x1 [M x 3] to essential matrices E [3 x 3] -> [M]
    or [S x 3 x 3] -> [S x M] (any scale of E: the distance does not depend on it).

    All S matrices in one [M x 3] @ [3 x 3S] product each (a batched matmul of S small ones costs twice as much),
    kept [M x S x 3] with the three terms written out (1.7x faster than np.sum over a transposed view; the same
    values)."""
    if E.ndim == 2:
        return _sampson_of(E[None], x0, x1)[0]
    s = len(E)
    Ex0 = (x0 @ E.transpose(2, 0, 1).reshape(3, 3 * s)).reshape(-1, s, 3)
    Etx1 = (x1 @ E.transpose(1, 0, 2).reshape(3, 3 * s)).reshape(-1, s, 3)
    den = Ex0[..., 0] ** 2 + Ex0[..., 1] ** 2 + Etx1[..., 0] ** 2 + Etx1[..., 1] ** 2
    num = Ex0[..., 0] * x1[:, None, 0] + Ex0[..., 1] * x1[:, None, 1] + Ex0[..., 2] * x1[:, None, 2]
    return (num / np.sqrt(np.maximum(den, 1e-30))).T


def _fits_in_front(Rs, ts, n_ref, n_query, th) -> tuple[np.ndarray, np.ndarray]:
    """[C x M] bool twice for C motions: the match fits (Sampson error < th); its point is in front of both
    cameras (depth signs of z_q x_q = z_r (R x_r) + t, crossed with x_q for z_r and with R x_r for z_q)."""
    x0, x1 = _homogeneous(n_ref), _homogeneous(n_query)
    fits = np.abs(_sampson(Rs, ts, x0, x1)) < th
    y = x0 @ np.swapaxes(Rs, -1, -2)  # [C x M x 3]
    t = np.asarray(ts)[:, None, :]
    y_x = _cross(y, x1)
    in_front = (np.sum(_cross(t, x1) * y_x, axis=-1) < 0) & (np.sum(_cross(t, y) * y_x, axis=-1) < 0)
    return fits, in_front


def _support(R, t, n_ref, n_query, th, exempt: np.ndarray | None = None) -> np.ndarray:
    """[M] bool: the match fits the motion (Sampson error < th) with its point in front of both cameras.

    exempt: [M] bool, points that count whatever the sign of their depth. Two motions are compared
    with the points whose rays are within a few noise levels of parallel under both (far away, or near
    the epipole: the noise decides the sign of their depth, ORB-SLAM's rule). Exempting per motion
    would let the planar twin win: it makes rays parallel by absorbing the parallax into its rotation.
    """
    fits, in_front = _fits_in_front(np.asarray(R)[None], np.asarray(t)[None], n_ref, n_query, th)
    if exempt is not None:
        in_front |= exempt
    return (fits & in_front)[0]


def _scored(motions: list, x0, x1, th) -> list:
    """[(support [M] bool, R, t)] of the motions (R, t), most support first (ties keep the given order)."""
    if not motions:
        return []
    fits, in_front = _fits_in_front(np.array([R for R, _ in motions]), np.array([t for _, t in motions]), x0, x1,
                                    th)
    support = fits & in_front
    return sorted(((support[k], R, t) for k, (R, t) in enumerate(motions)), key=lambda s: -s[0].sum())


def _strict_samples(n_ref, n_query, th, samples: int, seed: int = 0) -> list:
    """Motions (R, t) from random 5-point samples: the essential matrices with most epipolar inliers, each
    decomposed into the motion with most strict support (a short list of candidates, not a full RANSAC)."""
    rng = np.random.default_rng(seed)
    idx = np.array([rng.choice(len(n_ref), 5, replace=False) for _ in range(samples)], int).reshape(samples, 5)
    Es, _ = essential_from_five(n_ref[idx], n_query[idx])  # [K x 3 x 3], all samples' solutions in one solve
    if not len(Es):
        return []
    err = np.abs(_sampson_of(Es, _homogeneous(n_ref), _homogeneous(n_query)))  # [K x M], all at once
    best = np.argsort(-np.sum(err < th, axis=1))[:_STRICT_KEPT]
    decomposed = [Rt for k in best for Rt in _essential_candidates(Es[k])]  # 4 per essential matrix
    fits, in_front = _fits_in_front(np.array([R for R, _ in decomposed]), np.array([t for _, t in decomposed]),
                                    n_ref, n_query, th)
    counts = np.sum(fits & in_front, axis=1).reshape(-1, 4)
    return [decomposed[4 * i + int(np.argmax(row))] for i, row in enumerate(counts)]


def _ray_angles(R, n_ref, n_query) -> np.ndarray:
    """[M] angle [rad] between each reference ray and its query ray rotated into the reference frame ([C x M]
    for rotations [C x 3 x 3])."""
    a, b = _homogeneous(n_ref), _homogeneous(n_query) @ R  # rows of the latter: R^T x_query
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _sphere_basis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the tangent plane of the unit sphere at t."""
    a = np.array([0.0, t[2], -t[1]]) if abs(t[0]) < 0.9 else np.array([-t[2], 0.0, t[0]])  # t x e_x or t x e_y
    a /= np.linalg.norm(a)
    return a, np.array([t[1] * a[2] - t[2] * a[1], t[2] * a[0] - t[0] * a[2], t[0] * a[1] - t[1] * a[0]])


def _perturb(R, t, d):
    """(R, t) moved by d = (small rotation [3], step on the unit sphere [2])."""
    a, b = _sphere_basis(t)
    t_new = t + d[3] * a + d[4] * b
    return rotation_from_vector(d[:3]) @ R, t_new / np.linalg.norm(t_new)


def _small_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation within a few degrees of identity (cv2.Rodrigues returns 0 below 1e-5 rad)."""
    return 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])


def _jacobian(residuals, n_params: int, step: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    r0 = residuals(np.zeros(n_params))
    J = np.column_stack([(residuals(step * np.eye(n_params)[k]) - r0) / step for k in range(n_params)])
    return r0, J


@functools.lru_cache(maxsize=4)
def _step_rotations(step: float) -> tuple:
    """rotation_from_vector of 0 and of step along x, y, z (what ``_perturb`` computes for those steps)."""
    return tuple(rotation_from_vector(w) for w in np.vstack([np.zeros(3), step * np.eye(3)]))


def _jacobian_motions(R, t, step: float) -> tuple[np.ndarray, np.ndarray]:
    """The six motions ``_perturb(R, t, d)`` for d = 0 and d = step * e_k (k = 0..4), as [6 x 3 x 3] and [6 x 3]:
    the same arithmetic, without six sphere bases and six Rodrigues calls."""
    a, b = _sphere_basis(t)
    d = np.vstack([np.zeros(5), step * np.eye(5)])
    moved = t + d[:, 3:4] * a + d[:, 4:5] * b
    ts = np.array([v / np.linalg.norm(v) for v in moved])
    I, Rx, Ry, Rz = _step_rotations(step)
    return np.array([I @ R, Rx @ R, Ry @ R, Rz @ R, I @ R, I @ R]), ts


def _sampson_jacobian(R, t, x0, x1, step: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Sampson errors [M] of (R, t) and their forward-difference Jacobian [M x 5] in the ``_perturb`` parameters,
    the six motions evaluated in one pass."""
    Rs, ts = _jacobian_motions(R, t, step)
    S = _sampson(Rs, ts, x0, x1)
    return S[0], (S[1:] - S[0]).T / step


def _refine_essential(R, t, n_ref, n_query, th, iterations: int = 10):
    """Levenberg-Marquardt on the Cauchy-weighted Sampson errors over (rotation, unit translation)."""
    t = t / np.linalg.norm(t)
    n_ref, n_query = _homogeneous(n_ref), _homogeneous(n_query)
    lam = 1e-3
    for _ in range(iterations):
        r, J = _sampson_jacobian(R, t, n_ref, n_query)
        w = 1.0 / (1.0 + (r / th) ** 2)
        A, g = (J.T * w) @ J, (J.T * w) @ r
        cost = np.sum(w * r ** 2)
        while lam < 1e8:
            R_new, t_new = _perturb(R, t, -np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-12), g))
            new_cost = np.sum(w * _sampson(R_new, t_new, n_ref, n_query) ** 2)
            if new_cost < cost:
                R, t, lam = R_new, t_new, lam * 0.1
                break
            lam *= 10.0
        else:
            break
        if new_cost > (1.0 - 1e-4) * cost:  # converged
            break
    return R, t


def _essential_covariance(R, t, n_ref, n_query, focal) -> np.ndarray:
    """First-order [6 x 6] covariance of T_ref_query for a unit-translation pose, from the Sampson residuals."""
    r, J = _sampson_jacobian(R, t, _homogeneous(n_ref), _homogeneous(n_query))
    sigma2 = max(float(np.sum(r ** 2)) / max(len(r) - 5, 1), (0.1 / focal) ** 2)
    try:
        cov5 = sigma2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        return np.full((6, 6), np.nan)

    def pose_vector(d):
        # T_ref_query = inv([R_d | t_d]): position -R_d^T t_d; rotation R_d^T = Exp(w) R^T, w = Log(R_d^T R)
        R_d, t_d = _perturb(R, t, d)
        return np.concatenate([-R_d.T @ t_d, _small_log(R_d.T @ R)])

    _, G = _jacobian(pose_vector, 5, step=1e-6)
    return G @ cov5 @ G.T


def _fit_rotation(n_ref, n_query, th, iterations: int = 200, seed: int = 0):
    """Pure rotation x_query ~ R x_ref: RANSAC over pairs of bearings, then least squares on the inliers.

    Returns (R, inliers) with inliers the matches whose rotated ray lands within th (normalised units).
    """
    b_ref = _homogeneous(n_ref)
    b_query = _homogeneous(n_query)
    u_ref = b_ref / np.linalg.norm(b_ref, axis=1, keepdims=True)
    u_query = b_query / np.linalg.norm(b_query, axis=1, keepdims=True)

    def kabsch(idx):  # [S x k] samples of k matches -> [S x 3 x 3] rotations
        U, _, Vt = np.linalg.svd(np.einsum("skd,ske->sde", u_query[idx], u_ref[idx]))
        D = np.ones((len(idx), 3))
        D[:, 2] = np.linalg.det(U @ Vt)
        return (U * D[:, None, :]) @ Vt

    def inliers_of(Rs):  # [S x 3 x 3] -> [S x M] bool
        p = b_ref @ np.swapaxes(Rs, -1, -2)
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.linalg.norm(p[..., :2] / p[..., 2:3] - n_query, axis=-1)
        return (p[..., 2] > 0) & (np.nan_to_num(err, nan=np.inf) < th)

    rng = np.random.default_rng(seed)
    Rs = kabsch(np.array([rng.choice(len(n_ref), 2, replace=False) for _ in range(iterations)]))
    inliers = inliers_of(Rs)
    counts = inliers.sum(axis=1)
    k = int(np.argmax(counts))  # the first sample with most inliers
    best_R, best = (Rs[k], inliers[k]) if counts[k] > 0 else (np.eye(3), np.zeros(len(n_ref), bool))
    for _ in range(2):
        if best.sum() < 2:
            break
        best_R = kabsch(np.flatnonzero(best)[None])[0]
        best = inliers_of(best_R[None])[0]
    return best_R, best


def _rotation_covariance(R, n_ref, n_query, focal) -> np.ndarray:
    """First-order [3 x 3] covariance of the rotation of T_ref_query (about the reference axes)."""
    b_ref = _homogeneous(n_ref)

    def residuals(d):
        p = b_ref @ (rotation_from_vector(d) @ R).T
        return (p[:, :2] / p[:, 2:3] - n_query).ravel()

    r, J = _jacobian(residuals, 3, step=1e-6)
    sigma2 = max(float(np.sum(r ** 2)) / max(len(r) - 3, 1), (0.1 / focal) ** 2)
    try:
        cov_query_axes = sigma2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        return np.full((3, 3), np.nan)
    # the perturbation was applied about the query axes (R maps reference to query): rotate into the reference
    return R.T @ cov_query_axes @ R


def _median_parallax(p_ref, p_query, K_ref, K_query, R_ref_query) -> float:
    """Median angle [deg] between reference rays and rotation-compensated query rays."""
    if len(p_ref) == 0:
        return 0.0
    n_ref, n_query = normalize_points(p_ref, K_ref), normalize_points(p_query, K_query)
    return float(np.degrees(np.median(_ray_angles(R_ref_query.T, n_ref, n_query))))
