"""Relocalization end to end: a map built from a rendered mapping bag, a changed-day query bag (drifting odometry
on /tf) replayed through the relocalizer process (a real ROS 2 graph on loopback, each on a free domain id), poses and
map->odom scored against the exact ground truth; services, parameters and the map_builder process as a careless
client, an operator with Ctrl-C and a full disk would use them. Assertions are on message content."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from match_ros.core.geometry.transforms import invert, make_T, rotation_error_deg
from match_ros.core.relocalization.mapstore import Map
from match_ros.evaluation.eval_reloc import replay_relocalization, write_query_bag
from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, free_domain_id, spin_until
from match_ros.evaluation.reloc_metrics import score
from match_ros.evaluation.reloc_scenes import drifting_odometry, make_query_sequence, scene_bags
from match_ros.sim import Sequence, make_sequence
from match_ros.tools.bag_write import BagLayout, write_sequence_bag
from match_ros.tools.bagio import read_topic
from match_ros.tools.build_map import build_map_from_bag

pytestmark = pytest.mark.slow  # starts processes or builds a workspace (slow tier)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    d = tmp_path_factory.mktemp("reloc")
    map_bag, query_bag = scene_bags(d, "room", "changed_day", map_frames=180, query_frames=60, progress=False)
    summary = build_map_from_bag(map_bag, d / "room.db", "orb_teblid", progress=False, log=lambda *_: None)
    return d, summary, map_bag, query_bag


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _call(node, client, req, timeout=30.0, resend_s=None):
    """The service's answer. resend_s: send an idempotent request again after this long without an answer (a
    server that has just appeared may be matched before its reply reaches this client: one CI run lost the first
    GetState of a fresh lifecycle node for 30 s, 0 of 3 runs here)."""
    deadline = time.monotonic() + timeout
    while True:
        fut = client.call_async(req)
        wait = min(resend_s or timeout, deadline - time.monotonic())
        if spin_until(node, fut.done, wait):
            return fut.result()
        assert resend_s and time.monotonic() < deadline, "service did not answer"


def test_continuous_relocalization_against_ground_truth(room):
    d, summary, _, query_bag = room
    assert summary["keyframes"] >= 15 and summary["depth"]
    digest = _sha(d / "room.db")
    records, map_odom, log = replay_relocalization(d / "room.db", query_bag, {"matcher": "orb_teblid"}, rate=0.25,
                                                   domain_id=free_domain_id())
    s = score(records)
    # measured offline on these 60 frames: 52 poses, all within 5 cm / 2 deg; the node answers what it keeps up with,
    # so on a loaded machine only a handful of frames may be queried (8 in one CI run, 3 without a pose): every pose
    # given must be right, and most queries must get one
    assert s["queries"] >= 8, log[-2000:]
    reasons = [r.reason for r in records if r.T_est is None]
    assert s["wrong_poses"] == 0 and s["median_t_m"] < 0.03, s
    assert all(r.errors[0] < 0.25 and r.errors[1] < 5.0 for r in records if r.T_est is not None), s
    assert s["poses"] >= 0.5 * s["queries"], (s, reasons)
    assert s["tracking_share"] >= 0.5  # after the first fix the odometry prior is tracked
    # REP 105: the broadcast map->odom composed with the bag's odometry gives the true camera pose
    gt = {r.stamp_ns: r.T_gt for r in records}
    odom = {}
    for _, msg in read_topic(query_bag, "/tf"):
        for tr in msg.transforms:
            from match_ros.ros.codec import stamp_to_ns, transform_to_matrix

            odom[stamp_to_ns(tr.header.stamp)] = transform_to_matrix(tr.transform)
    posed = {r.stamp_ns for r in records if r.T_est is not None}
    fixes = dict((stamp, T) for stamp, T in map_odom if stamp in posed)  # sent at each fix, at its image stamp
    assert len(fixes) == s["poses"]
    err = [np.linalg.norm((T @ odom[stamp])[:3, 3] - gt[stamp][:3, 3]) for stamp, T in fixes.items()]
    assert np.median(err) < 0.03 and max(err) < 0.25
    # between fixes the latest map->odom goes out again (map_odom_period_s), stamped ahead of the bag's clock (so a
    # tf2 lookup at any image stamp after the first fix succeeds): always a transform already sent at a fix
    again = [i for i, (stamp, _) in enumerate(map_odom) if stamp not in posed]
    assert len(again) >= 5, len(again)
    for i in again:
        sent = [T for stamp, T in map_odom[:i] if stamp in posed]
        assert sent and any(np.allclose(map_odom[i][1], T) for T in sent), map_odom[i][0]
    # covariance from the solution: positive definite, small, not a constant, honest
    covs = np.array([r.covariance for r in records if r.covariance is not None])
    assert all(np.all(np.linalg.eigvalsh(0.5 * (c + c.T)) > 0) for c in covs)
    assert np.all(np.sqrt(covs[:, 0, 0]) < 0.1) and np.ptp(covs[:, 0, 0]) > 0
    assert s["within_3sigma"] >= 0.7
    assert _sha(d / "room.db") == digest  # the map on disk is never modified by using it


def test_map_odom_is_not_asserted_past_a_fix_that_contradicts_the_odometry(room, tmp_path):
    """visual_odometry restarts from its held pose after a loss: from then on odom -> camera is off by the motion it
    missed. The next global fix contradicts the odometry's prediction and is held back until a second one agrees
    (a wrong fix would steer every later frame); meanwhile the old map -> odom must not be re-broadcast at the
    stamps after that frame, where it would put the camera as far off as the jump (before: every re-broadcast
    between the two fixes, 0.6 m off). Here the odometry jumps 0.6 m at frame 30 of 60."""
    d, _, _, _ = room
    seq = make_query_sequence("room", 60, kind="changed_day")
    odom = drifting_odometry([T for _, T in seq.poses])
    jump = make_T(np.eye(3), [0.6, 0.0, 0.0])  # in odom: the restarted odometry's frame content moved
    odom = [T if i < 30 else jump @ T for i, T in enumerate(odom)]
    bag = tmp_path / "jump_bag"
    write_sequence_bag(bag, seq, layout=BagLayout(tf_frame="odom"), tf_poses=odom)
    records, map_odom, log = replay_relocalization(d / "room.db", bag, {"matcher": "orb_teblid"}, rate=0.25,
                                                   domain_id=free_domain_id())
    stamps = np.array([f.stamp_ns for f in seq])
    gt = {f.stamp_ns: f.T_world_cam for f in seq}
    jump_ns = int(stamps[30])
    assert all(r.errors[0] < 0.25 and r.errors[1] < 5.0 for r in records if r.T_est is not None), records
    held = [r.stamp_ns for r in records if r.T_est is None and "held back" in (r.reason or "")]
    assert held and min(held) >= jump_ns, [r.reason for r in records if r.T_est is None]
    # every map -> odom from the first frame that showed the jump (the node cannot know of it before: it skips
    # frames while busy), composed with the odometry there, puts the camera where it was
    first_held = min(held)
    late = [(stamp, T) for stamp, T in map_odom if stamp >= first_held]
    assert late, log[-2000:]
    for stamp, T in late:
        i = int(np.argmin(np.abs(stamps - stamp)))  # the nearest frame (the room's camera moves ~1 cm per frame)
        err = np.linalg.norm((T @ odom[i])[:3, 3] - gt[int(stamps[i])][:3, 3])
        assert err < 0.25, ((stamp - jump_ns) * 1e-9, (first_held - jump_ns) * 1e-9, err)
    assert any(stamp > max(held) for stamp, _ in late)  # and it resumes once a fix agrees


def test_no_overlap_query_publishes_no_pose(room, tmp_path):
    d = room[0]
    write_query_bag(tmp_path / "facade_bag", make_sequence("facade", n_frames=30, seed=3))  # another place
    # lost_after 2: a loaded machine may answer only a few of the 30 frames, the streak must still be reached;
    # played at 0.2x (5 s): at 0.5x a machine at load 8 answered 2 queries in the 2 s of the bag
    records, map_odom, _ = replay_relocalization(d / "room.db", tmp_path / "facade_bag",
                                                 {"matcher": "orb_teblid", "lost_after": 2}, rate=0.2,
                                                 domain_id=free_domain_id())
    assert len(records) >= 3
    assert all(r.T_est is None for r in records) and map_odom == [], [(r.reason, r.errors) for r in records]
    # (the very first image may come before the first camera_info: that query says so)
    assert all(r.reason.startswith(("no pose:", "lost:", "no usable camera_info")) for r in records), [
        r.reason for r in records]
    assert any(r.reason.startswith("lost:") for r in records)  # lost_after failures in a row say so


def test_missing_odometry_and_base_frame_transforms(room, tmp_path):
    """No /tf at all: the pose is still published (of the camera, base_link has no transform to it, said once)
    and the status says map->odom waits for the odometry (which never comes: none is sent)."""
    d = room[0]
    from match_ros.evaluation.reloc_scenes import make_query_sequence

    bag = tmp_path / "no_tf"
    write_sequence_bag(bag, make_query_sequence("room", 20), layout=BagLayout(tf=""))
    records, map_odom, log = replay_relocalization(
        d / "room.db", bag, {"matcher": "orb_teblid", "tf_timeout_s": 0.02, "base_frame": "base_link"}, rate=0.5,
        domain_id=free_domain_id(), topics=("/camera/image_raw", "/camera/camera_info"))
    posed = [r for r in records if r.T_est is not None]
    assert posed and map_odom == []
    assert all("map->odom waits for it" in r.reason for r in posed)
    assert all(np.linalg.norm(r.T_est[:3, 3] - r.T_gt[:3, 3]) < 0.05 for r in posed)  # the camera's pose
    assert log.count("no TF from base_frame 'base_link'") == 1


def test_services_refuse_bad_requests_and_never_freeze(room, tmp_path, graph):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from match_ros.srv import LoadMap, Relocalize, SaveMap

    d, _, map_bag, _ = room
    node = graph()
    truncated = tmp_path / "truncated.db"
    data = (d / "room.db").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    load = node.create_client(LoadMap, "/relocalizer/load_map")
    save = node.create_client(SaveMap, "/relocalizer/save_map")
    reloc = node.create_client(Relocalize, "/relocalizer/relocalize")
    diags = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 50)
    with NodeProcess("match_ros.nodes.relocalizer", {"map_path": str(truncated), "matcher": "orb_teblid"}) as proc:
        assert spin_until(node, lambda: load.service_is_ready() and reloc.service_is_ready(), 60), proc.log()
        assert spin_until(node, lambda: bool(diags), 10)
        assert diags[-1].status[0].level == DiagnosticStatus.ERROR and diags[-1].status[0].message == "no map loaded"
        r = _call(node, load, LoadMap.Request(path=str(tmp_path / "missing.db")))
        assert not r.success and "missing.db" in r.message
        sift_map = tmp_path / "sift.db"
        build_map_from_bag(map_bag, sift_map, "sift", progress=False, log=lambda *_: None)
        r = _call(node, load, LoadMap.Request(path=str(sift_map)))  # built with another extractor
        assert not r.success and "sift" in r.message and "orb_teblid" in r.message
        empty = tmp_path / "empty.db"
        m = Map.load(d / "room.db")
        for kf_id in list(m.keyframes):
            m.remove_keyframe(kf_id)
        m.save(empty, with_vocabulary=False)
        r = _call(node, load, LoadMap.Request(path=str(empty)))
        assert not r.success and "no keyframes" in r.message
        r = _call(node, load, LoadMap.Request(path=str(d / "room.db")))
        assert r.success and r.num_keyframes >= 15, r.message
        # saving: a new file works; a folder, a symlink, a FIFO and a file that is not a map are refused untouched
        copy = tmp_path / "saved" / "copy.db"  # an absolute path outside map_directory: its folder must exist
        copy.parent.mkdir()
        assert _call(node, save, SaveMap.Request(path=str(copy))).success
        other = tmp_path / "notes.txt"
        other.write_text("not a map")
        os.symlink(other, tmp_path / "link.db")
        os.mkfifo(tmp_path / "fifo.db")
        for bad in (tmp_path, tmp_path / "link.db", tmp_path / "fifo.db", other):
            r = _call(node, save, SaveMap.Request(path=str(bad)))
            assert not r.success and ("refusing" in r.message or "not a folder" in r.message), r.message
        assert other.read_text() == "not a map"
        # relocalize without images: absurd timeouts are bounded (10 s at most), concurrent calls do not starve
        # the node (each service has its own callback group: subscriptions and timers keep running)
        t0 = time.monotonic()
        r = _call(node, reloc, Relocalize.Request(timeout_s=float("inf")))
        assert not r.success and "no image" in r.message and time.monotonic() - t0 < 5.0
        t0 = time.monotonic()
        r = _call(node, reloc, Relocalize.Request(timeout_s=1e30))
        assert not r.success and 9.0 < time.monotonic() - t0 < 15.0
        n_diag = len(diags)
        futures = [reloc.call_async(Relocalize.Request(timeout_s=1.5)) for _ in range(3)]
        spin_until(node, lambda: False, 3.0)
        assert len(diags) >= n_diag + 2  # the node kept publishing diagnostics while the calls waited
        assert spin_until(node, lambda: all(f.done() for f in futures), 20)
        assert proc.alive()
    assert Map.load(copy).equals(Map.load(d / "room.db"))


def test_concurrent_relocalize_calls_each_answered_within_their_own_timeout(room, graph):
    """Ten ~/relocalize calls at once without images, timeouts 0.6-5 s: each is answered when ITS timeout passes
    (measured before: three calls of 1.5 s answered after 12, 22 and 32 s, one after another)."""
    from match_ros.srv import Relocalize

    d = room[0]
    node = graph()
    reloc = node.create_client(Relocalize, "/relocalizer/relocalize")
    with NodeProcess("match_ros.nodes.relocalizer", {"map_path": str(d / "room.db"), "matcher": "orb_teblid"}) as proc:
        assert spin_until(node, reloc.service_is_ready, 60), proc.log()
        timeouts = [0.6, 5.0, 1.0, 4.0, 1.5, 3.5, 2.0, 3.0, 2.5, 0.8]
        answered = {}
        t0 = time.monotonic()
        futures = [reloc.call_async(Relocalize.Request(timeout_s=t)) for t in timeouts]
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _f, i=i: answered.setdefault(i, time.monotonic() - t0))
        assert spin_until(node, lambda: len(answered) == len(timeouts), 15), answered
        for i, t in enumerate(timeouts):
            r = futures[i].result()
            assert not r.success and "no image" in r.message, r.message
            # answered at its own timeout: the test's client adds DDS delivery on a loaded 2-core machine
            assert t - 0.05 <= answered[i] <= t + 1.0, (t, answered[i], answered)
        assert proc.alive()


SHUTDOWN_RUNS = int(os.environ.get("MATCH_ROS_SHUTDOWN_RUNS", "3"))  # 10 for the figure


def test_ctrl_c_answers_waiting_calls_and_exits_within_3_s(room, graph):
    """Ctrl-C while three ~/relocalize calls wait (timeouts 8 s): every call is answered "shutting down" and the
    process exits within 3 s, SHUTDOWN_RUNS times in a row (before: 2 of 3 shutdowns needed launch's SIGTERM after
    10.7-11.9 s and the callers never got an answer)."""
    from match_ros.srv import Relocalize

    d = room[0]
    node = graph()
    reloc = node.create_client(Relocalize, "/relocalizer/relocalize")
    exits, logs = [], []
    for _ in range(SHUTDOWN_RUNS):
        params = {"map_path": str(d / "room.db"), "matcher": "orb_teblid"}
        with NodeProcess("match_ros.nodes.relocalizer", params) as proc:
            assert spin_until(node, reloc.service_is_ready, 60), proc.log()
            futures = [reloc.call_async(Relocalize.Request(timeout_s=8.0)) for _ in range(3)]
            spin_until(node, lambda: False, 1.0)  # the calls reach the node and wait there
            assert not any(f.done() for f in futures)
            t0 = time.monotonic()
            proc.proc.send_signal(signal.SIGINT)
            assert spin_until(node, lambda: all(f.done() for f in futures), 5.0), proc.log()[-2000:]
            proc.proc.wait(10.0)
            exits.append(time.monotonic() - t0)
            assert proc.proc.returncode == 0, proc.log()[-2000:]
            assert all(not f.result().success and f.result().message == "shutting down" for f in futures)
            logs.append(proc.log())
        spin_until(node, lambda: not reloc.service_is_ready(), 5.0)
    print(f"Ctrl-C with 3 calls waiting: exits after {np.round(exits, 2).tolist()} s")
    assert max(exits) < 3.0, exits
    # and an idle node (no call waiting; its 20 Hz map -> odom timer running): 3 of 3 printed it before the thread
    # pool was drained first (runtime._drain_pool, ros2/rclpy#968)
    for _ in range(2):
        params = {"map_path": str(d / "room.db"), "matcher": "orb_teblid"}
        with NodeProcess("match_ros.nodes.relocalizer", params) as proc:
            assert spin_until(node, reloc.service_is_ready, 60), proc.log()
            spin_until(node, lambda: False, 1.0)
            t0 = time.monotonic()
            proc.proc.send_signal(signal.SIGINT)
            proc.proc.wait(10.0)
            exits.append(time.monotonic() - t0)
            assert proc.proc.returncode == 0, proc.log()[-2000:]
            logs.append(proc.log())
        spin_until(node, lambda: not reloc.service_is_ready(), 5.0)
    assert max(exits) < 3.0, exits
    # a callback that failed after the executor stopped (before: "cannot use Destroyable" in 3 of ~11 exits with
    # calls waiting, and in most idle ones)
    assert not any("never retrieved" in log for log in logs), [log[-1500:] for log in logs if "never retrieved" in log]
    # ... nor a dropped callback's coroutine left unstarted (a distro check: 3 of 6 idle exits warned of one)
    assert not any("never awaited" in log for log in logs), [log[-1500:] for log in logs if "never awaited" in log]


def test_map_directory_and_map_path_follow_what_the_user_meant(room, tmp_path, graph):
    """Relative map paths resolve in map_directory; no folder is created outside it (before: a save to
    /nonexistent/dir/x.db created that folder at the filesystem root); map_path follows ~/load_map."""
    from rcl_interfaces.srv import GetParameters

    from match_ros.srv import LoadMap, SaveMap

    d = room[0]
    maps = tmp_path / "maps"
    (maps / "lab").mkdir(parents=True)
    (maps / "lab" / "room.db").write_bytes((d / "room.db").read_bytes())
    node = graph()
    load = node.create_client(LoadMap, "/relocalizer/load_map")
    save = node.create_client(SaveMap, "/relocalizer/save_map")
    get_p = node.create_client(GetParameters, "/relocalizer/get_parameters")
    outside = tmp_path / "not_there" / "deeper"
    params = {"map_path": "lab/room.db", "map_directory": str(maps), "matcher": "orb_teblid"}
    with NodeProcess("match_ros.nodes.relocalizer", params) as proc:
        assert spin_until(node, lambda: save.service_is_ready() and get_p.service_is_ready(), 60), proc.log()
        r = _call(node, save, SaveMap.Request(path="copies/today.db"))  # inside map_directory: folder made there
        assert r.success and (maps / "copies" / "today.db").is_file(), r.message
        r = _call(node, save, SaveMap.Request(path=str(outside / "x.db")))
        assert not r.success and "does not exist" in r.message and "create_directories" in r.message, r.message
        assert not (tmp_path / "not_there").exists()
        r = _call(node, load, LoadMap.Request(path="copies/today.db"))
        assert r.success, r.message
        got = _call(node, get_p, GetParameters.Request(names=["map_path"])).values[0].string_value
        assert got == str(maps / "copies" / "today.db")
        assert proc.alive()
    assert Map.load(maps / "copies" / "today.db").equals(Map.load(d / "room.db"))


def test_managed_relocalizer_follows_lifecycle_transitions(room, graph):
    """lifecycle: true, driven as nav2's lifecycle_manager does (ChangeState configure, activate, ...): nothing
    runs before configure; configure loads the map and offers the services; activate subscribes to the camera and
    the node localizes a frame (checked against the ground truth); deactivate unsubscribes and ~/relocalize says
    so; cleanup releases everything; a configure with a map that does not load fails and leaves it unconfigured."""
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from sensor_msgs.msg import CameraInfo, Image

    from match_ros.evaluation.reloc_scenes import make_query_sequence
    from match_ros.ros import conversions as conv
    from match_ros.srv import Relocalize

    d = room[0]
    seq = make_query_sequence("room", 20)
    node = graph()
    change = node.create_client(ChangeState, "/relocalizer/change_state")
    get_state = node.create_client(GetState, "/relocalizer/get_state")
    reloc = node.create_client(Relocalize, "/relocalizer/relocalize")
    image_pub = node.create_publisher(Image, "/camera/image_raw", 10)
    info_pub = node.create_publisher(CameraInfo, "/camera/camera_info", 10)
    from geometry_msgs.msg import PoseArray
    from sensor_msgs.msg import PointCloud2

    from match_ros.ros.visuals import latched_qos

    shown = {"keyframes": [], "points": [], "debug": []}
    node.create_subscription(PoseArray, "/relocalizer/map_keyframes", shown["keyframes"].append, latched_qos())
    node.create_subscription(PointCloud2, "/relocalizer/map_points", shown["points"].append, latched_qos())
    node.create_subscription(Image, "/relocalizer/debug_image", shown["debug"].append, 2)

    def transition(t):
        return _call(node, change, ChangeState.Request(transition=Transition(id=t))).success

    def state():
        return _call(node, get_state, GetState.Request(), resend_s=5.0).current_state.id

    params = {"map_path": str(d / "room.db"), "matcher": "orb_teblid", "lifecycle": True, "image_qos": "reliable"}
    remaps = {"image": "/camera/image_raw", "camera_info": "/camera/camera_info"}
    with NodeProcess("match_ros.nodes.relocalizer", params, remaps) as proc:
        assert spin_until(node, lambda: change.service_is_ready() and get_state.service_is_ready(), 60), proc.log()
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        spin_until(node, lambda: False, 1.0)
        assert not reloc.service_is_ready() and image_pub.get_subscription_count() == 0
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
        assert "map" in proc.log() and "loaded" in proc.log()
        # rviz: the map's keyframes and points, latched (this subscriber came before, a later rviz gets them too)
        assert spin_until(node, lambda: shown["keyframes"] and shown["points"], 10)
        m = Map.load(d / "room.db")
        kf_msg, cloud = shown["keyframes"][-1], shown["points"][-1]
        assert kf_msg.header.frame_id == "map" and len(kf_msg.poses) == len(m)
        centres = sorted(tuple(np.round(conv.pose_to_matrix(p)[:3, 3], 4)) for p in kf_msg.poses)
        assert centres == sorted(tuple(np.round(kf.T_world_cam[:3, 3], 4)) for kf in m)
        pts = np.frombuffer(bytes(cloud.data), "<f4").reshape(-1, 3)
        map_pts = np.concatenate([kf.points3d[np.isfinite(kf.points3d[:, 0])] for kf in m])
        assert cloud.width == len(pts) == len(map_pts) and np.allclose(np.sort(pts[:, 2]), np.sort(map_pts[:, 2]))
        assert spin_until(node, reloc.service_is_ready, 10)
        r = _call(node, reloc, Relocalize.Request(timeout_s=1.0))
        assert not r.success and "not active" in r.message
        assert image_pub.get_subscription_count() == 0
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
        assert spin_until(node, lambda: image_pub.get_subscription_count() == 1, 10)
        # a frame while a call waits: the call gets the fix, which is the true pose
        frame = seq[5]
        info = CameraInfo(k=seq.camera.K.ravel().tolist(), width=640, height=480)
        info.header.stamp, info.header.frame_id = conv.ns_to_stamp(frame.stamp_ns), "camera_optical_frame"
        img = conv.numpy_to_image(frame.rgb, "rgb8", header=info.header)
        for _ in range(3):  # camera_info first: a call answered for a frame before it would say "no camera_info"
            info_pub.publish(info)
            spin_until(node, lambda: False, 0.3)
        future = reloc.call_async(Relocalize.Request(timeout_s=8.0))
        for _ in range(20):
            info_pub.publish(info)
            image_pub.publish(img)
            if spin_until(node, future.done, 0.4):
                break
        r = future.result()
        assert r is not None and r.success, (r, proc.log()[-2000:])
        T = conv.pose_to_matrix(r.pose.pose.pose)
        assert np.linalg.norm(T[:3, 3] - frame.T_world_cam[:3, 3]) < 0.05
        assert rotation_error_deg(T[:3, :3], frame.T_world_cam[:3, :3]) < 2.0
        # ~/debug_image (drawn because this test subscribes): the query with its inliers in green
        assert spin_until(node, lambda: bool(shown["debug"]), 5)
        dbg = shown["debug"][-1]
        drawn = np.frombuffer(bytes(dbg.data), np.uint8).reshape(dbg.height, dbg.width, 3)
        assert (dbg.width, dbg.height) == (640, 480) and dbg.header.stamp == info.header.stamp
        changed = np.any(drawn != frame.rgb, axis=2)  # drawn over this very frame: circles and a caption only
        assert changed.mean() < 0.3 and np.sum(np.all(drawn == (40, 220, 40), axis=2)) > 500  # (measured 2893)
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
        assert spin_until(node, lambda: image_pub.get_subscription_count() == 0, 10)
        r = _call(node, reloc, Relocalize.Request(timeout_s=1.0))
        assert not r.success and "not active" in r.message
        assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert spin_until(node, lambda: not reloc.service_is_ready(), 10)
        # configure again with a map that does not load: refused, still unconfigured, the node keeps running
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        set_p = node.create_client(SetParameters, "/relocalizer/set_parameters")
        assert spin_until(node, set_p.service_is_ready, 10)
        bad = Parameter(name="map_path", value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                              string_value=str(d / "missing.db")))
        assert _call(node, set_p, SetParameters.Request(parameters=[bad])).results[0].successful
        assert not transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_UNCONFIGURED
        assert "configure failed" in proc.log() and "missing.db" in proc.log()
        assert proc.alive()
    assert proc.proc.returncode == 0


def test_plain_node_has_no_lifecycle_interface(room, graph):
    from lifecycle_msgs.srv import GetState

    from match_ros.srv import Relocalize

    node = graph()
    get_state = node.create_client(GetState, "/relocalizer/get_state")
    reloc = node.create_client(Relocalize, "/relocalizer/relocalize")
    params = {"map_path": str(room[0] / "room.db"), "matcher": "orb_teblid"}
    with NodeProcess("match_ros.nodes.relocalizer", params) as proc:
        assert spin_until(node, reloc.service_is_ready, 60), proc.log()
        spin_until(node, lambda: False, 1.0)
        assert not get_state.service_is_ready()


def test_parameters_are_applied_or_refused_with_a_reason(room, graph):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import GetParameters, SetParameters

    d = room[0]
    node = graph()
    set_p = node.create_client(SetParameters, "/relocalizer/set_parameters")
    get_p = node.create_client(GetParameters, "/relocalizer/get_parameters")

    def param(name, value):
        if isinstance(value, str):
            return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
        if isinstance(value, int):
            return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER,
                                                             integer_value=value))
        return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))

    with NodeProcess("match_ros.nodes.relocalizer", {"map_path": str(d / "room.db"), "matcher": "orb_teblid"}) as proc:
        assert spin_until(node, set_p.service_is_ready, 60), proc.log()
        cases = [("rate_hz", 5.0, True, ""), ("localizer.top_k", 0, False, "out of range"),
                 ("localizer.guided_min_similarity", float("nan"), False, "out of range"),
                 ("pnp.min_inliers", 60, True, ""), ("matcher", "sift", False, "read-only"),
                 ("map_path", "/nonexistent/map.db", False, "map not loaded")]
        for name, value, ok, why in cases:
            r = _call(node, set_p, SetParameters.Request(parameters=[param(name, value)])).results[0]
            assert r.successful == ok and why in r.reason, (name, r.reason)
        got = _call(node, get_p, GetParameters.Request(names=["rate_hz", "localizer.top_k", "pnp.min_inliers",
                                                              "map_path"])).values
        assert got[0].double_value == 5.0 and got[1].integer_value == 10 and got[2].integer_value == 60
        assert got[3].string_value == str(d / "room.db")
        assert proc.alive()


def _map_builder_run(tmp_path, node, bag, params, preexec=None, stop=None, pose_topic="/tf"):
    from match_ros.srv import SaveMap
    from match_ros.tools.bag_play import BagPlayer

    save = node.create_client(SaveMap, "/map_builder/save_map")
    # 0.25x (7.5 frames/s): the node drops frames it cannot keep up with, and beside two busy cores (a benchmark
    # running) 0.5x left 2 keyframes of the room's 60 frames (once in ~10 runs)
    player = BagPlayer(node, bag, rate=0.25, topics=["/camera/image_raw", "/camera/camera_info", pose_topic])
    remaps = {"image": "/camera/image_raw", "camera_info": "/camera/camera_info"}
    with NodeProcess("match_ros.nodes.map_builder", {"matcher": "orb_teblid", "use_sim_time": True, **params},
                     remaps, preexec=preexec) as proc:
        img = player.publishers["/camera/image_raw"]
        assert spin_until(node, lambda: save.service_is_ready() and img.get_subscription_count() > 0, 60), proc.log()
        spin_until(node, lambda: False, 1.0)
        player.play()
        spin_until(node, lambda: False, 2.0)
        result = stop(proc, save) if stop else None
    player.close()
    return result, proc


def test_map_builder_builds_a_correct_map_and_ctrl_c_twice_saves_it(room, tmp_path, graph):
    """Live mapping from a replayed bag; then SIGINT twice (the terminal's and the one ros2 launch forwards)
    while the shutdown save runs: the map is on disk, whole, with points on the ground-truth surfaces."""
    from match_ros.core.geometry.camera import project, transform_points
    from match_ros.core.geometry.transforms import invert

    seq = make_sequence("room", n_frames=60, seed=0)
    bag = tmp_path / "mapping"
    write_sequence_bag(bag, seq)
    out = tmp_path / "live.db"

    def ctrl_c_twice(proc, _save):
        proc.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.proc.send_signal(signal.SIGINT)
        # and one more once the save is done, while the interpreter exits (ended it by SIGINT before)
        deadline = time.monotonic() + 30
        while "saved" not in proc.log() and proc.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.proc.send_signal(signal.SIGINT)
        return proc.proc.wait(30)

    rc, proc = _map_builder_run(tmp_path, graph(), bag, {"map_path": str(out)}, stop=ctrl_c_twice)
    assert rc == 0 and "saved" in proc.log(), (rc, proc.log()[-4000:])
    m = Map.load(out)
    assert len(m) >= 3
    idx = {s: i for i, s in enumerate(seq.stamps_ns)}
    errors = []
    for kf in m:
        frame = seq[idx[kf.stamp_ns]]
        np.testing.assert_allclose(kf.T_world_cam, frame.T_world_cam, atol=1e-6)  # pose from /tf
        X = kf.points3d[np.isfinite(kf.points3d[:, 0])]
        uv, z = project(transform_points(invert(kf.T_world_cam), X), seq.camera.K)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < 639.5) & (uv[:, 1] >= 0) & (uv[:, 1] < 479.5)
        z_gt = frame.depth[np.round(uv[ok, 1]).astype(int), np.round(uv[ok, 0]).astype(int)]
        errors.extend(np.abs(z[ok] - z_gt) / z_gt)
    assert len(errors) > 300
    assert np.median(errors) < 0.02  # triangulated depth vs the GT surface: measured ~1 % median


def test_map_builder_waits_for_poses_that_come_after_their_image(tmp_path, graph):
    """pose_source a PoseStamped topic whose poses are recorded 30 ms after their images (a motion-capture or SLAM
    pose that arrives late): the node waits for each, as it does for TF (before: 40 of 40 frames rejected, 0
    keyframes); the keyframes carry the true poses. 60 frames: each waits for its pose (120 ms at 0.25x), so the
    node takes at most every other frame; of 30 a clean-clone CI run beside a benchmark kept 1 keyframe (3 in
    two later runs), of 60 it keeps 6-7, also beside two busy processes."""
    from match_ros.srv import SaveMap

    seq = make_sequence("room", n_frames=60, seed=0)
    bag = tmp_path / "late_poses"
    write_sequence_bag(bag, seq, layout=BagLayout(tf="", pose_delay_ns=30_000_000))
    out = tmp_path / "late.db"

    def save_now(proc, save):
        return _call(graph_node, save, SaveMap.Request(path=str(out)))

    graph_node = graph()
    params = {"map_path": "", "save_on_shutdown": False, "pose_source": "/ground_truth/pose"}
    r, proc = _map_builder_run(tmp_path, graph_node, bag, params, stop=save_now, pose_topic="/ground_truth/pose")
    assert r.success, (r.message, proc.log()[-3000:])
    m = Map.load(out)
    assert len(m) >= 3, proc.log()[-3000:]
    poses = dict(zip(seq.stamps_ns, (seq[i].T_world_cam for i in range(len(seq)))))
    for kf in m:
        np.testing.assert_allclose(kf.T_world_cam, poses[kf.stamp_ns], atol=1e-6)


@pytest.fixture()
def small_disk(tmp_path):
    """A 100 kB file system (tmpfs; needs root, as CI has): a map does not fit, remount(size) frees it."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=50m", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_during_a_save_is_answered_and_the_map_kept(tmp_path, graph, small_disk):
    """The disk is full during a save: the save fails with a clear message, /diagnostics says so, the node stays
    up and keeps its map, nothing is left on the disk; once there is room, the next save succeeds."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from match_ros.srv import SaveMap

    disk, grow = small_disk
    seq = make_sequence("room", n_frames=30, seed=0)
    bag = tmp_path / "mapping"
    write_sequence_bag(bag, seq)
    out = disk / "map.db"
    node = graph()
    diags = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 50)

    def disk_full_then_free(proc, save):
        r = _call(node, save, SaveMap.Request(path=str(out)))
        assert not r.success and "save failed" in r.message and "kept in memory" in r.message, r.message
        assert spin_until(node, lambda: any(s.level == DiagnosticStatus.ERROR and "save failed" in s.message
                                            for d in diags for s in d.status), 5), [
            (s.level, s.message[:60]) for d in diags[-3:] for s in d.status]
        assert proc.alive() and os.listdir(disk) == []  # no partial map, no temp file
        grow()
        r = _call(node, save, SaveMap.Request(path=str(out)))
        assert r.success, r.message
        return r

    _map_builder_run(tmp_path, node, bag, {"map_path": "", "save_on_shutdown": False}, stop=disk_full_then_free)
    assert len(Map.load(out)) >= 2


# at 1x (40 frames in 1.3 s) a busy 2-core machine lets visual_odometry answer only some frames (measured 5 of 40
# with a benchmark running beside the test; 9 of 40 frames 0.2-0.27 s apart on an idle one, where it lost track in
# 1 of 3 runs, with or without the relocalizer's map -> odom re-broadcast): how much it tracks then depends on the
# CPU, so only 0.2x asserts it; what the relocalizer publishes must be right at both rates
@pytest.mark.parametrize("rate, min_odom, min_tracked", [(1.0, 3, 0.0), (0.2, 10, 0.4)])
def test_visual_odometry_and_relocalizer_give_map_odom_camera_without_wheel_odometry(
        room, tmp_path, rate, min_odom, min_tracked):
    """odometry_relocalize.launch.py's graph: an RGB-D bag without any /tf through the visual_odometry and the
    relocalizer processes, played at 1x and 0.2x beside a process that keeps one core busy. visual_odometry's
    odom -> camera drifts little from the truth; the relocalizer waits for it at each image stamp (odom_wait_s) and
    uses it as its prior: EVERY published map -> odom composed with it gives the true camera pose within 25 cm /
    5 deg (measured in the field before the wait: fixes tracked from a stale last fix, 0.14-0.46 m off)."""
    seq = make_query_sequence("room", 40, kind="classic")
    records, map_odom, vo_log, _, tf, odom_cov = _run_vo_and_relocalizer(room[0], tmp_path, seq, rate, busy=True)
    _check_vo_and_relocalizer(seq, records, map_odom, vo_log, tf, odom_cov, min_odom, min_tracked)


@pytest.mark.slow
def test_a_restart_of_visual_odometry_is_no_prior_for_the_relocalizer(room, tmp_path):
    """The lens covered for 1 s mid-bag (frames 30-59 black: gain 0.004, the camera moving on), played at 0.2x:
    visual_odometry loses track and, on the first frame it sees again, restarts from the pose it held; from then on
    its odom -> camera is off by the motion it missed. Its covariance on ~/odom rises where it lost track and where it
    restarted: the relocalizer takes those as breaks. Before, the first global fix after the restart was refused
    as far from the odometry's stale prediction and held back (a distro check at 1x: 0.90 m / 123 deg, the bag
    ended first), and a fix waiting for its odometry was anchored to a transform tf2 interpolated across the gap.
    Now every map -> odom sent at a fix, composed with the odometry there, is the true camera, including after the
    restart, and the first fix after the restart is not held back (before: 0.51 m / 50 deg from the prediction)."""
    seq = make_query_sequence("room", 90, kind="classic")
    gain = [0.004 if 30 <= i < 60 else (seq.gain[i] if isinstance(seq.gain, list) else seq.gain) for i in range(90)]
    covered = Sequence(seq.scene, seq.camera, seq.poses, gain=gain, gamma=seq.gamma, seed=seq.seed)
    records, map_odom, vo_log, log, tf, odom_cov = _run_vo_and_relocalizer(room[0], tmp_path, covered, 0.2)
    stamps = sorted(odom_cov)
    variance = [odom_cov[t][1][0] for t in stamps]
    rises = [stamps[k] for k in range(1, len(stamps)) if variance[k] >= variance[k - 1] + 0.99]
    uncovered = seq.stamps_ns[60]
    assert len(rises) >= 2 and rises[0] >= seq.stamps_ns[30] and rises[-1] >= uncovered, (rises, vo_log[-3000:])
    assert "the odometry broke" in log, log[-3000:]
    odom = {t: T for t, parent, child, T in tf if parent == "odom" and child == "camera_optical_frame"}
    gt = dict(seq.poses)
    restart = rises[-1]  # the odometry's missed motion: what a prior from before the restart is off by
    A = gt[stamps[0]] @ invert(odom[stamps[0]])
    after = [t for t in sorted(odom) if t > restart]
    assert after, vo_log[-3000:]
    stale = np.linalg.norm((A @ odom[after[0]])[:3, 3] - gt[after[0]][:3, 3])
    assert stale > 0.25, stale  # the restart is a jump the relocalizer must not bridge
    t0 = seq.stamps_ns[0]
    story = [(round((r.stamp_ns - t0) * 1e-9, 2), r.reason or f"pose ({r.mode})") for r in records]
    # the first fix after the restart is taken (later ones may be held back as anywhere else: 0.2 s in, 3 cm from
    # a prediction with a covariance of millimetres; 0.17 s after the restart, 2.4 deg from it)
    answered = [r for r in records if r.T_est is not None or "held back" in (r.reason or "")]
    first = next((r for r in answered if r.stamp_ns >= restart), None)
    assert first is not None and first.T_est is not None, story
    _check_map_odom_camera(covered, records, map_odom, odom, 0.4)
    posed_after = {r.stamp_ns for r in records if r.T_est is not None and r.stamp_ns > restart}
    fixes_after = [(t, T) for t, T in map_odom if t in posed_after and t in odom]
    assert fixes_after, [(r.stamp_ns > restart, r.reason) for r in records]  # map -> odom follows the restart


def _run_vo_and_relocalizer(d, tmp_path, seq, rate, busy=False):
    """odometry_relocalize.launch.py's graph on an RGB-D bag of ``seq`` without /tf: (records, map -> odom, the
    visual_odometry log, the relocalizer log, every other transform, {stamp: (pose, covariance)} of ~/odom)."""
    bag = tmp_path / "rgbd_no_tf"
    write_sequence_bag(bag, seq, layout=BagLayout(tf=""), with_depth=True)
    domain = free_domain_id()
    confine_to_loopback(domain)
    # one torch thread each, as odometry_relocalize.launch.py sets on 2 cores (two nodes with two spinning threads
    # each oversubscribe the cores)
    vo_params = {"matcher": "orb_teblid", "image_qos": "reliable", "use_sim_time": True, "base_frame": "",
                 "torch_threads": 1}
    topics = ("/camera/image_raw", "/camera/camera_info", "/camera/depth")
    remaps = {"image": topics[0], "camera_info": topics[1], "depth": topics[2]}
    from match_ros.ros.codec import pose_to_matrix, stamp_to_ns

    tf, odom_cov = [], {}

    def on_odom(m):
        assert m.header.frame_id == "odom" and m.child_frame_id == "camera_optical_frame"
        odom_cov[stamp_to_ns(m.header.stamp)] = (pose_to_matrix(m.pose.pose), np.array(m.pose.covariance))

    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None  # a busy second core
    try:
        with NodeProcess("match_ros.nodes.visual_odometry", vo_params, remaps) as vo:
            records, map_odom, vo_log, log = _vo_and_relocalizer(vo, d, bag, domain, topics, tf, on_odom, rate)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    return records, map_odom, vo_log, log, tf, odom_cov


def _vo_and_relocalizer(vo, d, bag, domain, topics, tf, on_odom, rate):
    from nav_msgs.msg import Odometry

    deadline = time.monotonic() + 90
    while "image_qos=" not in vo.log() and vo.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vo.alive() and "image_qos=" in vo.log(), vo.log()[-2000:]
    # remapped as odometry_relocalize.launch.py does: the relocalizer reads visual_odometry's breaks on ~/odom
    records, map_odom, log = replay_relocalization(d / "room.db", bag, {"matcher": "orb_teblid", "torch_threads": 1},
                                                   rate=rate, domain_id=domain, topics=topics, tf_sink=tf,
                                                   subscribe={"/visual_odometry/odom": (Odometry, on_odom)},
                                                   remaps={"odometry": "/visual_odometry/odom"})
    return records, map_odom, vo.log(), log


def _check_vo_and_relocalizer(seq, records, map_odom, vo_log, tf, odom_cov, min_odom, min_tracked):
    odom = {stamp: T for stamp, parent, child, T in tf if parent == "odom" and child == "camera_optical_frame"}
    # frames visual_odometry answered on /odom (on /tf only those it tracked: at 1x beside a busy core 2 of them in
    # one run of ten)
    assert len(odom_cov) >= min_odom, vo_log[-2000:]
    assert "no TF from base_frame" not in vo_log  # base_frame '' is the camera itself
    assert set(odom) <= set(odom_cov) and all(np.allclose(odom_cov[s][0], odom[s]) for s in odom)  # TF = Odometry
    # ... except while lost: the held pose goes out on /odom with its covariance grown by 1 m^2, never on /tf
    assert all(odom_cov[s][1][0] >= 1.0 for s in set(odom_cov) - set(odom))
    # odometry alone, first frame aligned: in the right frame and scale (offline, every frame: 1.0 % end, 2.8 % max
    # of 0.68 m with orb_teblid, test_odometry; here, beside a busy core with frames dropped, up to 17 % measured
    # at 0.2x). Where the gaps are too large to match across, the node holds the pose and says so (lost, position
    # variance >= lost_variance 1 m^2).
    stamps = sorted(odom)
    tracked = [s for s in stamps if odom_cov[s][1][0] < 0.5]
    assert len(tracked) >= min_tracked * len(stamps), vo_log[-3000:]
    if min_tracked:  # its accuracy where it can track (at 1x on a loaded machine it matches frames 0.3-0.5 s apart:
        _check_odometry_alone(seq, odom, stamps, tracked, odom_cov, vo_log)  # 8 cm off over 14 cm in 1 run of 10)
    _check_map_odom_camera(seq, records, map_odom, odom, min_tracked)
    # the relocalizer read visual_odometry's covariance on ~/odom for every frame it predicted from the odometry
    predicted = [r.stats for r in records if r.stats.get("prior_drift")]
    assert all(s["prior_drift"] == "model, odometry report" for s in predicted), predicted
    if min_tracked:
        assert predicted, [r.stats for r in records]


def _check_odometry_alone(seq, odom, stamps, tracked, odom_cov, vo_log):
    gt = dict(seq.poses)
    A = gt[stamps[0]] @ invert(odom[stamps[0]])
    dist = sum(np.linalg.norm(gt[b][:3, 3] - gt[a][:3, 3]) for a, b in zip(seq.stamps_ns, seq.stamps_ns[1:])
               if stamps[0] <= a and b <= stamps[-1])
    err = [np.linalg.norm((A @ odom[s])[:3, 3] - gt[s][:3, 3]) for s in tracked]
    assert max(err, default=0.0) < 0.25 * dist + 0.01, (
        f"errors {np.round(err, 3).tolist()} m, position variances {[odom_cov[s][1][0] for s in tracked]}, "
        f"path {dist:.3f} m, stamps {[(s - stamps[0]) * 1e-9 for s in tracked]}\n{vo_log[-3000:]}")


def _check_map_odom_camera(seq, records, map_odom, odom, min_tracked):
    gt = dict(seq.poses)
    # map -> odom -> camera is the true camera pose: every fix the relocalizer published, and every map -> odom
    s = score(records)
    assert s["poses"] >= 1 and s["wrong_poses"] == 0 and s["integrity_failures"] == 0, (s, [r.reason for r in records])
    assert all(r.errors[0] < 0.25 and r.errors[1] < 5.0 for r in records if r.T_est is not None), \
        [(r.errors, r.reason) for r in records]
    # the map -> odom sent at each fix, at its image stamp (re-broadcasts between fixes are stamped before any frame
    # still in the relocalizer: before, one at the stamp of the next fix carried the old map -> odom after
    # visual_odometry had restarted, 0.38 m / 39 deg off, and tf2 keeps the first transform at a stamp)
    posed = {r.stamp_ns for r in records if r.T_est is not None}
    fixes = [(stamp, T) for stamp, T in map_odom if stamp in posed and stamp in odom]
    composed = [((T @ odom[stamp])[:3, 3], gt[stamp]) for stamp, T in fixes]
    t_err = [float(np.linalg.norm(p - G[:3, 3])) for p, G in composed]
    r_err = [rotation_error_deg((T @ odom[stamp])[:3, :3], gt[stamp][:3, :3]) for stamp, T in fixes]
    assert composed or not min_tracked, "no fix at a stamp visual_odometry answered"
    assert not composed or (np.median(t_err) < 0.05 and max(t_err) < 0.25 and max(r_err) < 5.0), (t_err, r_err)
