"""match_ros_render: render a ground-truth sequence to a folder (pure: numpy + OpenCV + PyYAML, no ROS).

Folder layout (TUM RGB-D style):
    rgb/NNNNNN.png       8-bit RGB frames (PNG stores them as written, lossless)
    depth/NNNNNN.png     16-bit depth, value = metres * 5000 (TUM convention; 0 = no surface), optional
    rgb.txt, depth.txt   "timestamp filename" per frame
    groundtruth.txt      TUM poses "timestamp tx ty tz qx qy qz qw" of T_world_cam (optical frame in world)
    camera.yaml          ROS camera_calibration format (plumb_bob, zero distortion)
Timestamps are seconds with nine decimals; they are read back to the exact nanosecond.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from match_ros.core.geometry.transforms import matrix_from_quaternion, quaternion_from_matrix
from match_ros.sim import DEFAULT_START_NS, DEFAULT_TRAJECTORY, SCENES, TRAJECTORIES, Camera, Frame, make_sequence

DEPTH_SCALE = 5000.0  # depth PNG units per metre (TUM RGB-D)


def format_stamp(stamp_ns: int) -> str:
    """Nanoseconds -> 'seconds.nnnnnnnnn' (exact)."""
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


def parse_stamp(text: str) -> int:
    """'seconds[.fraction]' -> nanoseconds, exact to the nanosecond."""
    sec, _, frac = text.strip().partition(".")
    if not sec.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"bad timestamp '{text}'")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def write_tum(path, poses) -> None:
    """poses: [(stamp_ns, T_world_cam [4 x 4])] -> TUM trajectory file."""
    lines = ["# timestamp tx ty tz qx qy qz qw (T_world_cam, camera optical frame in world)"]
    for stamp, T in poses:
        q = quaternion_from_matrix(T[:3, :3])
        lines.append(format_stamp(stamp) + " " + " ".join(f"{v:.9f}" for v in (*T[:3, 3], *q)))
    Path(path).write_text("\n".join(lines) + "\n")


def read_tum(path) -> list:
    """TUM trajectory file -> [(stamp_ns, T [4 x 4] float64)]."""
    poses = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        f = line.split()
        if len(f) != 8:
            raise ValueError(f"{path}:{n}: expected 'timestamp tx ty tz qx qy qz qw', got {len(f)} fields")
        T = np.eye(4)
        T[:3, 3] = [float(v) for v in f[1:4]]
        T[:3, :3] = matrix_from_quaternion([float(v) for v in f[4:8]])
        poses.append((parse_stamp(f[0]), T))
    return poses


def write_camera_yaml(path, camera: Camera, name: str = "match_ros_sim") -> None:
    """Camera -> ROS camera_calibration YAML (plumb_bob, zero distortion)."""
    c = camera
    data = {
        "image_width": c.width, "image_height": c.height, "camera_name": name,
        "camera_matrix": {"rows": 3, "cols": 3, "data": [float(v) for v in c.K.ravel()]},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.0] * 5},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": [float(v) for v in np.eye(3).ravel()]},
        "projection_matrix": {"rows": 3, "cols": 4,
                              "data": [c.fx, 0.0, c.cx, 0.0, 0.0, c.fy, c.cy, 0.0, 0.0, 0.0, 1.0, 0.0]},
    }
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def read_camera_yaml(path) -> Camera:
    """ROS camera_calibration YAML -> Camera; ValueError on missing fields or non-zero distortion."""
    try:
        d = yaml.safe_load(Path(path).read_text())
        K = np.asarray(d["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
        dist = np.asarray(d.get("distortion_coefficients", {}).get("data", []), dtype=np.float64)
        width, height = int(d["image_width"]), int(d["image_height"])
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a camera_calibration YAML ({exc})") from None
    if np.any(dist != 0):
        raise ValueError(f"{path}: non-zero distortion is not supported (images must be rectified)")
    return Camera(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])


def _read_list(path: Path) -> list:
    """TUM 'timestamp filename' list -> [(stamp_ns, filename)]."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            stamp, name = line.split()[:2]
            out.append((parse_stamp(stamp), name))
    return out


def write_sequence_folder(sequence, out_dir, *, with_depth: bool = True, progress: bool = False) -> Path:
    """Render every frame of ``sequence`` into ``out_dir`` (layout in the module docstring)."""
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    if with_depth:
        (out / "depth").mkdir(exist_ok=True)
    rgb_list, depth_list = ["# timestamp filename"], ["# timestamp filename"]
    for frame in tqdm(sequence, total=len(sequence), desc="render", unit="frame", disable=not progress):
        name, stamp = f"{frame.index:06d}.png", format_stamp(frame.stamp_ns)
        cv2.imwrite(str(out / "rgb" / name), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        rgb_list.append(f"{stamp} rgb/{name}")
        if with_depth:
            d = np.clip(np.rint(frame.depth.astype(np.float64) * DEPTH_SCALE), 0, 65535).astype(np.uint16)
            cv2.imwrite(str(out / "depth" / name), d)
            depth_list.append(f"{stamp} depth/{name}")
    (out / "rgb.txt").write_text("\n".join(rgb_list) + "\n")
    if with_depth:
        (out / "depth.txt").write_text("\n".join(depth_list) + "\n")
    write_tum(out / "groundtruth.txt", sequence.poses)
    write_camera_yaml(out / "camera.yaml", sequence.camera)
    return out


class FolderSequence:
    """A folder written by write_sequence_folder, read back with the Sequence interface.

    camera, poses [(stamp_ns, T)], len(), seq[i] -> Frame (depth None without depth/).
    Raises FileNotFoundError / ValueError when the folder is incomplete or inconsistent.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        for name in ("rgb.txt", "groundtruth.txt", "camera.yaml"):
            if not (self.folder / name).is_file():
                raise FileNotFoundError(f"{self.folder / name} is missing (not a match_ros_render folder)")
        self.camera = read_camera_yaml(self.folder / "camera.yaml")
        self.poses = read_tum(self.folder / "groundtruth.txt")
        self._rgb = _read_list(self.folder / "rgb.txt")
        depth_txt = self.folder / "depth.txt"
        self._depth = _read_list(depth_txt) if depth_txt.is_file() else None
        stamps = [s for s, _ in self.poses]
        if [s for s, _ in self._rgb] != stamps or (self._depth and [s for s, _ in self._depth] != stamps):
            raise ValueError(f"{self.folder}: image and pose timestamps differ")
        if not stamps:
            raise ValueError(f"{self.folder}: no frames")

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def stamps_ns(self) -> list:
        return [s for s, _ in self.poses]

    def __getitem__(self, i: int) -> Frame:
        stamp, T = self.poses[i]
        path = self.folder / self._rgb[i][1]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"{path} is missing or unreadable")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != (self.camera.height, self.camera.width):
            raise ValueError(f"{path}: size {rgb.shape[1]}x{rgb.shape[0]} differs from camera.yaml")
        depth = None
        if self._depth is not None:
            raw = cv2.imread(str(self.folder / self._depth[i][1]), cv2.IMREAD_UNCHANGED)
            if raw is None or raw.dtype != np.uint16:
                raise ValueError(f"{self.folder / self._depth[i][1]}: expected a 16-bit depth PNG")
            depth = (raw.astype(np.float32) / np.float32(DEPTH_SCALE))
        return Frame(i, stamp, T, rgb, depth)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def add_sequence_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that define a rendered sequence (shared with match_ros_bag_write)."""
    g = parser.add_argument_group("rendered sequence")
    g.add_argument("--scene", choices=SCENES, default="room", help="scene to render (default: room)")
    g.add_argument("--trajectory", choices=TRAJECTORIES, default=None,
                   help=f"camera trajectory (default: the scene's own, {DEFAULT_TRAJECTORY})")
    g.add_argument("--frames", type=int, default=90, help="number of frames (default: 90)")
    g.add_argument("--rate", type=float, default=30.0, help="frame rate of the timestamps [Hz] (default: 30)")
    g.add_argument("--width", type=int, default=640, help="image width [px] (default: 640)")
    g.add_argument("--height", type=int, default=480, help="image height [px] (default: 480)")
    g.add_argument("--focal", type=float, default=None,
                   help="focal length fx = fy [px] (default: 525 * width / 640); principal point at the centre")
    g.add_argument("--seed", type=int, default=0, help="seed of textures crops, trajectory phases, noise (default: 0)")
    g.add_argument("--photometric", action="store_true", help="apply a random sequence-wide gain and gamma")
    g.add_argument("--noise", type=float, default=0.0, help="Gaussian pixel noise std-dev [gray levels] (default: 0)")
    g.add_argument("--start-ns", type=int, default=DEFAULT_START_NS,
                   help=f"timestamp of the first frame [ns] (default: {DEFAULT_START_NS})")
    g.add_argument("--textures", default=None,
                   help="folder of texture photos (default: $MATCH_ROS_TEXTURES_DIR, else match_ros.sim photos)")


def sequence_from_args(args: argparse.Namespace):
    """The Sequence described by add_sequence_arguments' options; ValueError on bad values."""
    if args.frames < 1 or args.width < 16 or args.height < 16 or args.rate <= 0:
        raise ValueError("need --frames >= 1, --width and --height >= 16, --rate > 0")
    focal = args.focal if args.focal is not None else 525.0 * args.width / 640.0
    camera = Camera(args.width, args.height, focal, focal, (args.width - 1) / 2.0, (args.height - 1) / 2.0)
    return make_sequence(args.scene, args.trajectory, args.frames, rate_hz=args.rate, camera=camera,
                         seed=args.seed, start_ns=args.start_ns, photometric=args.photometric,
                         noise_sigma=args.noise, textures_dir=args.textures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="match_ros_render", description=__doc__.split("\n\n")[0] + ".",
        epilog="Writes rgb/, depth/, rgb.txt, depth.txt, groundtruth.txt (TUM) and camera.yaml into OUT.")
    parser.add_argument("out", help="output folder (created; must be empty unless --force)")
    add_sequence_arguments(parser)
    parser.add_argument("--no-depth", action="store_true", help="do not write depth images")
    parser.add_argument("--force", action="store_true", help="write into OUT even when it is not empty")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if out.exists() and any(out.iterdir()) and not args.force:
            raise ValueError(f"{out} is not empty (use --force to write into it)")
        sequence = sequence_from_args(args)
        write_sequence_folder(sequence, out, with_depth=not args.no_depth, progress=True)
    except (ValueError, OSError) as exc:
        print(f"match_ros_render: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
