"""Lens distortion (issue #20): camera_info's plumb_bob / rational_polynomial / equidistant distortion undone on the
keypoints (not the images) by the core, a model it cannot undo refused with image_proc's rectified topic named.

The distorted images are made from rendered ones: a frame rendered by an ideal pinhole camera with the same focal
length and a wider canvas, remapped (cv2.remap) so that raw pixel p shows what the ideal camera sees at
undistort(p) (OpenCV's own undistortPoints, not the code under test). The poses are checked against the renderer's
ground truth: with the distortion given as accurate as on undistorted images, without it clearly worse (what
happened before: a confident pose centimetres and degrees off)."""
import cv2
import numpy as np
import pytest
import torch

from match_ros.core.features.matcher import Matcher, build_matcher
from match_ros.core.features.types import Features, Matches
from match_ros.core.geometry.camera import (Distortion, distort_points, project, undistort_features,
                                            undistort_points)
from match_ros.core.geometry.transforms import invert, rotation_error_deg
from match_ros.core.relocalization.localizer import Localizer
from match_ros.core.relocalization.mapping import MapBuilder
from match_ros.core.tracking.frontend import Frame, KeyframeTracker
from match_ros.sim import Camera, make_sequence

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable run time on a busy runner (conftest)

CAMERA = Camera()  # 640 x 480, f 525 px
K = CAMERA.K
PLUMB_BOB = Distortion("plumb_bob", [-0.28, 0.07, 0.0008, -0.0012, 0.0])
EQUIDISTANT = Distortion("equidistant", [-0.013, 0.02, -0.01, 0.002])
RATIONAL = Distortion("rational_polynomial", [-0.28, 0.07, 0.0008, -0.0012, 0.0, 0.01, 0.0, 0.0])


def _opencv_undistort(uv: np.ndarray, d: Distortion) -> np.ndarray:
    src = np.ascontiguousarray(uv, np.float64).reshape(-1, 1, 2)
    if d.model == "equidistant":
        out = cv2.fisheye.undistortPoints(src, K, d.coeffs, R=np.eye(3), P=K, criteria=(3, 100, 1e-10))
    else:
        out = cv2.undistortPoints(src, K, d.coeffs, R=np.eye(3), P=K, criteria=(3, 100, 1e-10))
    return out.reshape(-1, 2)


def _opencv_project(X: np.ndarray, d: Distortion) -> np.ndarray:
    """Raw (distorted) pixels of camera-frame points, by OpenCV's projection."""
    if d.model == "equidistant":
        return cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, d.coeffs)[0].reshape(-1, 2)
    return cv2.projectPoints(X, np.zeros(3), np.zeros(3), K, d.coeffs)[0].reshape(-1, 2)


class Lens:
    """Renders frames of a sequence as a camera with distortion ``d`` and as the ideal camera (a crop of the same
    wide render, so both show exactly the same scene)."""

    def __init__(self, seq, d: Distortion):
        self.seq, self.d = seq, d
        h, w = CAMERA.height, CAMERA.width
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        ideal = _opencv_undistort(np.c_[xs.ravel(), ys.ravel()], d).reshape(h, w, 2)
        lo, hi = np.floor(ideal.min((0, 1))) - 2, np.ceil(ideal.max((0, 1))) + 2
        self.margin = np.maximum(np.maximum(-lo, hi - [w - 1, h - 1]), 0).astype(int)  # (mx, my)
        mx, my = self.margin
        self.wide = Camera(w + 2 * mx, h + 2 * my, CAMERA.fx, CAMERA.fy, CAMERA.cx + mx, CAMERA.cy + my)
        self.map = (ideal + [mx, my]).astype(np.float32)
        self._cache = {}

    def __call__(self, i: int):
        """(raw rgb, raw depth, ideal rgb, ideal depth, T_world_cam) of frame i."""
        if i not in self._cache:
            T = self.seq.poses[i][1]
            rgb, depth = self.seq.scene.render(T, self.wide)
            mx, my = self.margin
            crop = (slice(my, my + CAMERA.height), slice(mx, mx + CAMERA.width))
            self._cache[i] = (cv2.remap(rgb, self.map[..., 0], self.map[..., 1], cv2.INTER_LINEAR),
                              cv2.remap(depth, self.map[..., 0], self.map[..., 1], cv2.INTER_NEAREST),
                              np.ascontiguousarray(rgb[crop]), np.ascontiguousarray(depth[crop]), T)
        return self._cache[i]


@pytest.fixture(scope="module")
def room():
    return make_sequence("room", n_frames=60, seed=0)


@pytest.fixture(scope="module")
def lenses(room):
    return {"plumb_bob": Lens(room, PLUMB_BOB), "equidistant": Lens(room, EQUIDISTANT)}


@pytest.fixture(scope="module")
def matcher():
    return build_matcher("orb_teblid", {"max_keypoints": 1024})


def errors(T, T_gt):
    return float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3])), rotation_error_deg(T[:3, :3], T_gt[:3, :3])


# ------------------------------------------------------------------------------------------------ points
@pytest.mark.parametrize("d", [PLUMB_BOB, RATIONAL, EQUIDISTANT], ids=lambda d: d.model)
def test_undistorted_points_are_where_the_pinhole_camera_sees_them(d):
    """Points projected with distortion by cv2.projectPoints come back to their pinhole projection with K (to
    1e-6 px over the whole image, corners included), and distort_points is the inverse."""
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-0.6, 0.6, (3000, 1)), rng.uniform(-0.45, 0.45, (3000, 1)), np.ones(3000)]
    X *= rng.uniform(0.5, 10.0, (3000, 1))
    raw = _opencv_project(X, d)
    ideal, _ = project(X, K)
    assert np.abs(raw - ideal).max() > 30.0  # the distortion is large
    np.testing.assert_allclose(undistort_points(raw, K, d), ideal, atol=1e-6)
    np.testing.assert_allclose(distort_points(ideal, K, d), raw, atol=1e-6)


def test_no_or_zero_distortion_is_the_identity_without_a_copy():
    uv = np.random.default_rng(1).uniform(0, 600, (100, 2))
    for d in (None, Distortion("plumb_bob", [0, 0, 0, 0, 0]), Distortion("equidistant", [0, 0, 0, 0]),
              Distortion("rational_polynomial", [])):
        assert undistort_points(uv, K, d) is uv and distort_points(uv, K, d) is uv
    f = Features(torch.from_numpy(uv.astype(np.float32)), torch.zeros(100, 8), torch.ones(100), (640, 480))
    assert undistort_features(f, K, None) is f and undistort_features(f, K, Distortion("plumb_bob", [0] * 5)) is f


def test_undistorted_features_keep_descriptors_scores_and_raw_keypoints():
    rng = np.random.default_rng(2)
    kp = torch.from_numpy(rng.uniform(0, 600, (50, 2)).astype(np.float32))
    f = Features(kp, torch.randn(50, 8), torch.rand(50), (640, 480), {"x": 1})
    g = undistort_features(f, K, PLUMB_BOB)
    assert g.descriptors is f.descriptors and g.scores is f.scores and g.image_size == f.image_size
    assert g.extra["raw_keypoints"] is kp and g.extra["x"] == 1 and g.keypoints.dtype == kp.dtype
    np.testing.assert_allclose(g.keypoints.numpy(), undistort_points(kp.numpy(), K, PLUMB_BOB), atol=1e-3)


def test_bad_distortions_are_refused():
    with pytest.raises(ValueError, match="unsupported distortion model 'kannala'"):
        Distortion("kannala", [0.1])
    with pytest.raises(ValueError, match="equidistant"):
        Distortion("equidistant", [0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="plumb_bob"):
        Distortion("plumb_bob", [0.1] * 8)
    with pytest.raises(ValueError, match="finite"):
        Distortion("plumb_bob", [np.nan, 0, 0, 0, 0])
    assert Distortion("plumb_bob", [-0.2, 0.1]).coeffs.tolist() == [-0.2, 0.1, 0.0, 0.0, 0.0]


class _NoGlobal:
    """Global descriptor stand-in (the bow retrieval never uses it; the map stores its output): no MobileNet run."""

    identity = "none"

    def __call__(self, image):
        return np.eye(1, 8, dtype=np.float32)[0]


class _ImageMatcher(Matcher):
    """A backend that matches on the images (as nemf_dense and a2net_align do)."""

    name = "image_matcher"
    keypoint_geometry = False

    def extract(self, image):
        raise AssertionError("a refused distortion must not cost an extraction")

    def match(self, ref, query):
        return Matches.empty()


def test_backends_that_match_on_images_refuse_distortion_naming_image_rect():
    from match_ros.core.features.matcher import matcher_class

    assert not matcher_class("nemf_dense").keypoint_geometry and not matcher_class("a2net_align").keypoint_geometry
    assert all(matcher_class(n).keypoint_geometry for n in ("sift", "orb_teblid", "xfeat_mnn", "xfeat_lighterglue",
                                                            "coam_xfeat", "omniglue_xfeat"))
    m = _ImageMatcher()
    m.check_distortion(None)
    m.check_distortion(Distortion("plumb_bob", [0] * 5))
    image = np.zeros((480, 640), np.uint8)
    with pytest.raises(ValueError, match="image_rect"):
        KeyframeTracker(m).process(Frame(image, 0, "cam", K, None, PLUMB_BOB))
    with pytest.raises(ValueError, match="image_rect"):
        MapBuilder(m, _NoGlobal()).add_frame(image, np.eye(4), K, 0, distortion=EQUIDISTANT)
    with pytest.raises(ValueError, match="image_rect"):
        Localizer(None, m).localize(image, K, distortion=PLUMB_BOB)


# ------------------------------------------------------------------------------------------------ poses
@pytest.mark.parametrize("model", ["plumb_bob", "equidistant"])
def test_rgbd_two_view_pose_on_distorted_images(lenses, matcher, model):
    """Keyframe tracker with depth (metric PnP, depth read at the raw pixels) on two room frames 17 cm apart.
    Measured (orb_teblid 1024): undistorted images 2.6 mm / 0.07 deg; distorted with the distortion given
    plumb_bob 4.3 mm / 0.12 deg, equidistant 4.5 mm / 0.14 deg; distortion ignored 18 cm / 4.6 deg (plumb_bob),
    26 cm / 5.7 deg (equidistant), a valid metric pose each time."""
    lens = lenses[model]
    a, b = lens(20), lens(30)
    T_gt = invert(a[4]) @ b[4]
    out = {}
    for case, (i0, i1), d in (("ideal", (2, 3), None), ("given", (0, 1), lens.d), ("ignored", (0, 1), None)):
        tracker = KeyframeTracker(matcher)
        tracker.process(Frame(a[i0], 0, "cam", K, a[i1], d))
        r = tracker.process(Frame(b[i0], 1, "cam", K, b[i1], d))
        assert r.pose.valid and r.pose.scale_known, (case, r.pose.reason)
        out[case] = errors(r.pose.T_ref_query, T_gt)
    (t_ideal, r_ideal), (t_given, r_given), (t_ignored, r_ignored) = out["ideal"], out["given"], out["ignored"]
    assert t_given < max(2.0 * t_ideal, 0.01) and r_given < max(2.0 * r_ideal, 0.3), out
    assert t_ignored > 0.1 and r_ignored > 3.0, out  # what was published before: clearly wrong
    assert t_ignored > 10 * t_given and r_ignored > 10 * r_given, out


@pytest.mark.parametrize("model", ["plumb_bob", pytest.param("equidistant", marks=pytest.mark.slow)])
def test_relocalization_on_a_map_built_from_distorted_images(lenses, matcher, model):
    """A map built from distorted RGB-D frames (every 10th of the orbit) with the distortion given, and distorted
    queries between them: as accurate as the same map and queries undistorted. Measured (orb_teblid 1024, 2
    queries): undistorted 2.3 and 1.5 mm / 0.05 and 0.04 deg; distortion given plumb_bob 1.3 and 0.7 mm / 0.03 and
    0.01 deg, equidistant 4.2 and 1.2 mm / 0.12 and 0.04 deg; distortion ignored (map and queries) both poses
    accepted, 8-11 cm / 2.4-3.0 deg off."""
    lens = lenses[model]
    mapped, queries = list(range(0, 60, 10)), [23, 38]
    result = {}
    for case, idx, d in (("ideal", (2, 3), None), ("given", (0, 1), lens.d), ("ignored", (0, 1), None)):
        every_frame = {"selection": "distance", "min_translation_m": 0.0, "min_rotation_deg": 0.0}
        builder = MapBuilder(matcher, _NoGlobal(), every_frame)
        for i in mapped:
            f = lens(i)
            assert builder.add_frame(f[idx[0]], f[4], K, i, f[idx[1]], distortion=d)
        loc = Localizer(builder.build(), matcher)
        result[case] = []
        for i in queries:
            f = lens(i)
            r = loc.localize(f[idx[0]], K, distortion=d)
            result[case].append(errors(r.T_map_cam, f[4]) if r.success else (np.inf, np.inf))
    ideal, given, ignored = (np.array(result[c]) for c in ("ideal", "given", "ignored"))
    assert np.all(given[:, 0] < np.maximum(2.0 * ideal[:, 0], 0.005)), result
    assert np.all(given[:, 1] < np.maximum(2.0 * ideal[:, 1], 0.2)), result
    assert np.all((ignored[:, 0] > 0.03) | (ignored[:, 1] > 1.0)), result  # refused (inf) or clearly off


# ------------------------------------------------------------------------------------------------ ROS side
def _info(d=(), model="", K_=K, w=640, h=480):
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(k=np.asarray(K_, float).ravel().tolist(), d=[float(x) for x in d], distortion_model=model,
                      width=w, height=h)


def test_camera_info_distortion_models():
    from match_ros.ros import codec

    d = codec.camera_distortion(_info(PLUMB_BOB.coeffs, "plumb_bob"))
    assert d == PLUMB_BOB
    assert codec.camera_distortion(_info(EQUIDISTANT.coeffs, "equidistant")) == EQUIDISTANT
    assert codec.camera_distortion(_info(RATIONAL.coeffs, "rational_polynomial")) == RATIONAL
    # no distortion: none, whatever the model name says (a rectified image_rect's camera_info, a driver without one)
    for d, model in (((), ""), ((0.0,) * 5, "plumb_bob"), ((0.0,) * 4, "equidistant"), ((0.0,) * 5, "fov")):
        assert codec.camera_distortion(_info(d, model)) is None
    for d, model in (((0.1, 0.0, 0.0, 0.0, 0.0), "kannala_brandt"), ((0.1,) * 5, ""), ((0.1,) * 3, "equidistant"),
                     ((np.nan,) * 5, "plumb_bob")):
        with pytest.raises(codec.ConversionError, match="image_rect"):
            codec.camera_distortion(_info(d, model))
    assert "camera_distortion" in codec.camera_matrix.__doc__


def test_camera_input_hands_the_distortion_with_the_frame_or_refuses_the_calibration(node):
    from match_ros.core.config import defaults
    from match_ros.ros import conversions as conv
    from match_ros.ros.camera_input import CameraInput, camera_input_spec
    from match_ros.ros.diagnostics import ErrorLog

    items, errors = [], ErrorLog(node)
    conf = {**defaults(camera_input_spec), "max_image_pixels": 100_000, "depth_wait_s": 0.0}
    inp = CameraInput(node, conf, items.append, errors)
    msg = conv.numpy_to_image(np.zeros((480, 640, 3), np.uint8), "rgb8")
    inp._on_info(_info(PLUMB_BOB.coeffs, "plumb_bob"))
    inp._on_image(msg)
    frame = inp.frame(items[-1])
    # downscaled (K with the image): the distortion acts on normalised coordinates and stays the same
    assert frame.scale < 1.0 and frame.K is not None and frame.distortion == PLUMB_BOB
    inp._on_info(_info())
    inp._on_image(msg)
    assert inp.frame(items[-1]).distortion is None
    fresh = CameraInput(node, conf, items.append, errors)
    fresh._on_info(_info((0.1, 0.01, 0.0, 0.0, 0.0), "kannala_brandt"))
    fresh._on_image(msg)
    frame = fresh.frame(items[-1])
    assert frame.K is None and frame.distortion is None  # no pose from an image whose distortion is unknown
    assert errors.by_kind["camera_info"] == 1 and "image_rect" in errors.last
