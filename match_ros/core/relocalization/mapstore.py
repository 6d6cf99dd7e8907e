"""Relocalization map: posed keyframes with local features, 3D points and global descriptors, in SQLite.

File layout (one SQLite file, no server; all arrays little-endian raw bytes, shapes in their own columns):
- ``meta(key TEXT PRIMARY KEY, value TEXT)``: format_version, matcher_name, matcher_identity, matcher_conf
  (JSON), global_desc_identity, global_desc_dim, map_frame_id, created_ns, user metadata (JSON);
- ``keyframes(id INTEGER PRIMARY KEY, stamp_ns, frame_id, pose BLOB [4 x 4] f8 T_map_cam, K BLOB [3 x 3] f8,
  width, height, num_keypoints, desc_dim, desc_dtype, keypoints BLOB [N x 2] f4, descriptors BLOB [N x D],
  scores BLOB [N] f4, points3d BLOB [N x 3] f4 (NaN unknown), global_desc BLOB [G] f4, crc32)``.

The FAISS index is NOT stored: it is rebuilt from the stored global descriptors on load (10 000 x 1280
entries: well under a second). One source of truth, no FAISS-version or CPU/GPU dependence in the file.
``save`` is atomic (temp file in the same folder, fsync, os.replace, fsync of the folder): a crash or kill
during a save leaves the previous file untouched (a killed save may leave a ``.NAME.*.tmp`` file beside it).
``load`` opens the file read-only and immutable (no locks, no journal files): maps are never modified in
place, a new save replaces the file (new inode) so a reader keeps reading the version it opened.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from match_ros.core.relocalization.retrieval import RetrievalIndex

FORMAT_VERSION = 1
DESC_DTYPES = ("float32", "uint8")
_SQLITE_MAGIC = b"SQLite format 3\x00"


class MapError(ValueError):
    """A map file that cannot be used: missing, corrupt, too new, or built for another matcher."""


def matcher_identity(name: str, max_keypoints: int, descriptor_dim: int, descriptor_dtype) -> str:
    """Identity of the local features stored in a map: extractor name, keypoint budget, descriptor format."""
    if str(descriptor_dtype).startswith("torch."):  # torch.uint8 -> "uint8"
        descriptor_dtype = str(descriptor_dtype)[len("torch."):]
    dtype = np.dtype(descriptor_dtype).name
    return f"{name}:max_keypoints={int(max_keypoints)}:desc={int(descriptor_dim)}x{dtype}"


@dataclass
class MapKeyframe:
    """One keyframe of the map.

    T_world_cam: [4 x 4] float64 pose of the camera optical frame in the map frame
    K:           [3 x 3] float64 camera matrix; image_size: (width, height) [px]
    keypoints:   [N x 2] float32 pixels; descriptors: [N x D] float32 or uint8; scores: [N] float32
    points3d:    [N x 3] float32 map-frame points of the keypoints [m], NaN where unknown
    global_desc: [G] float32 unit-norm global descriptor
    """

    id: int
    stamp_ns: int
    T_world_cam: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    points3d: np.ndarray
    global_desc: np.ndarray
    frame_id: str = ""

    def __post_init__(self):
        self.id, self.stamp_ns = int(self.id), int(self.stamp_ns)
        self.T_world_cam = np.asarray(self.T_world_cam, np.float64)
        self.K = np.asarray(self.K, np.float64)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.keypoints = np.ascontiguousarray(self.keypoints, np.float32)
        self.descriptors = np.ascontiguousarray(self.descriptors)
        self.scores = np.ascontiguousarray(self.scores, np.float32)
        self.points3d = np.ascontiguousarray(self.points3d, np.float32)
        self.global_desc = np.ascontiguousarray(self.global_desc, np.float32)
        n = len(self.keypoints)
        problems = []
        if self.T_world_cam.shape != (4, 4) or not np.all(np.isfinite(self.T_world_cam)):
            problems.append(f"T_world_cam must be a finite [4 x 4], got {self.T_world_cam.shape}")
        if self.K.shape != (3, 3):
            problems.append(f"K must be [3 x 3], got {self.K.shape}")
        if min(self.image_size) <= 0:
            problems.append(f"image_size must be positive, got {self.image_size}")
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            problems.append(f"keypoints must be [N x 2], got {self.keypoints.shape}")
        if self.descriptors.ndim != 2 or len(self.descriptors) != n:
            problems.append(f"descriptors must be [{n} x D], got {self.descriptors.shape}")
        if self.descriptors.dtype.name not in DESC_DTYPES:
            problems.append(f"descriptors must be one of {DESC_DTYPES}, got {self.descriptors.dtype}")
        if self.scores.shape != (n,):
            problems.append(f"scores must be [{n}], got {self.scores.shape}")
        if self.points3d.shape != (n, 3):
            problems.append(f"points3d must be [{n} x 3], got {self.points3d.shape}")
        if self.global_desc.ndim != 1:
            problems.append(f"global_desc must be [G], got {self.global_desc.shape}")
        if problems:
            raise ValueError(f"keyframe {self.id}: " + "; ".join(problems))

    def features(self, device="cpu"):
        """The stored local features as a ``types.Features`` for Matcher.match (no backend extras)."""
        import torch  # storage itself needs no torch: a map tool or a saver process starts fast

        from match_ros.core.features.types import Features

        t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return Features(t(self.keypoints), t(self.descriptors), t(self.scores), self.image_size)

    def equals(self, other: "MapKeyframe") -> bool:
        """Bit-exact equality of every field (NaNs in points3d compare equal)."""
        arrays = ("T_world_cam", "K", "keypoints", "descriptors", "scores", "points3d", "global_desc")
        return ((self.id, self.stamp_ns, self.image_size, self.frame_id)
                == (other.id, other.stamp_ns, other.image_size, other.frame_id)
                and all(getattr(self, a).dtype == getattr(other, a).dtype
                        and np.array_equal(getattr(self, a), getattr(other, a), equal_nan=True) for a in arrays))


@dataclass(eq=False)
class Map:
    """Keyframes by id (a loaded map lists them in id order) plus what they were built with.

    matcher_identity / global_desc_identity: see ``matcher_identity`` and ``GlobalDescriptor.identity``;
    loading checks them against what the caller will match with.
    """

    matcher_name: str
    matcher_identity: str
    global_desc_identity: str
    matcher_conf: dict = field(default_factory=dict)
    map_frame_id: str = "map"
    created_ns: int = field(default_factory=time.time_ns)
    metadata: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    keyframes: dict = field(default_factory=dict)
    index_conf: Optional[dict] = None
    _index: Optional[RetrievalIndex] = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.keyframes)

    def __iter__(self) -> Iterator[MapKeyframe]:
        return iter(self.keyframes.values())

    def __getitem__(self, id_: int) -> MapKeyframe:
        return self.keyframes[int(id_)]

    @property
    def global_desc_dim(self) -> Optional[int]:
        return len(next(iter(self)).global_desc) if len(self) else None

    def add_keyframe(self, kf: MapKeyframe) -> None:
        """Add a keyframe; ValueError on a repeated id or a descriptor format unlike the others."""
        if kf.id in self.keyframes:
            raise ValueError(f"keyframe id {kf.id} already in the map")
        if len(self):
            first = next(iter(self))
            if (kf.descriptors.shape[1], kf.descriptors.dtype) != (first.descriptors.shape[1], first.descriptors.dtype):
                raise ValueError(f"keyframe {kf.id}: descriptors {kf.descriptors.shape[1]}x{kf.descriptors.dtype} "
                                 f"unlike the map's {first.descriptors.shape[1]}x{first.descriptors.dtype}")
            if kf.global_desc.shape != first.global_desc.shape:
                raise ValueError(f"keyframe {kf.id}: global descriptor {kf.global_desc.shape} unlike the map's "
                                 f"{first.global_desc.shape}")
        self.keyframes[kf.id] = kf
        if self._index is not None:
            self._index.add([kf.id], kf.global_desc[None])

    def remove_keyframe(self, id_: int) -> None:
        del self.keyframes[int(id_)]
        if self._index is not None:
            self._index.remove([int(id_)])

    @property
    def index(self) -> RetrievalIndex:
        """Retrieval index over the keyframes' global descriptors (built on first use)."""
        if self._index is None:
            if not len(self):
                raise ValueError("the map has no keyframes")
            index = RetrievalIndex(self.global_desc_dim, self.index_conf)
            index.add([kf.id for kf in self], np.stack([kf.global_desc for kf in self]))
            self._index = index
        return self._index

    def retrieve(self, global_desc: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """global_desc [G] -> (keyframe ids [k], cosine scores [k]), best first."""
        return self.index.search(global_desc, k)

    def equals(self, other: "Map") -> bool:
        """Every field and every keyframe equal (bit-exact arrays)."""
        head = ("matcher_name", "matcher_identity", "global_desc_identity", "matcher_conf", "map_frame_id",
                "created_ns", "metadata", "format_version")
        return (all(getattr(self, a) == getattr(other, a) for a in head)
                and sorted(self.keyframes) == sorted(other.keyframes)
                and all(self[i].equals(other[i]) for i in self.keyframes))

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> None:
        """Write the map to ``path`` atomically: the old file, if any, stays intact until the new one is complete."""
        path = Path(path).expanduser().absolute()
        if path.is_dir():
            raise ValueError(f"map path {path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp makes a 0600 file: give the map the old file's permissions, or rw-r--r--
        mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            os.chmod(tmp, mode)
            con = sqlite3.connect(tmp, isolation_level=None)
            try:
                _write(con, self)
            finally:
                con.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | Path, expected_matcher_identity: Optional[str] = None,
             expected_global_desc_identity: Optional[str] = None, index_conf: Optional[dict] = None) -> "Map":
        """Read a map saved by ``save``; MapError (a ValueError) names what is wrong with the file."""
        path = Path(path).expanduser().absolute()
        _check_header(path)
        try:
            con = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
        except sqlite3.Error as e:
            raise MapError(f"cannot open map file {path}: {e}") from e
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise MapError(f"map file {path} is corrupt (SQLite quick_check: {ok})")
            return _read(con, path, expected_matcher_identity, expected_global_desc_identity, index_conf)
        except sqlite3.DatabaseError as e:
            raise MapError(f"map file {path} is corrupt or not a map: {e}") from e
        finally:
            con.close()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_COLUMNS = ("id", "stamp_ns", "frame_id", "pose", "K", "width", "height", "num_keypoints", "desc_dim", "desc_dtype",
            "keypoints", "descriptors", "scores", "points3d", "global_desc", "global_dim", "crc32")
_BLOBS = ("pose", "K", "keypoints", "descriptors", "scores", "points3d", "global_desc")


def _crc(blobs) -> int:
    crc = 0
    for b in blobs:
        crc = zlib.crc32(b, crc)
    return crc


def _le(a: np.ndarray, dtype) -> bytes:
    """Array as little-endian raw bytes (the file's byte order on any host)."""
    return np.ascontiguousarray(a, np.dtype(dtype).newbyteorder("<")).tobytes()


def _write(con: sqlite3.Connection, m: Map) -> None:
    con.execute("PRAGMA journal_mode=OFF")  # the temp file is discarded on failure: no journal needed
    con.execute("PRAGMA synchronous=OFF")  # fsync once, by hand, before the rename
    con.execute("BEGIN")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp_ns INTEGER NOT NULL, frame_id TEXT NOT NULL, "
                "pose BLOB NOT NULL, K BLOB NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
                "num_keypoints INTEGER NOT NULL, desc_dim INTEGER NOT NULL, desc_dtype TEXT NOT NULL, "
                "keypoints BLOB NOT NULL, descriptors BLOB NOT NULL, scores BLOB NOT NULL, points3d BLOB NOT NULL, "
                "global_desc BLOB NOT NULL, global_dim INTEGER NOT NULL, crc32 INTEGER NOT NULL)")
    meta = {"format_version": str(FORMAT_VERSION), "matcher_name": m.matcher_name,
            "matcher_identity": m.matcher_identity, "matcher_conf": json.dumps(m.matcher_conf, sort_keys=True),
            "global_desc_identity": m.global_desc_identity, "global_desc_dim": str(m.global_desc_dim or 0),
            "map_frame_id": m.map_frame_id, "created_ns": str(int(m.created_ns)),
            "num_keyframes": str(len(m)), "metadata": json.dumps(m.metadata, sort_keys=True)}
    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    sql = f"INSERT INTO keyframes ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    for kf in m:
        blobs = [_le(kf.T_world_cam, "f8"), _le(kf.K, "f8"), _le(kf.keypoints, "f4"),
                 _le(kf.descriptors, kf.descriptors.dtype), _le(kf.scores, "f4"), _le(kf.points3d, "f4"),
                 _le(kf.global_desc, "f4")]
        b = dict(zip(_BLOBS, blobs))
        con.execute(sql, (kf.id, kf.stamp_ns, kf.frame_id, b["pose"], b["K"], kf.image_size[0], kf.image_size[1],
                          len(kf.keypoints), kf.descriptors.shape[1], kf.descriptors.dtype.name, b["keypoints"],
                          b["descriptors"], b["scores"], b["points3d"], b["global_desc"], len(kf.global_desc),
                          _crc(blobs)))
    con.execute("COMMIT")


def _check_header(path: Path) -> None:
    """MapError for a missing file, a non-SQLite file, or one shorter than its header says."""
    if not path.exists():
        raise MapError(f"map file not found: {path}")
    if not path.is_file():
        raise MapError(f"map path is not a file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or head[:16] != _SQLITE_MAGIC:
        raise MapError(f"{path} is not a map file (not a SQLite database{', empty' if size == 0 else ''})")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages and size < pages * page_size:  # header page count is valid
        raise MapError(f"map file {path} is truncated: {size} bytes, header says {pages * page_size}")


def _read(con, path: Path, expected_matcher: Optional[str], expected_global: Optional[str],
          index_conf: Optional[dict]) -> Map:
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"meta", "keyframes"} - tables
    if missing:
        raise MapError(f"{path} is not a match_ros map: missing table(s) {sorted(missing)}")
    meta = dict(con.execute("SELECT key, value FROM meta"))
    try:
        version = int(meta["format_version"])
    except (KeyError, ValueError):
        raise MapError(f"{path}: missing or invalid format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise MapError(f"{path}: map format version {version} is newer than this software reads "
                       f"(<= {FORMAT_VERSION}); update match_ros or rebuild the map")
    if version < 1:
        raise MapError(f"{path}: unknown map format version {version}")
    needed = ("matcher_name", "matcher_identity", "global_desc_identity", "map_frame_id", "created_ns")
    lacking = [k for k in needed if k not in meta]
    if lacking:
        raise MapError(f"{path}: meta table lacks {lacking}")
    if expected_matcher is not None and meta["matcher_identity"] != expected_matcher:
        raise MapError(f"{path} was built with matcher '{meta['matcher_identity']}', "
                       f"but '{expected_matcher}' is configured; rebuild the map or match its matcher")
    if expected_global is not None and meta["global_desc_identity"] != expected_global:
        raise MapError(f"{path} was built with global descriptor '{meta['global_desc_identity']}', "
                       f"but '{expected_global}' is configured")
    try:
        m = Map(meta["matcher_name"], meta["matcher_identity"], meta["global_desc_identity"],
                json.loads(meta.get("matcher_conf", "{}")), meta["map_frame_id"], int(meta["created_ns"]),
                json.loads(meta.get("metadata", "{}")), version, index_conf=index_conf)
    except ValueError as e:
        raise MapError(f"{path}: invalid meta value: {e}") from e
    cols = {r[1] for r in con.execute("PRAGMA table_info(keyframes)")}
    if set(_COLUMNS) - cols:
        raise MapError(f"{path}: keyframes table lacks columns {sorted(set(_COLUMNS) - cols)}")
    for row in con.execute(f"SELECT {', '.join(_COLUMNS)} FROM keyframes ORDER BY id"):
        m.add_keyframe(_keyframe_from_row(dict(zip(_COLUMNS, row)), path))
    if "num_keyframes" in meta and int(meta["num_keyframes"]) != len(m):
        raise MapError(f"{path}: {len(m)} keyframes stored, meta says {meta['num_keyframes']}")
    return m


def _keyframe_from_row(r: dict, path: Path) -> MapKeyframe:
    kid, n, d, g = r["id"], r["num_keypoints"], r["desc_dim"], r["global_dim"]
    if r["desc_dtype"] not in DESC_DTYPES:
        raise MapError(f"{path}: keyframe {kid} has unknown descriptor dtype {r['desc_dtype']!r}")
    if _crc(r[b] for b in _BLOBS) != r["crc32"]:
        raise MapError(f"{path}: keyframe {kid} is corrupt (checksum mismatch)")
    shapes = {"pose": ("f8", (4, 4)), "K": ("f8", (3, 3)), "keypoints": ("f4", (n, 2)),
              "descriptors": (r["desc_dtype"], (n, d)), "scores": ("f4", (n,)), "points3d": ("f4", (n, 3)),
              "global_desc": ("f4", (g,))}
    arrays = {}
    for name, (dt, shape) in shapes.items():
        dtype = np.dtype(dt).newbyteorder("<")
        blob = r[name]
        if not isinstance(blob, bytes) or len(blob) != dtype.itemsize * int(np.prod(shape)):
            raise MapError(f"{path}: keyframe {kid} field {name} has {len(blob or b'')} bytes, expected "
                           f"{dtype.itemsize * int(np.prod(shape))} for {shape} {dtype.name}")
        arrays[name] = np.frombuffer(blob, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    try:
        return MapKeyframe(kid, r["stamp_ns"], arrays["pose"], arrays["K"], (r["width"], r["height"]),
                           arrays["keypoints"], arrays["descriptors"], arrays["scores"], arrays["points3d"],
                           arrays["global_desc"], r["frame_id"])
    except ValueError as e:
        raise MapError(f"{path}: {e}") from e
