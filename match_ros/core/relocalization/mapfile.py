"""The map file: one SQLite file, versioned, written atomically, read read-only.

Layout (all arrays little-endian raw bytes, shapes in their own columns):
- ``meta(key TEXT PRIMARY KEY, value TEXT)``: format_version, matcher_name, matcher_identity, matcher_conf
  (JSON), global_desc_identity, global_desc_dim, map_frame_id, created_ns, num_keyframes, user metadata (JSON);
  from version 2: vocabulary_identity;
- ``keyframes(id INTEGER PRIMARY KEY, stamp_ns, frame_id, pose BLOB [4 x 4] f8 T_map_cam, K BLOB [3 x 3] f8,
  width, height, num_keypoints, desc_dim, desc_dtype, keypoints BLOB [N x 2] f4, descriptors BLOB [N x D],
  scores BLOB [N] f4, points3d BLOB [N x 3] f4 (NaN unknown), global_desc BLOB [G] f4, crc32)``; from version 2
  also ``words BLOB [N] i4`` (visual word of each keypoint, in the CRC);
- version 2: ``vocabulary(name TEXT PRIMARY KEY, rows, cols, dtype, data BLOB, crc32)``: centroids, idf, binary.

Version 1 files (no vocabulary) still load; their vocabulary is learnt again when a localizer needs it.
Retrieval indexes are not stored: they are rebuilt from the stored vectors on load.

Saving (``save_map``): the map is written to a temporary file in the target folder (``.NAME.PID.*.tmp``), fsynced
and renamed over the target, then the folder is fsynced: a crash, a kill or a full disk during a save leaves
the previous file untouched. Temporary files of dead processes are removed at the next save into the folder.
The target must be a regular file that is a match_ros map, or not exist: symlinks, folders, FIFOs and other
files are refused, never followed or overwritten. SQLite and OS errors become ``MapError`` / ``OSError``.
Loading (``load_map``) opens the file read-only and immutable (no locks, no journal files).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

FORMAT_VERSION = 2
DESC_DTYPES = ("float32", "uint8")
SQLITE_MAGIC = b"SQLite format 3\x00"


class MapError(ValueError):
    """A map file that cannot be used: missing, corrupt, too new, or built for another matcher."""


# ----------------------------------------------------------------------------------------------- saving
def check_save_path(path: str | Path) -> Path:
    """The absolute path a map may be saved to; MapError when saving there would damage something else."""
    path = Path(path).expanduser().absolute()
    if path.is_symlink():
        raise MapError(f"refusing to save the map to {path}: it is a symbolic link")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise MapError(f"refusing to save the map to {path}: not a regular file")
        if path.stat().st_size and not is_map_file(path):
            raise MapError(f"refusing to overwrite {path}: it is not a match_ros map")
    if path.parent.exists() and not path.parent.is_dir():
        raise MapError(f"cannot save the map to {path}: {path.parent} is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def is_map_file(path: Path) -> bool:
    """True for a SQLite file with a match_ros meta table (any format version)."""
    try:
        with open(path, "rb") as f:
            if f.read(16) != SQLITE_MAGIC:
                return False
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            return con.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone() is not None
        finally:
            con.close()
    except (OSError, sqlite3.Error):
        return False


def remove_stale_temp_files(folder: Path, name: str) -> int:
    """Remove ``.NAME.PID.*.tmp`` files of processes that no longer run (killed saves); returns how many."""
    removed = 0
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\..*\.tmp$")
    for entry in folder.iterdir():
        m = pattern.match(entry.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that process still runs: its save may be under way
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        try:
            entry.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def save_map(m, path: str | Path) -> None:
    """Write map ``m`` to ``path`` atomically (module docstring). MapError / OSError on failure, old file intact."""
    path = check_save_path(path)
    remove_stale_temp_files(path.parent, path.name)
    # mkstemp makes a 0600 file: give the map the old file's permissions, or rw-r--r--
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, mode)
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            _write(con, m)
        finally:
            con.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except sqlite3.Error as e:  # e.g. "database or disk is full"
        _unlink(tmp)
        raise MapError(f"saving the map to {path} failed ({e}); the previous file is untouched") from e
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


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
            "keypoints", "descriptors", "scores", "points3d", "global_desc", "global_dim", "words", "crc32")
_BLOBS = ("pose", "K", "keypoints", "descriptors", "scores", "points3d", "global_desc", "words")
_VOCAB_ARRAYS = {"centroids": "f4", "idf": "f4", "binary": "u1"}


def _crc(blobs) -> int:
    crc = 0
    for b in blobs:
        crc = zlib.crc32(b, crc)
    return crc


def _le(a: np.ndarray, dtype) -> bytes:
    """Array as little-endian raw bytes (the file's byte order on any host)."""
    return np.ascontiguousarray(a, np.dtype(dtype).newbyteorder("<")).tobytes()


def _write(con: sqlite3.Connection, m) -> None:
    con.execute("PRAGMA journal_mode=OFF")  # the temp file is discarded on failure: no journal needed
    con.execute("PRAGMA synchronous=OFF")  # fsync once, by hand, before the rename
    con.execute("BEGIN")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp_ns INTEGER NOT NULL, frame_id TEXT NOT NULL, "
                "pose BLOB NOT NULL, K BLOB NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
                "num_keypoints INTEGER NOT NULL, desc_dim INTEGER NOT NULL, desc_dtype TEXT NOT NULL, "
                "keypoints BLOB NOT NULL, descriptors BLOB NOT NULL, scores BLOB NOT NULL, points3d BLOB NOT NULL, "
                "global_desc BLOB NOT NULL, global_dim INTEGER NOT NULL, words BLOB NOT NULL, crc32 INTEGER NOT NULL)")
    con.execute("CREATE TABLE vocabulary (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, cols INTEGER NOT NULL, "
                "dtype TEXT NOT NULL, data BLOB NOT NULL, crc32 INTEGER NOT NULL)")
    vocab = m.vocabulary
    meta = {"format_version": str(FORMAT_VERSION), "matcher_name": m.matcher_name,
            "matcher_identity": m.matcher_identity, "matcher_conf": json.dumps(m.matcher_conf, sort_keys=True),
            "global_desc_identity": m.global_desc_identity, "global_desc_dim": str(m.global_desc_dim or 0),
            "map_frame_id": m.map_frame_id, "created_ns": str(int(m.created_ns)),
            "num_keyframes": str(len(m)), "metadata": json.dumps(m.metadata, sort_keys=True),
            "vocabulary_identity": vocab.identity if vocab is not None else ""}
    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    if vocab is not None:
        for name, arr in vocab.to_arrays().items():
            a = np.asarray(arr).reshape(len(arr), -1)
            blob = _le(a, _VOCAB_ARRAYS[name])
            con.execute("INSERT INTO vocabulary VALUES (?, ?, ?, ?, ?, ?)",
                        (name, a.shape[0], a.shape[1], _VOCAB_ARRAYS[name], blob, zlib.crc32(blob)))
    sql = f"INSERT INTO keyframes ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    for kf in m:
        words = kf.words if kf.words is not None else np.full(len(kf.keypoints), -1, np.int32)
        blobs = [_le(kf.T_world_cam, "f8"), _le(kf.K, "f8"), _le(kf.keypoints, "f4"),
                 _le(kf.descriptors, kf.descriptors.dtype), _le(kf.scores, "f4"), _le(kf.points3d, "f4"),
                 _le(kf.global_desc, "f4"), _le(words, "i4")]
        b = dict(zip(_BLOBS, blobs))
        con.execute(sql, (kf.id, kf.stamp_ns, kf.frame_id, b["pose"], b["K"], kf.image_size[0], kf.image_size[1],
                          len(kf.keypoints), kf.descriptors.shape[1], kf.descriptors.dtype.name, b["keypoints"],
                          b["descriptors"], b["scores"], b["points3d"], b["global_desc"], len(kf.global_desc),
                          b["words"], _crc(blobs)))
    con.execute("COMMIT")


# ----------------------------------------------------------------------------------------------- loading
def load_map(path: str | Path, map_type, keyframe_type, expected_matcher: Optional[str] = None,
             expected_global: Optional[str] = None, index_conf: Optional[dict] = None):
    """Read a map written by ``save_map`` into a ``map_type`` of ``keyframe_type`` (mapstore's Map and MapKeyframe,
    passed in: this module does not import the one that imports it); MapError (a ValueError) names what is wrong
    with the file."""
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
        return _read(con, path, map_type, keyframe_type, expected_matcher, expected_global, index_conf)
    except sqlite3.DatabaseError as e:
        raise MapError(f"map file {path} is corrupt or not a map: {e}") from e
    finally:
        con.close()


def _check_header(path: Path) -> None:
    """MapError for a missing file, a non-SQLite file, or one shorter than its header says."""
    if not path.exists():
        raise MapError(f"map file not found: {path}")
    if not path.is_file():
        raise MapError(f"map path is not a file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or head[:16] != SQLITE_MAGIC:
        raise MapError(f"{path} is not a map file (not a SQLite database{', empty' if size == 0 else ''})")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages and size < pages * page_size:  # header page count is valid
        raise MapError(f"map file {path} is truncated: {size} bytes, header says {pages * page_size}")


def _read(con, path: Path, map_type, keyframe_type, expected_matcher: Optional[str], expected_global: Optional[str],
          index_conf: Optional[dict]):
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
        m = map_type(meta["matcher_name"], meta["matcher_identity"], meta["global_desc_identity"],
                     json.loads(meta.get("matcher_conf", "{}")), meta["map_frame_id"], int(meta["created_ns"]),
                     json.loads(meta.get("metadata", "{}")), version, index_conf=index_conf)
    except ValueError as e:
        raise MapError(f"{path}: invalid meta value: {e}") from e
    columns = _COLUMNS if version >= 2 else tuple(c for c in _COLUMNS if c != "words")
    blobs = _BLOBS if version >= 2 else tuple(b for b in _BLOBS if b != "words")
    cols = {r[1] for r in con.execute("PRAGMA table_info(keyframes)")}
    if set(columns) - cols:
        raise MapError(f"{path}: keyframes table lacks columns {sorted(set(columns) - cols)}")
    if version >= 2 and meta.get("vocabulary_identity"):
        m.vocabulary = _read_vocabulary(con, path, meta["vocabulary_identity"])
    for row in con.execute(f"SELECT {', '.join(columns)} FROM keyframes ORDER BY id"):
        m.add_keyframe(_keyframe_from_row(dict(zip(columns, row)), blobs, path, m.vocabulary, keyframe_type))
    if "num_keyframes" in meta and int(meta["num_keyframes"]) != len(m):
        raise MapError(f"{path}: {len(m)} keyframes stored, meta says {meta['num_keyframes']}")
    return m


def _read_vocabulary(con, path: Path, identity: str):
    from match_ros.core.relocalization.vocabulary import Vocabulary

    if "vocabulary" not in {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
        raise MapError(f"{path}: meta names a vocabulary but the vocabulary table is missing")
    arrays = {}
    rows_sql = "SELECT name, rows, cols, dtype, data, crc32 FROM vocabulary"
    for name, rows, cols, dtype, data, crc in con.execute(rows_sql):
        if name not in _VOCAB_ARRAYS or dtype != _VOCAB_ARRAYS[name] or zlib.crc32(data) != crc:
            raise MapError(f"{path}: vocabulary array {name!r} is corrupt or unknown")
        dt = np.dtype(dtype).newbyteorder("<")
        if len(data) != rows * cols * dt.itemsize:
            raise MapError(f"{path}: vocabulary array {name} has {len(data)} bytes, "
                           f"expected {rows * cols * dt.itemsize}")
        arrays[name] = np.frombuffer(data, dt).reshape(rows, cols).astype(dt.newbyteorder("="))
    if set(arrays) != set(_VOCAB_ARRAYS):
        raise MapError(f"{path}: vocabulary lacks {sorted(set(_VOCAB_ARRAYS) - set(arrays))}")
    try:
        vocab = Vocabulary(arrays["centroids"], arrays["idf"].ravel(), bool(arrays["binary"].ravel()[0]))
    except ValueError as e:
        raise MapError(f"{path}: {e}") from e
    if vocab.identity != identity:
        raise MapError(f"{path}: vocabulary does not match its recorded identity")
    return vocab


def _keyframe_from_row(r: dict, blobs: tuple, path: Path, vocab, keyframe_type):
    kid, n, d, g = r["id"], r["num_keypoints"], r["desc_dim"], r["global_dim"]
    if r["desc_dtype"] not in DESC_DTYPES:
        raise MapError(f"{path}: keyframe {kid} has unknown descriptor dtype {r['desc_dtype']!r}")
    if _crc(r[b] for b in blobs) != r["crc32"]:
        raise MapError(f"{path}: keyframe {kid} is corrupt (checksum mismatch)")
    shapes = {"pose": ("f8", (4, 4)), "K": ("f8", (3, 3)), "keypoints": ("f4", (n, 2)),
              "descriptors": (r["desc_dtype"], (n, d)), "scores": ("f4", (n,)), "points3d": ("f4", (n, 3)),
              "global_desc": ("f4", (g,)), "words": ("i4", (n,))}
    arrays = {}
    for name in blobs:
        dt, shape = shapes[name]
        dtype = np.dtype(dt).newbyteorder("<")
        blob = r[name]
        if not isinstance(blob, bytes) or len(blob) != dtype.itemsize * int(np.prod(shape)):
            raise MapError(f"{path}: keyframe {kid} field {name} has {len(blob or b'')} bytes, expected "
                           f"{dtype.itemsize * int(np.prod(shape))} for {shape} {dtype.name}")
        arrays[name] = np.frombuffer(blob, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    words = arrays.get("words")
    if words is not None and (vocab is None or np.any(words < 0) or np.any(words >= vocab.size)):
        words = None  # saved before a vocabulary existed: assigned again with the vocabulary
    try:
        return keyframe_type(kid, r["stamp_ns"], arrays["pose"], arrays["K"], (r["width"], r["height"]),
                             arrays["keypoints"], arrays["descriptors"], arrays["scores"], arrays["points3d"],
                             arrays["global_desc"], r["frame_id"], words)
    except ValueError as e:
        raise MapError(f"{path}: {e}") from e
