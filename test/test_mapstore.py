"""Map storage: exact round trip, atomic save (SIGKILL and exceptions mid-save), clear errors, read-only load."""
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from match_ros.core.relocalization import mapfile
from match_ros.core.relocalization.mapstore import FORMAT_VERSION, Map, MapError, MapKeyframe, matcher_identity
from match_ros.core.relocalization.retrieval import RetrievalIndex

REPO = Path(__file__).resolve().parents[1]


def random_map(n_keyframes=5, n_kp=300, dim=32, dtype=np.uint8, gdim=64, seed=0) -> Map:
    rng = np.random.default_rng(seed)
    m = Map("orb_teblid", matcher_identity("orb_teblid", 1024, dim, dtype), f"test_gd:dim={gdim}",
            {"max_keypoints": 1024, "ratio_test": None}, "map", 1_700_000_000_123_456_789,
            {"source": "unit test", "seed": seed})
    for i in range(n_keyframes):
        n = 0 if i == 2 else n_kp  # one keyframe without keypoints
        a = rng.uniform(-np.pi, np.pi, 3)
        R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        R *= np.sign(np.linalg.det(R))
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, a
        desc = (rng.integers(0, 256, (n, dim)).astype(np.uint8) if dtype == np.uint8
                else rng.normal(size=(n, dim)).astype(np.float32))
        pts = rng.normal(size=(n, 3)).astype(np.float32)
        pts[rng.random(n) < 0.3] = np.nan
        g = rng.random(gdim).astype(np.float32)
        m.add_keyframe(MapKeyframe(10 * i + 3, 2**62 + i, T, np.array([[500.0, 0, 319.5], [0, 501, 239.5], [0, 0, 1]]),
                                   (640, 480), rng.uniform(0, 480, (n, 2)).astype(np.float32), desc,
                                   rng.random(n).astype(np.float32), pts, g / np.linalg.norm(g), f"cam{i % 2}"))
    return m


def digest(path: Path) -> tuple:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size, sorted(os.listdir(path.parent))


@pytest.mark.parametrize("dtype,dim", [(np.uint8, 32), (np.float32, 64)])
def test_round_trip_exact(tmp_path, dtype, dim):
    m = random_map(dtype=dtype, dim=dim)
    path = tmp_path / "a.map"
    m.save(path)
    back = Map.load(path, m.matcher_identity, m.global_desc_identity)
    assert back.equals(m) and m.equals(back)
    for kf in m:
        b = back[kf.id]
        assert b.descriptors.dtype == dtype and b.points3d.dtype == np.float32 and b.T_world_cam.dtype == np.float64
        assert np.array_equal(np.isnan(b.points3d), np.isnan(kf.points3d))
        assert b.stamp_ns == kf.stamp_ns and b.frame_id == kf.frame_id and b.image_size == (640, 480)
    assert back.metadata == {"source": "unit test", "seed": 0} and back.created_ns == m.created_ns
    assert back.matcher_conf == m.matcher_conf and back.format_version == FORMAT_VERSION
    # the rebuilt retrieval index finds every keyframe by its own descriptor
    for kf in back:
        ids, scores = back.retrieve(kf.global_desc, 2)
        assert ids[0] == kf.id and scores[0] == pytest.approx(1.0, abs=1e-5)
    # the features view feeds a matcher
    f = back[3].features()
    assert f.keypoints.shape == (300, 2) and f.image_size == (640, 480)


def test_map_validation():
    m = random_map(n_keyframes=2)
    kf = m[3]
    with pytest.raises(ValueError, match="already"):
        m.add_keyframe(kf)
    with pytest.raises(ValueError, match="descriptors"):
        m.add_keyframe(MapKeyframe(99, 0, np.eye(4), kf.K, (640, 480), kf.keypoints,
                                   kf.descriptors[:, :16], kf.scores, kf.points3d, kf.global_desc))
    with pytest.raises(ValueError, match="points3d"):
        MapKeyframe(99, 0, np.eye(4), kf.K, (640, 480), kf.keypoints, kf.descriptors, kf.scores,
                    kf.points3d[:5], kf.global_desc)
    m.remove_keyframe(3)
    assert 3 not in m.keyframes and len(m) == 1


def test_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "m.map"
    random_map(seed=1).save(path)
    new = random_map(seed=2, n_keyframes=3)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    os.chmod(path, 0o640)
    new.save(path)
    assert Map.load(path).equals(new)
    assert sorted(os.listdir(tmp_path)) == ["m.map"]
    assert path.stat().st_mode & 0o777 == 0o640  # the replaced file's permissions are kept


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_save_that_raises_midway_keeps_old_map(tmp_path, monkeypatch, exc):
    path = tmp_path / "m.map"
    old = random_map(seed=1)
    old.save(path)
    before = digest(path)
    calls = {"n": 0}
    real_crc = mapfile._crc

    def failing_crc(blobs):  # fails while the third keyframe is being written
        calls["n"] += 1
        if calls["n"] == 3:
            raise exc("disk on fire")
        return real_crc(blobs)

    monkeypatch.setattr(mapfile, "_crc", failing_crc)
    with pytest.raises(exc, match="disk on fire"):
        random_map(seed=2).save(path)
    monkeypatch.undo()
    assert digest(path) == before  # untouched, and the temp file is gone
    assert Map.load(path).equals(old)


_SAVER = """
import sys
from match_ros.core.relocalization.mapstore import Map
m = Map.load(sys.argv[1])
print("ready", flush=True)
while True:
    m.save(sys.argv[2])
"""


@pytest.mark.slow
def test_atomic_save_under_sigkill(tmp_path):
    """A process saving in a loop is SIGKILLed at random moments: the map file is always one complete map."""
    target, source = tmp_path / "map.db", tmp_path / "src" / "big.db"
    old = random_map(n_keyframes=4, seed=1)
    new = random_map(n_keyframes=40, n_kp=2048, dim=64, dtype=np.float32, seed=2)
    old.save(target)
    new.save(source)
    t0 = time.perf_counter()
    new.save(tmp_path / "src" / "timing.db")
    save_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    killed_mid_save = 0
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(source), str(target)], stdout=subprocess.PIPE,
                                env=env, cwd=tmp_path)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.0, 2.5 * save_s))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()
        temps = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        killed_mid_save += bool(temps)
        for p in temps:  # a killed save leaves its temp file behind; the map itself is whole
            os.unlink(tmp_path / p)
        loaded = Map.load(target)
        assert loaded.equals(old) or loaded.equals(new), f"trial {trial}: map file is neither old nor new"
    assert killed_mid_save >= 2, "the kills never hit a save in progress: make the map bigger"


def _sqlite_edit(path: Path, sql: str, params=()):
    con = sqlite3.connect(path)
    con.execute(sql, params)
    con.commit()
    con.close()


def test_corrupt_files_raise_map_error(tmp_path):
    good = tmp_path / "good.map"
    random_map(n_keyframes=6, n_kp=500).save(good)
    data = good.read_bytes()

    cases = {
        "truncated": (data[: len(data) // 2], "truncated"),
        "empty": (b"", "not a map file"),
        "garbage": (os.urandom(5000), "not a map file"),
        "text": (b"hello " * 100, "not a SQLite"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / f"{name}.map"
        p.write_bytes(content)
        with pytest.raises(MapError, match=msg):
            Map.load(p)
    # a byte flipped inside a blob: SQLite's structure is fine, the checksum is not
    con = sqlite3.connect(good)
    blob = con.execute("SELECT descriptors FROM keyframes WHERE id = 13").fetchone()[0]
    con.close()
    pos = data.find(blob[100:200])
    assert pos > 0
    flipped = bytearray(data)
    flipped[pos + 10] ^= 0xFF
    p = tmp_path / "flipped.map"
    p.write_bytes(bytes(flipped))
    with pytest.raises(MapError, match="checksum"):
        Map.load(p)
    # b-tree pages overwritten with zeros
    page = int.from_bytes(data[16:18], "big")
    zeroed = bytearray(data)
    zeroed[page: 3 * page] = bytes(2 * page)
    p = tmp_path / "zeroed.map"
    p.write_bytes(bytes(zeroed))
    with pytest.raises(MapError, match="corrupt"):
        Map.load(p)


def test_missing_file_directory_and_tables(tmp_path):
    with pytest.raises(MapError, match="not found"):
        Map.load(tmp_path / "nope.map")
    with pytest.raises(MapError, match="not a file"):
        Map.load(tmp_path)
    other = tmp_path / "other.db"
    _sqlite_edit(other, "CREATE TABLE things (x)")
    with pytest.raises(MapError, match=r"missing table\(s\) \['keyframes', 'meta'\]"):
        Map.load(other)


def test_version_and_identity_checks(tmp_path):
    m = random_map()
    path = tmp_path / "m.map"
    m.save(path)
    with pytest.raises(MapError) as e:
        Map.load(path, expected_matcher_identity="xfeat_lighterglue:max_keypoints=2048:desc=64xfloat32")
    assert "orb_teblid:max_keypoints=1024:desc=32xuint8" in str(e.value) and "xfeat_lighterglue" in str(e.value)
    with pytest.raises(MapError, match="global descriptor"):
        Map.load(path, expected_global_desc_identity="other")
    newer = tmp_path / "newer.map"
    newer.write_bytes(path.read_bytes())
    _sqlite_edit(newer, "UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION + 1),))
    with pytest.raises(MapError, match="newer"):
        Map.load(newer)
    _sqlite_edit(newer, "UPDATE meta SET value = 'abc' WHERE key = 'format_version'")
    with pytest.raises(MapError, match="format_version"):
        Map.load(newer)


def test_load_never_modifies_the_file(tmp_path):
    path = tmp_path / "m.map"
    random_map().save(path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an old mtime makes any write visible
    before = digest(path)
    for _ in range(2):
        Map.load(path)
    with pytest.raises(MapError):
        Map.load(path, expected_matcher_identity="something else")
    assert digest(path) == before  # same bytes, mtime and no -journal/-wal/-shm beside it
    os.chmod(path, 0o444)  # read-only files load too
    try:
        assert Map.load(path).equals(random_map())
    finally:
        os.chmod(path, 0o644)


def test_retrieval_index_ops_and_serialization():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(100, 150)
    for kind in ("flat", "hnsw"):
        idx = RetrievalIndex(32, {"index_type": kind})
        idx.add(ids, x)
        got, scores = idx.search(x[7], 3)
        assert got[0] == 107 and scores[0] == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(scores) <= 0)
        bids, _ = idx.search(x[:4], 2)
        assert bids.shape == (4, 2) and list(bids[:, 0]) == [100, 101, 102, 103]
        assert idx.remove([107, 999]) == 1 and len(idx) == 49 and 107 not in idx
        assert idx.search(x[7], 1)[0][0] != 107
        back = RetrievalIndex.from_bytes(idx.to_bytes())
        assert back.kind == kind and len(back) == 49 and list(back.ids) == list(idx.ids)
        assert back.search(x[8], 1)[0][0] == 108
        with pytest.raises(ValueError, match="already"):
            back.add([108], x[8])
        with pytest.raises(ValueError, match="unit"):
            back.add([1], 2 * x[1])
        with pytest.raises(ValueError):
            back.search(x[0, :16], 1)
    auto = RetrievalIndex(32, {"hnsw_min_entries": 40})
    auto.add(ids[:30], x[:30])
    assert auto.kind == "flat"
    auto.add(ids[30:], x[30:])
    assert auto.kind == "hnsw" and auto.search(x[45], 1)[0][0] == 145
    auto.remove(ids[:20])
    assert auto.kind == "flat" and len(auto) == 30 and auto.search(x[45], 1)[0][0] == 145
    assert len(RetrievalIndex(32).search(x[0], 5)[0]) == 0
    with pytest.raises(ValueError):
        RetrievalIndex.from_bytes(b"not an index")


def test_temp_files_of_killed_saves_are_removed_at_the_next_save(tmp_path):
    """A killed save leaves `.NAME.PID.*.tmp`; the next save into the folder removes those of dead processes and
    keeps the one of a save still running in another process."""
    import subprocess

    path = tmp_path / "m.map"
    dead = tmp_path / ".m.map.999999999.abcd.tmp"
    dead.write_bytes(b"x" * 1000)
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".m.map.{live_proc.pid}.efgh.tmp"
        live.write_bytes(b"y")
        other = tmp_path / ".other.map.999999999.ijkl.tmp"  # another map's temp file: not ours to remove
        other.write_bytes(b"z")
        random_map(seed=3).save(path)
        assert not dead.exists() and live.exists() and other.exists()
        assert Map.load(path).equals(random_map(seed=3))
    finally:
        live_proc.kill()
        live_proc.wait()


def test_saving_over_what_is_not_a_map_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(MapError, match="not a match_ros map"):
        random_map().save(notes)
    os.symlink(tmp_path / "target.map", tmp_path / "link.map")
    with pytest.raises(MapError, match="symbolic link"):
        random_map().save(tmp_path / "link.map")
    os.mkfifo(tmp_path / "fifo.map")
    with pytest.raises(MapError, match="not a regular file"):
        random_map().save(tmp_path / "fifo.map")
    assert notes.read_text() == "keep me" and not (tmp_path / "target.map").exists()
