"""Real camera sequences of ViSP's test data (Debian package ``visp-images-data``), read for the core (no ROS).

Two sequences, neither with ground-truth poses (checks on them need none: photometric consistency, rotation
cycles, "a static camera gives no translation"):

- ``mbt-depth/castel``: 30 RGB-D frames of a castle model from an Intel SR300, the camera moving slowly about
  0.26 m away. ``castel/image_XXXX.pgm`` are the 640x480 grey colour-camera images; ``castel/depth_image_XXXX.bin``
  the depth-camera images: uint32 LE height, uint32 LE width, then height * width uint16 LE depths, 0 = none,
  ``CASTEL_DEPTH_SCALE_M`` metres per count. Intrinsics: ``chateau.xml`` (colour), ``chateau_depth.xml`` (depth);
  ``depth_M_color.txt`` is the 4x4 transform mapping colour-camera points into the depth camera. The depth is
  registered to the colour camera here (``register_depth``) so that ``CastelFrame.depth`` is aligned with the image,
  as the odometry expects.
- ``mbt/cube``: 218 grey 640x480 frames from a STATIC camera watching a hand move a sheet carrying a cube and a
  cylinder (true camera motion: none). Intrinsics: ``mbt/cube.xml``.

The data folder (the one holding ``mbt`` and ``mbt-depth``) is ``$MATCH_ROS_VISP_DATA`` when set, else the Debian
install path (``/usr/share/visp-images-data/ViSP-images``). A missing folder or file is a FileNotFoundError that
names the package to install; a malformed file is a ValueError.

The frames carry nominal 30 Hz stamps (the files have none).
"""
from __future__ import annotations

import os
from xml.etree import ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

ENV_VAR = "MATCH_ROS_VISP_DATA"
DEBIAN_PATHS = (Path("/usr/share/visp-images-data/ViSP-images"), Path("/usr/share/visp-images-data"))
INSTALL_HINT = ("install the Debian package visp-images-data (apt-get install visp-images-data) or point "
                f"{ENV_VAR} at a ViSP-images folder")
# metres per depth count of the SR300 frames (ViSP's depth-tracker test code)
CASTEL_DEPTH_SCALE_M = 0.000124986647
CASTEL_FRAMES = 30
CUBE_FRAMES = 218
FRAME_PERIOD_NS = 33_333_333  # nominal 30 Hz


@dataclass
class CameraModel:
    """A ViSP camera: pinhole K [3 x 3] and the radial distortion of ViSP's model, 0 when absent.

    kud: undistorted -> distorted, x_d = x_u * (1 + kud * r_u^2) with r_u^2 = x_u^2 + y_u^2 (normalised units)
    kdu: distorted -> undistorted, x_u = x_d * (1 + kdu * r_d^2) with r_d^2 = x_d^2 + y_d^2
    """

    K: np.ndarray
    kud: float = 0.0
    kdu: float = 0.0

    def pixels_to_rays(self, uv: np.ndarray) -> np.ndarray:
        """[N x 2] pixels -> [N x 2] undistorted normalised coordinates (x/z, y/z)."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        xd = (uv - self.K[:2, 2]) / [self.K[0, 0], self.K[1, 1]]
        return xd * (1.0 + self.kdu * np.sum(xd ** 2, axis=1, keepdims=True))

    def rays_to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """[N x 2] undistorted normalised coordinates -> [N x 2] pixels (with this camera's distortion)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        xd = xy * (1.0 + self.kud * np.sum(xy ** 2, axis=1, keepdims=True))
        return xd * [self.K[0, 0], self.K[1, 1]] + self.K[:2, 2]


@dataclass
class CastelFrame:
    """One castel frame.

    image:     [480 x 640] uint8 grey (the colour camera)
    depth:     [480 x 640] float32 metres registered to ``image`` (0 = none)
    raw_depth: [480 x 640] float32 metres in the depth camera's own pixels (0 = none)
    """

    index: int
    stamp_ns: int
    image: np.ndarray
    depth: np.ndarray
    raw_depth: np.ndarray


@dataclass
class CastelSequence:
    """The castel RGB-D frames with their calibration.

    K:             [3 x 3] colour camera matrix (the camera of every ``image`` and registered ``depth``)
    color_camera, depth_camera: the full camera models (distortion terms included)
    T_color_depth: [4 x 4] maps depth-camera points into the colour camera (the inverse of depth_M_color.txt)
    """

    frames: list
    K: np.ndarray
    color_camera: CameraModel
    depth_camera: CameraModel
    T_color_depth: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> CastelFrame:
        return self.frames[i]


class CubeSequence:
    """The mbt/cube grey frames of a static camera, read on demand ([480 x 640] uint8 each); K [3 x 3]."""

    def __init__(self, folder: Path, K: np.ndarray, count: int):
        self.folder, self.K, self._count = folder, K, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self._count:
            raise IndexError(f"cube frame {i} out of 0..{self._count - 1}")
        return read_pgm(self.folder / f"image{i:04d}.pgm")


# --------------------------------------------------------------------------------------------- locating the data
def find_visp_data(path: str | os.PathLike | None = None) -> Path:
    """The ViSP-images folder: ``path``, else $MATCH_ROS_VISP_DATA, else the Debian install path.

    The folder must hold ``mbt`` or ``mbt-depth``; FileNotFoundError (naming the package) otherwise."""
    given = path if path is not None else os.environ.get(ENV_VAR) or None
    candidates = [Path(given)] if given else list(DEBIAN_PATHS)
    for c in candidates:
        for root in (c, c / "ViSP-images"):
            if (root / "mbt").is_dir() or (root / "mbt-depth").is_dir():
                return root
    where = f"{given}" if given else " or ".join(str(c) for c in DEBIAN_PATHS)
    raise FileNotFoundError(f"ViSP test images not found in {where}: {INSTALL_HINT}")


def visp_data_available(path: str | os.PathLike | None = None) -> bool:
    """True when both sequences can be read (castel's calibration and cube's first frame are there)."""
    try:
        root = find_visp_data(path)
    except FileNotFoundError:
        return False
    return ((root / "mbt-depth" / "castel" / "depth_M_color.txt").is_file()
            and (root / "mbt" / "cube" / "image0000.pgm").is_file())


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {INSTALL_HINT}")
    return path


# --------------------------------------------------------------------------------------------- file formats
def read_pgm(path: str | os.PathLike) -> np.ndarray:
    """[H x W] uint8 of a grey image (PGM or anything OpenCV reads)."""
    import cv2

    image = cv2.imread(str(_need(Path(path))), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return image


def read_visp_camera(path: str | os.PathLike) -> CameraModel:
    """The first <camera> of a ViSP XML file: px, py (focal lengths [px]), u0, v0 (principal point [px]) and,
    where present, kud / kdu (the tags may sit directly in <camera> or in a <model> inside it)."""
    path = _need(Path(path))
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        raise ValueError(f"{path}: not XML ({e})") from None
    camera = root if root.tag == "camera" else root.find(".//camera")
    if camera is None:
        raise ValueError(f"{path}: no <camera> element")

    def value(tag: str, default: Optional[float] = None) -> float:
        node = camera.find(f".//{tag}")
        if node is None or node.text is None or not node.text.strip():
            if default is None:
                raise ValueError(f"{path}: <camera> has no <{tag}>")
            return default
        try:
            return float(node.text)
        except ValueError:
            raise ValueError(f"{path}: <{tag}> is not a number: {node.text.strip()!r}") from None

    px, py, u0, v0 = value("px"), value("py"), value("u0"), value("v0")
    if not (px > 0 and py > 0 and np.isfinite([u0, v0]).all()):
        raise ValueError(f"{path}: invalid intrinsics px={px} py={py} u0={u0} v0={v0}")
    K = np.array([[px, 0.0, u0], [0.0, py, v0], [0.0, 0.0, 1.0]])
    return CameraModel(K, value("kud", 0.0), value("kdu", 0.0))


def read_homogeneous(path: str | os.PathLike) -> np.ndarray:
    """[4 x 4] float64 of a text file with a homogeneous transform (4 rows of 4 numbers)."""
    path = _need(Path(path))
    try:
        T = np.loadtxt(path, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: not a 4x4 matrix of numbers ({e})") from None
    if T.shape != (4, 4) or not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError(f"{path}: not a homogeneous 4x4 transform: {T.tolist()}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        raise ValueError(f"{path}: the rotation block is not a rotation")
    return T


def read_depth_bin(path: str | os.PathLike, scale_m: float = CASTEL_DEPTH_SCALE_M) -> np.ndarray:
    """[H x W] float32 metres (0 = none) of a ViSP depth file: uint32 LE height, uint32 LE width, then H * W uint16
    LE counts of ``scale_m`` metres."""
    data = _need(Path(path)).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the 8-byte header")
    h, w = (int(v) for v in np.frombuffer(data[:8], "<u4"))
    if len(data) != 8 + 2 * h * w or h == 0 or w == 0:
        raise ValueError(f"{path}: header says {h}x{w} depths, the file holds {(len(data) - 8) // 2}")
    counts = np.frombuffer(data[8:], "<u2").reshape(h, w)
    return (counts.astype(np.float32) * np.float32(scale_m))


# --------------------------------------------------------------------------------------------- registration
def register_depth(depth: np.ndarray, depth_camera: CameraModel, color_camera: CameraModel,
                   T_color_depth: np.ndarray, color_size: tuple[int, int], margin_px: float = 0.5) -> np.ndarray:
    """Depth of the depth camera [H_d x W_d] (metres, 0 = none) -> depth seen by the colour camera [H x W] float32.

    Every valid depth pixel is back-projected with the depth intrinsics (its undistorted ray times z), moved into
    the colour frame by T_color_depth [4 x 4], and projected into the colour image; it covers the colour pixels
    whose centres lie inside the projection of its square footprint grown by margin_px [colour px] on each side
    (the colour camera sees more pixels per degree, so a point per pixel would leave holes, and on slanted surfaces
    neighbouring footprints do not quite touch; 0.5 is the cover of librealsense's alignment, which rounds the
    footprint's corners to pixels). Where several land on one pixel the nearest wins (z-buffer): a foreground
    edge grows by at most margin_px. The value written is the point's z in the colour frame.
    color_size: (width, height) of the colour image.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H x W], got {depth.shape}")
    T = np.asarray(T_color_depth, np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T_color_depth must be [4 x 4], got {T.shape}")
    w, h = (int(v) for v in color_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"invalid colour image size {color_size}")
    rows, cols = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[rows, cols].astype(np.float64)
    out = np.full(h * w, np.inf)
    if len(z):
        corners = []
        for d in (-0.5, 0.5):  # the pixel's top-left and bottom-right corners, at the pixel's depth
            xy = depth_camera.pixels_to_rays(np.column_stack([cols + d, rows + d]))
            X = np.column_stack([xy * z[:, None], z]) @ T[:3, :3].T + T[:3, 3]
            with np.errstate(divide="ignore", invalid="ignore"):
                corners.append((color_camera.rays_to_pixels(X[:, :2] / X[:, 2:3]), X[:, 2]))
        (lo, z0), (hi, z1) = corners
        zc = 0.5 * (z0 + z1)
        lo, hi = np.minimum(lo, hi) - margin_px, np.maximum(lo, hi) + margin_px
        first = np.ceil(lo).astype(np.int64)  # first colour pixel centre inside the footprint
        span = np.floor(hi).astype(np.int64) - first  # + 1 = pixels covered per axis
        ok = (zc > 0) & np.all(np.isfinite(lo) & np.isfinite(hi), axis=1) & np.all(span >= 0, axis=1)
        reach = int(min(span[ok].max(initial=0), 4))  # a few pixels at most (footprints are ~1.3 px here)
        for dy in range(reach + 1):
            for dx in range(reach + 1):
                u, v = first[:, 0] + dx, first[:, 1] + dy
                sel = ok & (dx <= span[:, 0]) & (dy <= span[:, 1]) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
                np.minimum.at(out, v[sel] * w + u[sel], zc[sel])
    out[~np.isfinite(out)] = 0.0
    return out.reshape(h, w).astype(np.float32)


# --------------------------------------------------------------------------------------------- the sequences
def load_castel(path: str | os.PathLike | None = None, frames: Optional[range] = None) -> CastelSequence:
    """The castel RGB-D sequence (module docstring), depth registered to the colour camera.

    path: the ViSP-images folder (default: ``find_visp_data``); frames: which of the 30 (default all)."""
    folder = find_visp_data(path) / "mbt-depth" / "castel"
    color, depth_cam = read_visp_camera(folder / "chateau.xml"), read_visp_camera(folder / "chateau_depth.xml")
    depth_M_color = read_homogeneous(folder / "depth_M_color.txt")
    T_color_depth = np.linalg.inv(depth_M_color)
    out = []
    for i in (range(CASTEL_FRAMES) if frames is None else frames):
        image = read_pgm(folder / "castel" / f"image_{i:04d}.pgm")
        raw = read_depth_bin(folder / "castel" / f"depth_image_{i:04d}.bin")
        depth = register_depth(raw, depth_cam, color, T_color_depth, (image.shape[1], image.shape[0]))
        out.append(CastelFrame(i, (i + 1) * FRAME_PERIOD_NS, image, depth, raw))
    return CastelSequence(out, color.K.copy(), color, depth_cam, T_color_depth)


def load_cube(path: str | os.PathLike | None = None) -> CubeSequence:
    """The mbt/cube sequence of a static camera (frames read on demand) with its camera matrix."""
    mbt = find_visp_data(path) / "mbt"
    camera = read_visp_camera(mbt / "cube.xml")
    _need(mbt / "cube" / "image0000.pgm")
    count = sum(1 for _ in (mbt / "cube").glob("image[0-9][0-9][0-9][0-9].pgm"))
    return CubeSequence(mbt / "cube", camera.K.copy(), count)
