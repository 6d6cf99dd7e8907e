"""Textured-plane scenes rendered with exact ground truth (pure: numpy + OpenCV, no ROS).

Frames and conventions:
- world frame REP 103: x forward, y left, z up [m];
- camera frame = optical frame: z forward, x right, y down;
- ``T_world_cam`` [4 x 4] float64 maps camera-frame points to the world;
- pixels as OpenCV: ``K @ X_cam`` gives the pixel-centre coordinates (x = column, y = row).

Each plane is drawn through its exact plane-induced homography: per pixel, the ray is
intersected with the plane analytically (depth z, texture coordinates), the texture is
sampled bilinearly (cv2.remap) from a mip pyramid at the level of the local texel
footprint (trilinear, against aliasing), and a z-buffer keeps the nearest surface.
Rays that meet a plane behind the camera (z <= NEAR_M) never draw, so planes that are
behind or partly behind the camera are clipped exactly.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Optional

import cv2
import numpy as np

from match_ros.core.geometry.transforms import invert, matrix_from_quaternion, quaternion_from_matrix  # noqa: F401

NEAR_M = 0.05  # nearest drawn depth [m]
FAR_M = 1.0e4  # farthest drawn depth [m]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera without distortion (pixels in OpenCV's centre convention)."""

    width: int = 640
    height: int = 480
    fx: float = 525.0
    fy: float = 525.0
    cx: float = 319.5
    cy: float = 239.5

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0 or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera needs positive size and focal lengths, got {self}")

    @property
    def K(self) -> np.ndarray:
        """[3 x 3] float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor: float) -> "Camera":
        """The same camera with images resized by ``factor`` (pixel-centre convention kept)."""
        return Camera(int(round(self.width * factor)), int(round(self.height * factor)),
                      self.fx * factor, self.fy * factor,
                      (self.cx + 0.5) * factor - 0.5, (self.cy + 0.5) * factor - 0.5)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """points_cam: [N x 3] in the optical frame -> [N x 2] pixel (x, y)."""
        p = np.asarray(points_cam, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"points_cam must be [N x 3], got {p.shape}")
        return np.stack([self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], axis=1)


@dataclass(frozen=True)
class Lighting:
    """Uneven illumination: an ambient term plus one point light with Lambertian shading and falloff.

    The radiance of a surface point X with normal n (facing the camera) is scaled by
        ambient + (1 - ambient) * intensity * max(0, n . l) / (1 + (d / falloff_m)^2)
    with l the unit vector from X to the light and d the distance [m]. ambient 1 and intensity 0
    leave the textures as they are.
    """

    light_world: tuple = (0.0, 0.0, 2.5)  # light position in the world [m]
    ambient: float = 0.3  # share of the light that reaches every surface
    intensity: float = 1.5  # point-light gain before falloff
    falloff_m: float = 3.0  # distance at which the point light has fallen to half [m]

    def __post_init__(self):
        if not 0.0 <= self.ambient <= 1.0 or self.intensity < 0 or self.falloff_m <= 0:
            raise ValueError(f"lighting needs ambient in [0, 1], intensity >= 0, falloff_m > 0, got {self}")


def motion_blur(rgb: np.ndarray, length_px: float, angle_deg: float) -> np.ndarray:
    """Linear motion blur: the image averaged along a segment of ``length_px`` at ``angle_deg`` (x axis = 0)."""
    if length_px < 1.0:
        return rgb
    size = int(np.ceil(length_px)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2.0
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    for s_ in np.linspace(-length_px / 2.0, length_px / 2.0, 4 * size):
        x, y = c + s_ * dx, c + s_ * dy
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                if 0 <= xi < size and 0 <= yi < size:
                    kernel[yi, xi] += wx * wy
    kernel /= kernel.sum()
    return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT)


# ----------------------------------------------------------------------------- poses
def _check_pose(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"pose must be a finite [4 x 4] matrix, got shape {T.shape}")
    if not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6) or np.linalg.det(T[:3, :3]) < 0:
        raise ValueError("pose rotation is not a proper rotation matrix")
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid [4 x 4] transform."""
    return invert(np.asarray(T, dtype=np.float64))


# optical frame axes (x right, y down, z forward) expressed in the REP 103 body frame
_R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def pose_from_ypr(position, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """T_world_cam of an optical frame on a REP 103 body at ``position`` [m].

    yaw about z (0 looks along +x), pitch about y (positive looks down), roll about x [rad].
    """
    cy_, sy_, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                                math.cos(roll), math.sin(roll))
    Rz = np.array([[cy_, -sy_, 0], [sy_, cy_, 0], [0, 0, 1]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Ry @ Rx @ _R_BODY_OPTICAL
    T[:3, 3] = np.asarray(position, dtype=np.float64).reshape(3)
    return T


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """T_world_cam of an optical frame at ``eye`` looking at ``target`` (image 'up' towards ``up``)."""
    eye, target, up = (np.asarray(a, dtype=np.float64).reshape(3) for a in (eye, target, up))
    z = target - eye
    if np.linalg.norm(z) < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: viewing direction parallel to up")
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


# ----------------------------------------------------------------------------- geometry
class Plane:
    """A textured rectangle in the world.

    origin:  (3,) world position [m] of the texture's top-left corner (outer edge of texel (0, 0))
    edge_u:  (3,) world vector [m] along the texture's columns (left -> right): the plane's width
    edge_v:  (3,) world vector [m] along the texture's rows (top -> bottom), orthogonal to edge_u
    texture: [Ht x Wt x 3] uint8 RGB; texel (i, j) has its centre at
             origin + (i + 0.5) / Wt * edge_u + (j + 0.5) / Ht * edge_v
    """

    def __init__(self, origin, edge_u, edge_v, texture: np.ndarray, name: str = ""):
        self.origin = np.asarray(origin, dtype=np.float64).reshape(3)
        self.edge_u = np.asarray(edge_u, dtype=np.float64).reshape(3)
        self.edge_v = np.asarray(edge_v, dtype=np.float64).reshape(3)
        lu, lv = np.linalg.norm(self.edge_u), np.linalg.norm(self.edge_v)
        if lu < 1e-9 or lv < 1e-9:
            raise ValueError("plane edges must have non-zero length")
        if abs(self.edge_u @ self.edge_v) > 1e-6 * lu * lv:
            raise ValueError("plane edges edge_u and edge_v must be orthogonal")
        texture = np.asarray(texture)
        if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3 or min(texture.shape[:2]) < 2:
            raise ValueError(f"texture must be [H x W x 3] uint8 with H, W >= 2, got {texture.shape} {texture.dtype}")
        self.texture = np.ascontiguousarray(texture)
        self.name = name
        self._pyramid: Optional[list] = None

    @property
    def normal(self) -> np.ndarray:
        """(3,) unit normal edge_u x edge_v."""
        n = np.cross(self.edge_u, self.edge_v)
        return n / np.linalg.norm(n)

    def corners(self) -> np.ndarray:
        """[4 x 3] world corners: origin, +u, +u+v, +v."""
        o, u, v = self.origin, self.edge_u, self.edge_v
        return np.stack([o, o + u, o + u + v, o + v])

    def point(self, a, b) -> np.ndarray:
        """World points [N x 3] at normalised texture coordinates a, b in [0, 1] (shape [N])."""
        a, b = np.atleast_1d(np.asarray(a, dtype=np.float64)), np.atleast_1d(np.asarray(b, dtype=np.float64))
        return self.origin + a[:, None] * self.edge_u + b[:, None] * self.edge_v

    def pyramid(self) -> list:
        """Mip pyramid of the texture (level 0 = texture, each next level cv2.pyrDown)."""
        if self._pyramid is None:
            levels = [self.texture]
            while min(levels[-1].shape[:2]) >= 8:
                levels.append(cv2.pyrDown(levels[-1]))
            self._pyramid = levels
        return self._pyramid


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon [N x 3] to z >= near."""
    out = []
    for i in range(len(poly)):
        p, q = poly[i], poly[(i + 1) % len(poly)]
        if p[2] >= near:
            out.append(p)
        if (p[2] >= near) != (q[2] >= near):
            out.append(p + (near - p[2]) / (q[2] - p[2]) * (q - p))
    return np.asarray(out).reshape(-1, 3)


class Scene:
    """Textured planes and a background colour; see the module docstring for conventions."""

    def __init__(self, planes: list, background=(0, 0, 0), name: str = ""):
        if not planes or not all(isinstance(p, Plane) for p in planes):
            raise ValueError("a scene needs a non-empty list of Plane")
        self.planes = list(planes)
        self.background = tuple(float(c) for c in background)
        if len(self.background) != 3:
            raise ValueError("background must be an RGB triple")
        self.name = name

    def render(self, T_world_cam: np.ndarray, camera: Camera, *, gain: float = 1.0, gamma: float = 1.0,
               noise_sigma: float = 0.0, noise_seed: int = 0, lighting: Optional[Lighting] = None,
               blur: Optional[tuple] = None) -> tuple:
        """Render one view.

        T_world_cam: [4 x 4] float64 pose of the optical frame in the world.
        lighting: uneven illumination (None: the textures as they are).
        blur: (length_px, angle_deg) linear motion blur, applied before the camera response (None: sharp).
        gain, gamma: camera response, out = 255 * gain * (in / 255) ** gamma.
        noise_sigma: std-dev of additive Gaussian noise [gray levels], drawn from noise_seed.
        Returns (rgb [H x W x 3] uint8, depth [H x W] float32 z-depth in metres, 0 where no surface).
        Depth is the exact geometry: lighting, blur and noise change only the image.
        """
        T_cw = invert_pose(_check_pose(T_world_cam))
        if gain <= 0 or gamma <= 0 or noise_sigma < 0:
            raise ValueError("gain and gamma must be > 0 and noise_sigma >= 0")
        zbuf = np.full((camera.height, camera.width), FAR_M, np.float32)
        rgb = np.empty((camera.height, camera.width, 3), np.float32)
        rgb[:] = self.background
        plane_id = np.full((camera.height, camera.width), -1, np.int16) if lighting is not None else None
        for i, plane in enumerate(self.planes):
            self._draw(plane, T_cw[:3, :3], T_cw[:3, 3], camera, zbuf, rgb, plane_id, i)
        if lighting is not None:
            rgb *= self._shading(lighting, T_world_cam, camera, zbuf, plane_id)[..., None]
        if blur is not None:
            rgb = np.maximum(motion_blur(rgb, float(blur[0]), float(blur[1])), 0.0)  # no -1e-7 from rounding
        if gain != 1.0 or gamma != 1.0:
            rgb = 255.0 * gain * np.power(rgb / 255.0, gamma, dtype=np.float32)
        if noise_sigma > 0:
            rgb = rgb + np.random.default_rng(noise_seed).normal(0.0, noise_sigma, rgb.shape).astype(np.float32)
        depth = np.where(zbuf < FAR_M, zbuf, 0.0).astype(np.float32)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), depth

    def _shading(self, light: Lighting, T_world_cam: np.ndarray, cam: Camera, zbuf: np.ndarray,
                 plane_id: np.ndarray) -> np.ndarray:
        """[H x W] float32 illumination factor of every pixel (1 where no surface: the background)."""
        h, w = zbuf.shape
        rays = np.stack(np.meshgrid((np.arange(w) - cam.cx) / cam.fx, (np.arange(h) - cam.cy) / cam.fy), -1)
        X_cam = np.concatenate([rays, np.ones((h, w, 1))], -1) * zbuf[..., None]
        X = X_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
        centre = T_world_cam[:3, 3]
        normals = np.array([p.normal if p.normal @ (centre - p.origin) >= 0 else -p.normal for p in self.planes])
        n = normals[np.maximum(plane_id, 0)]
        to_light = np.asarray(light.light_world, np.float64) - X
        d = np.linalg.norm(to_light, axis=-1)
        cos = np.clip(np.sum(n * to_light, -1) / np.maximum(d, 1e-9), 0.0, None)
        factor = light.ambient + (1.0 - light.ambient) * light.intensity * cos / (1.0 + (d / light.falloff_m) ** 2)
        return np.where(plane_id >= 0, factor, 1.0).astype(np.float32)

    @staticmethod
    def _draw(plane: Plane, R: np.ndarray, t: np.ndarray, cam: Camera, zbuf: np.ndarray, rgb: np.ndarray,
              plane_id: Optional[np.ndarray] = None, index: int = 0):
        o, eu, ev = R @ plane.origin + t, R @ plane.edge_u, R @ plane.edge_v
        n = np.cross(eu, ev)
        num = n @ o  # z = num / (n . ray) with ray = (x', y', 1)
        if abs(num) < 1e-12 * np.linalg.norm(n):
            return  # camera centre in the plane: seen edge-on
        poly = _clip_near(np.stack([o, o + eu, o + eu + ev, o + ev]), NEAR_M)
        if len(poly) < 3:
            return
        px = cam.project(poly)
        x0, y0 = max(0, int(np.floor(px[:, 0].min()))), max(0, int(np.floor(px[:, 1].min())))
        x1 = min(cam.width - 1, int(np.ceil(px[:, 0].max())))
        y1 = min(cam.height - 1, int(np.ceil(px[:, 1].max())))
        if x0 > x1 or y0 > y1:
            return
        # everything on the box in float32: depth relative error ~1e-7, texel error < 1e-3 texel
        rx = (np.arange(x0, x1 + 1) - cam.cx) / cam.fx
        ry = (np.arange(y0, y1 + 1) - cam.cy) / cam.fy

        def lin(c):  # c . (rx, ry, 1) on the box, float32 [h x w]
            return (c[0] * rx).astype(np.float32)[None, :] + (c[1] * ry + c[2]).astype(np.float32)[:, None]

        lu2, lv2 = eu @ eu, ev @ ev
        zb = zbuf[y0:y1 + 1, x0:x1 + 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = np.float32(num) / lin(n)
            valid = (z > NEAR_M) & (z < zb)
            a = z * lin(eu / lu2) - np.float32(eu @ o / lu2)
            b = z * lin(ev / lv2) - np.float32(ev @ o / lv2)
            valid &= np.minimum(a, b) >= 0
            valid &= np.maximum(a, b) < 1
        rows, cols = np.nonzero(valid.any(axis=1))[0], np.nonzero(valid.any(axis=0))[0]
        if rows.size == 0:
            return
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        valid, z, a, b, zb = valid[box], z[box], a[box], b[box], zb[box]
        rx, ry = rx[box[1]], ry[box[0]]
        ht, wt = plane.texture.shape[:2]
        # mip level from the texel footprint: |d(texel)/d(pixel)|, with d(a)/d(x) = z^2 / num * (c . ray) / fx
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            su, sv = wt / lu2, ht / lv2
            dx = (su * lin(eu[0] * n - n[0] * eu)) ** 2 + (sv * lin(ev[0] * n - n[0] * ev)) ** 2
            dy = (su * lin(eu[1] * n - n[1] * eu)) ** 2 + (sv * lin(ev[1] * n - n[1] * ev)) ** 2
            rho2 = np.maximum(dx / np.float32(cam.fx ** 2), dy / np.float32(cam.fy ** 2))
            lam = np.log2(z * z / np.float32(abs(num))) + 0.5 * np.log2(rho2)
        pyr = plane.pyramid()
        lam = np.clip(np.where(valid, lam, 0), 0, len(pyr) - 1)
        a, b = np.where(valid, a, 0), np.where(valid, b, 0)
        lo, hi = int(lam[valid].min()), int(np.ceil(lam[valid].max()))
        colour = np.zeros(z.shape + (3,), np.float32)
        for level in range(lo, hi + 1):
            tex = pyr[level]
            sample = cv2.remap(tex, a * tex.shape[1] - 0.5, b * tex.shape[0] - 0.5, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            if lo == hi:
                colour = sample.astype(np.float32)
            else:
                colour += np.maximum(0, 1 - np.abs(lam - level))[..., None] * sample
        np.copyto(rgb[y0:y1 + 1, x0:x1 + 1][box], colour, where=valid[..., None])
        np.copyto(zb, z, where=valid)
        if plane_id is not None:
            np.copyto(plane_id[y0:y1 + 1, x0:x1 + 1][box], np.int16(index), where=valid)


# ----------------------------------------------------------------------------- sequences
@dataclass
class Frame:
    """One rendered view: rgb [H x W x 3] uint8, depth [H x W] float32 [m] (0 = no surface)."""

    index: int
    stamp_ns: int
    T_world_cam: np.ndarray
    rgb: np.ndarray
    depth: Optional[np.ndarray]


class Sequence:
    """A camera, timestamped poses [(stamp_ns, T_world_cam [4 x 4])] and frames rendered on demand.

    gain and gamma hold for the whole sequence (a number) or per frame (a list, one per pose); blur is
    None or a list with one (length_px, angle_deg) or None per pose; lighting holds for the whole sequence. Frame
    i's noise is drawn from seed (seed, i), so a frame renders identically whenever it is asked for.
    """

    def __init__(self, scene: Scene, camera: Camera, poses: list, *, gain=1.0, gamma=1.0,
                 noise_sigma: float = 0.0, seed: int = 0, cache_size: int = 4,
                 lighting: Optional[Lighting] = None, blur: Optional[list] = None):
        if not poses:
            raise ValueError("a sequence needs at least one pose")
        stamps = [int(s) for s, _ in poses]
        if any(b <= a for a, b in zip(stamps, stamps[1:])):
            raise ValueError("sequence stamps must increase strictly")
        self.scene, self.camera = scene, camera
        self.poses = [(s, _check_pose(T)) for s, (_, T) in zip(stamps, poses)]
        if blur is not None and not isinstance(blur, list):
            raise ValueError("blur must be None or a list with one entry per pose")
        for name, v in (("gain", gain), ("gamma", gamma), ("blur", blur)):
            if isinstance(v, (list, np.ndarray)) and len(v) != len(poses):
                raise ValueError(f"{name} must be one value or one per pose ({len(poses)}), got {len(v)}")
        self.gain, self.gamma, self.noise_sigma, self.seed = gain, gamma, noise_sigma, seed
        self.lighting, self.blur = lighting, blur
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def stamps_ns(self) -> list:
        return [s for s, _ in self.poses]

    def __getitem__(self, i: int) -> Frame:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        stamp, T = self.poses[i]
        seed = int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0])
        per = lambda v: v[i] if isinstance(v, (list, np.ndarray)) else v  # noqa: E731
        rgb, depth = self.scene.render(T, self.camera, gain=float(per(self.gain)), gamma=float(per(self.gamma)),
                                       noise_sigma=self.noise_sigma, noise_seed=seed, lighting=self.lighting,
                                       blur=None if self.blur is None else self.blur[i])
        frame = Frame(i, stamp, T, rgb, depth)
        self._cache[i] = frame
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return frame

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]
