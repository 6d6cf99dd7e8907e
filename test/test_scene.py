"""Renderer ground truth: geometry, depth, texturing, trajectories (pure: no ROS)."""
import math

import cv2
import numpy as np
import pytest

from match_ros.sim import (DEFAULT_TRAJECTORY, SCENES, Camera, Plane, Scene, invert_pose, look_at, make_scene,
                           make_sequence, make_trajectory, pose_from_ypr)

SMALL = Camera().scaled(0.5)  # 320 x 240


def _backproject(depth: np.ndarray, cam: Camera):
    """Pixels with depth -> (pixel coords [N x 2], camera points [N x 3])."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    pts = np.stack([(u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z, z], axis=1)
    return np.stack([u, v], axis=1), pts


def _remap(img: np.ndarray, x: np.ndarray, y: np.ndarray, interp=cv2.INTER_LINEAR) -> np.ndarray:
    """img sampled at float pixel coordinates x, y ([N]) -> [N] (cv2.remap, maps kept < 32767 wide)."""
    n, cols = x.size, 1024
    rows = -(-n // cols)
    mx, my = np.zeros(rows * cols, np.float32), np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = x, y
    return cv2.remap(img, mx.reshape(rows, cols), my.reshape(rows, cols), interp).reshape(-1)[:n]


def _interior(depth: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood is one smooth surface (no depth edge, no background)."""
    d = depth.astype(np.float64)
    valid = cv2.erode((d > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    lap = np.abs(cv2.Laplacian(np.where(d > 0, 1.0 / np.maximum(d, 1e-9), 0.0), cv2.CV_64F))
    return valid & (lap < 1e-3)


@pytest.mark.parametrize("scene_name", ["room", "facade"])
def test_reprojection_photometric_and_depth_consistency(scene_name):
    seq = make_sequence(scene_name, n_frames=8, camera=SMALL, seed=1)
    A, B = seq[0], seq[6]
    cam = seq.camera
    uv_a, pts_a = _backproject(A.depth, cam)
    T_b_a = invert_pose(B.T_world_cam) @ A.T_world_cam
    pts_b = pts_a @ T_b_a[:3, :3].T + T_b_a[:3, 3]
    uv_b = cam.project(pts_b)
    # keep points that land inside B, where B sees a smooth surface (not occluded checked below)
    inside = (uv_b[:, 0] > 1) & (uv_b[:, 0] < cam.width - 2) & (uv_b[:, 1] > 1) & (uv_b[:, 1] < cam.height - 2)
    smooth_a = _interior(A.depth)[uv_a[:, 1], uv_a[:, 0]]
    keep = inside & smooth_a
    assert keep.mean() > 0.5, "consecutive frames must overlap strongly"
    uv_b, pts_b, uv_a = uv_b[keep], pts_b[keep], uv_a[keep]
    mx, my = uv_b[:, 0], uv_b[:, 1]
    # inverse depth is affine in the pixel coordinates on a plane: bilinear interpolation of it is exact
    inv_b = np.where(B.depth > 0, 1.0 / np.maximum(B.depth, 1e-9), 0).astype(np.float32)
    z_b = 1.0 / _remap(inv_b, mx, my).astype(np.float64)
    smooth_b = _remap(_interior(B.depth).astype(np.uint8), np.rint(mx), np.rint(my), cv2.INTER_NEAREST) > 0
    rel = np.abs(z_b - pts_b[:, 2]) / pts_b[:, 2]
    visible = smooth_b & (rel < 0.01)  # not occluded in B
    assert visible.mean() > 0.8
    assert np.median(rel[smooth_b]) < 1e-5  # float32 depth: ~1e-7 in practice
    assert np.percentile(rel[visible], 99) < 1e-4
    # photometric: the same texture point, sampled in B at the projected location
    gray_a = cv2.cvtColor(A.rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray_b = cv2.cvtColor(B.rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    g_a = gray_a[uv_a[:, 1], uv_a[:, 0]][visible]
    g_b = _remap(gray_b, mx, my)[visible]
    textured = cv2.Laplacian(gray_a, cv2.CV_32F)[uv_a[:, 1], uv_a[:, 0]][visible] != 0
    diff = np.abs(g_a - g_b)[textured]
    assert np.median(diff) < 3.0, f"median photometric error {np.median(diff):.2f}"  # ~0.6 in practice
    # a projection off by one pixel must be clearly worse
    g_wrong = _remap(gray_b, mx + 1, my)[visible][textured]
    assert np.median(np.abs(g_a[textured] - g_wrong)) > 2 * np.median(diff)


def test_known_point_projects_to_analytic_pixel():
    tex = np.zeros((512, 512, 3), np.uint8)
    tex[198:203, 298:303] = 255  # 5x5 white block centred on texel (300, 200)
    plane = Plane((3.0, 1.0, 2.0), (0.0, -2.0, 0.0), (0.0, 0.0, -2.0), tex)
    X = plane.point((300 + 0.5) / 512, (200 + 0.5) / 512)[0]
    cam = Camera()
    T = pose_from_ypr((0.8, 0.2, 1.1), yaw=0.15, pitch=-0.1, roll=0.05)
    rgb, depth = Scene([plane]).render(T, cam)
    X_cam = invert_pose(T)[:3, :3] @ X + invert_pose(T)[:3, 3]
    u, v = cam.project(X_cam[None])[0]
    g = rgb[..., 0].astype(np.float64)
    x0, y0 = int(round(u)) - 8, int(round(v)) - 8
    win = g[y0:y0 + 17, x0:x0 + 17]
    assert win.max() > 200 and win.sum() > 0
    yy, xx = np.mgrid[y0:y0 + 17, x0:x0 + 17]
    assert abs((win * xx).sum() / win.sum() - u) < 0.1
    assert abs((win * yy).sum() / win.sum() - v) < 0.1
    # depth at the pixel nearest to the projection: analytic ray-plane intersection
    ui, vi = int(round(u)), int(round(v))
    ray = np.array([(ui - cam.cx) / cam.fx, (vi - cam.cy) / cam.fy, 1.0])
    n_c = invert_pose(T)[:3, :3] @ plane.normal
    z = (n_c @ X_cam) / (n_c @ ray)
    assert depth[vi, ui] == pytest.approx(z, rel=1e-6)


def test_render_equals_plane_induced_homography_warp():
    """Magnified view (mip level 0): the image is cv2.warpPerspective of the texture by H = K [R | t] A."""
    tex = _noise_texture(128, seed=3)
    plane = Plane((2.0, 0.4, 1.4), (0.0, -0.8, 0.0), (0.0, 0.0, -0.8), tex)
    cam = SMALL
    T = pose_from_ypr((0.5, 0.05, 1.0), yaw=0.1, pitch=-0.05, roll=0.08)
    rgb, depth = Scene([plane]).render(T, cam)
    h, w = tex.shape[:2]
    # texel (i, j, 1) -> world (homogeneous) -> camera -> pixel
    A = np.zeros((4, 3))
    A[:3, 0], A[:3, 1] = plane.edge_u / w, plane.edge_v / h
    A[:3, 2] = plane.origin + 0.5 * plane.edge_u / w + 0.5 * plane.edge_v / h
    A[3, 2] = 1.0
    H = cam.K @ invert_pose(T)[:3, :] @ A
    warped = cv2.warpPerspective(tex, H, (cam.width, cam.height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    inner = cv2.erode((depth > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert inner.mean() > 0.2
    diff = np.abs(rgb.astype(np.int16) - warped.astype(np.int16))[inner]
    assert diff.max() <= 2 and diff.mean() < 0.3


def _noise_texture(size=256, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 1.0)


def test_plane_partly_behind_camera_is_clipped():
    floor = Plane((50.0, 50.0, 0.0), (0.0, -100.0, 0.0), (-100.0, 0.0, 0.0), _noise_texture())
    cam = SMALL
    T = pose_from_ypr((0.0, 0.0, 1.0), yaw=0.3, pitch=0.0)  # horizon through the principal point
    rgb, depth = Scene([floor], background=(7, 8, 9)).render(T, cam)
    rows = np.arange(cam.height)
    above, below = rows < cam.cy - 1, rows > cam.cy + 10  # the floor ends 50 m away
    assert np.all(depth[above] == 0) and np.all(rgb[above] == (7, 8, 9))  # rays meet the floor behind
    assert np.all(depth[below] > 0)
    v = rows[below][:, None]
    assert np.allclose(depth[below], 1.0 * cam.fy / (v - cam.cy) * np.ones((1, cam.width)), rtol=1e-5)
    # entirely behind: nothing drawn
    T_up = pose_from_ypr((0.0, 0.0, 1.0), yaw=0.0, pitch=-math.pi / 2)
    _, d = Scene([floor]).render(T_up, cam)
    assert np.all(d == 0)


@pytest.mark.parametrize("scene_name", SCENES)
def test_trajectories_stay_textured_and_move_smoothly(scene_name):
    kind = DEFAULT_TRAJECTORY[scene_name]
    poses = make_trajectory(kind, 700, seed=2)
    steps = [invert_pose(a) @ b for a, b in zip(poses, poses[1:])]
    trans = np.array([np.linalg.norm(s[:3, 3]) for s in steps])
    rot = np.degrees([math.acos(np.clip((np.trace(s[:3, :3]) - 1) / 2, -1, 1)) for s in steps])
    assert trans.max() < 0.05 and rot.max() < 4.0
    assert trans.mean() > 0.005
    scene = make_scene(scene_name, seed=2)
    cam = Camera().scaled(0.25)
    for T in poses[::50]:
        _, depth = scene.render(T, cam)
        assert (depth == 0).mean() < 0.10


def test_deterministic_with_seed_and_photometric_options():
    a = make_sequence("corridor", n_frames=3, camera=SMALL, seed=5, photometric=True, noise_sigma=2.0)
    b = make_sequence("corridor", n_frames=3, camera=SMALL, seed=5, photometric=True, noise_sigma=2.0)
    c = make_sequence("corridor", n_frames=3, camera=SMALL, seed=6)
    assert np.array_equal(a[2].rgb, b[2].rgb) and np.array_equal(a[2].depth, b[2].depth)
    assert a.stamps_ns == b.stamps_ns and a.stamps_ns[1] - a.stamps_ns[0] == 33_333_333
    assert not np.array_equal(a[2].rgb, c[2].rgb)
    assert (a.gain, a.gamma) != (1.0, 1.0)
    clean = make_sequence("corridor", n_frames=3, camera=SMALL, seed=5)
    assert np.array_equal(clean[2].depth, a[2].depth)  # photometry never changes geometry
    assert not np.array_equal(clean[2].rgb, a[2].rgb)


def test_contracts():
    with pytest.raises(ValueError):
        Plane((0, 0, 0), (1, 0, 0), (1, 1, 0), np.zeros((4, 4, 3), np.uint8))  # not orthogonal
    with pytest.raises(ValueError):
        Plane((0, 0, 0), (1, 0, 0), (0, 1, 0), np.zeros((4, 4), np.uint8))  # not RGB
    with pytest.raises(ValueError):
        make_scene("nope")
    with pytest.raises(ValueError):
        make_trajectory("nope", 3)
    with pytest.raises(ValueError):
        make_scene("room").render(np.eye(3), Camera())
    with pytest.raises(FileNotFoundError, match="texture"):
        make_scene("room", textures_dir="/nonexistent")
    T = look_at((0, 0, 1), (1, 0, 1))
    assert np.allclose(T[:3, 2], [1, 0, 0]) and np.allclose(T[:3, 1], [0, 0, -1])  # z forward, y down
    assert np.allclose(T, pose_from_ypr((0, 0, 1), 0.0, 0.0))
    assert np.allclose(Camera().K, [[525, 0, 319.5], [0, 525, 239.5], [0, 0, 1]])


def test_lighting_blur_and_changed_day_keep_geometry_exact():
    from match_ros.sim import Lighting, make_changed_day_sequence, offset_path

    scene = make_scene("office", seed=0)
    T = make_trajectory("loop", 1, seed=0)[0]
    plain, depth = scene.render(T, SMALL)
    same, _ = scene.render(T, SMALL, lighting=Lighting(ambient=1.0, intensity=0.0))
    assert np.array_equal(plain, same)  # full ambient, no point light: the textures as they are
    dim, depth_dim = scene.render(T, SMALL, lighting=Lighting((0.0, 0.0, 2.5), ambient=0.3, intensity=1.0))
    assert np.array_equal(depth, depth_dim)
    assert dim.mean() < 0.8 * plain.mean()
    blurred, _ = scene.render(T, SMALL, blur=(9.0, 0.0))
    # horizontal blur: horizontal gradients shrink far more than vertical ones
    gx = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()  # noqa: E731
    gy = lambda im: np.abs(np.diff(im.astype(float), axis=0)).mean()  # noqa: E731
    assert gx(blurred) < 0.6 * gx(plain) and gy(blurred) > 0.7 * gy(plain)

    n = 200
    q = make_changed_day_sequence("office", n, seed=3, camera=SMALL)
    mapped = make_trajectory("loop", n, seed=3)
    # 0.5 m off the path, sideways; up to +-40 deg of yaw instead of the mapping scan
    moved = offset_path(mapped, 0.5, 1.0)
    off = [min(np.linalg.norm(Tq[:3, 3] - Tm[:3, 3]) for Tm in (a, b)) for Tq, a, b in
           zip((p for _, p in q.poses), moved, offset_path(mapped, 0.5, -1.0))]
    assert max(off) < 1e-9
    yaws = [math.degrees(math.atan2(Tq[1, 2], Tq[0, 2])) for _, Tq in q.poses]
    plain = make_trajectory("loop", n, seed=3, scan_deg=0.0)
    heading = [math.degrees(math.atan2(Tm[1, 2], Tm[0, 2])) for Tm in plain]
    dyaw = [(a - b + 180) % 360 - 180 for a, b in zip(yaws, heading)]
    assert 30 < max(dyaw) <= 40.5 and -40.5 <= min(dyaw) < -30
    assert 0.2 < np.mean([b is not None for b in q.blur]) < 0.4
    assert 0.69 < min(q.gamma) < 0.8 and 1.25 < max(q.gamma) < 1.41 and q.noise_sigma == 5.0
    f = q[5]
    _, exact_depth = q.scene.render(f.T_world_cam, SMALL)
    assert np.array_equal(f.depth, exact_depth)  # lighting, blur and noise never change the geometry
