"""End to end: rosbag2 -> BagPlayer (with /clock) -> keyframe_matcher process -> CorrespondenceSet,
scored against the exact ground truth of the rendered sequence. A real ROS 2 graph over Fast DDS
on loopback (each on a free domain id)."""

import numpy as np
import pytest

from match_ros.sim import make_sequence
from match_ros.tools.bag_write import write_sequence_bag
from match_ros.evaluation.graph import free_domain_id
from match_ros.evaluation.replay_eval import replay_through_node

pytestmark = pytest.mark.slow  # starts processes or builds a workspace (slow tier)

N_FRAMES = 45


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    seq = make_sequence("room", n_frames=N_FRAMES, seed=0)
    bags = {}
    for storage in ("sqlite3", "mcap"):
        bags[storage] = tmp_path_factory.mktemp("bag") / f"room_{storage}"
        write_sequence_bag(bags[storage], seq, storage=storage)
    return seq, bags


# measured on this 2-core machine (orb_teblid / xfeat_lighterglue): matches within 3 px of the
# ground-truth transfer 0.90 / 0.95-0.96; inliers correct 0.99 / 0.98. Which frames the busy node drops sets the
# baselines: a pair with too little parallax for a translation is published rotation-only (no TF), the others
# as full poses; no published rotation is beyond 2 deg and no full pose's direction beyond 15 deg.
# ORB's keypoints (pyramid levels) are noisier: more short-baseline pairs are refused as ambiguous (measured 21 of 27
# pairs posed) where XFeat's are posed (14 of 14)
@pytest.mark.parametrize("matcher, storage, min_correct, max_rot_deg, min_posed", [
    ("orb_teblid", "sqlite3", 0.80, 1.0, 0.6),
    ("xfeat_lighterglue", "mcap", 0.85, 1.0, 0.85),
])
def test_replayed_bag_gives_geometrically_correct_correspondences(room, matcher, storage,
                                                                  min_correct, max_rot_deg, min_posed):
    seq, bags = room
    res = replay_through_node(bags[storage], seq, {"matcher": matcher}, rate=0.5, domain_id=free_domain_id())
    assert res.frames_played == N_FRAMES
    scores = res.scores
    # frames may be dropped when the matcher is busy, but the stream is covered to its end
    assert len(scores) >= 8, res.node_log[-2000:]
    assert scores[0].query_index == 0 and scores[0].matches == 0      # first frame: keyframe 0
    assert scores[-1].query_index == N_FRAMES - 1
    stamps = set(seq.stamps_ns)
    for m in res.messages:  # outputs carry the input image's stamp and frame
        assert m.header.frame_id == "camera_optical_frame" and m.matcher == matcher
        assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec in stamps
        assert m.reference_frame_id == "camera_optical_frame"
    pairs = [s for s in scores if s.matches > 0]
    assert all(s.ref_index < s.query_index for s in pairs)
    assert np.mean([s.matches for s in pairs]) > 150
    assert np.mean([s.correct_ratio for s in pairs]) > min_correct
    valid = [s for s in pairs if s.pose_valid]
    assert len(valid) >= min_posed * len(pairs), [s.pose_reason for s in pairs if not s.pose_valid]
    assert np.median([s.inlier_correct_ratio for s in valid]) > 0.95
    assert np.median([s.rot_err_deg for s in valid]) < max_rot_deg
    full = [s for s in valid if s.translation_valid]
    # a direction beyond 15 deg counts as wrong unless the pose's own covariance allows it (3 sigma): the shortest
    # pairs (2 frames, 3.5 cm) publish sigma 5-6 deg and are off by up to 11 deg offline; 15.3 deg was seen once
    # with one thread (OMP_NUM_THREADS=1)
    bad = [(s.query_index, s.ref_index, s.rot_err_deg, s.trans_err_deg, s.trans_sigma_deg, s.gt_baseline_m)
           for s in valid if s.rot_err_deg >= 2.0
           or (s.translation_valid and s.trans_err_deg >= max(15.0, 3.0 * np.nan_to_num(s.trans_sigma_deg)))]
    if matcher == "xfeat_lighterglue":  # the demo's matcher: issue #11's target, none beyond 2 deg / 15 deg
        assert not bad, bad
        # and the allowance stays small: offline, every pair of this room 1-8 frames apart has sigma <= 6.9 deg
        assert all(s.trans_sigma_deg < 8.0 for s in full), [(s.query_index, s.trans_sigma_deg) for s in full]
    else:  # ORB (noisier keypoints, 0.7-2.1 px by pyramid level): wrong motions still pass the gates now and then
        assert len(bad) <= 0.2 * len(valid), bad  # measured 0-2 of 21-27 here, 12 % of 460 rendered pairs (README)
    assert all(s.pose_reason for s in valid if not s.translation_valid)  # rotation-only says why
    # keyframes are reused across frames (work on the keyframe is done once)
    assert len({s.ref_index for s in scores}) < len(scores)
    assert res.tf_count == len(full)  # one keyframe -> camera transform per full pose


def test_coam_publishes_distinctiveness_per_match(room):
    """Our CoAM-style matcher selected by parameter: correct correspondences, and each Correspondence carries
    its distinctiveness, which is higher on the correct matches than on the wrong ones."""
    from match_ros.evaluation import metrics
    from match_ros.ros.conversions import correspondence_arrays, stamp_to_ns

    seq, bags = room
    res = replay_through_node(bags["sqlite3"], seq, {"matcher": "coam_xfeat"}, rate=0.5, domain_id=free_domain_id())
    pairs = [s for s in res.scores if s.matches > 0]
    assert len(pairs) >= 8, res.node_log[-2000:]
    assert np.mean([s.correct_ratio for s in pairs]) > 0.72  # measured 0.81 (xfeat_lighterglue: 0.95)
    idx = {s: i for i, s in enumerate(seq.stamps_ns)}
    dist, ok = [], []
    for m in res.messages:
        if not len(m.score):
            continue
        assert m.matcher == "coam_xfeat"
        a = correspondence_arrays(m)
        qi, ri = idx[stamp_to_ns(m.header.stamp)], idx[stamp_to_ns(m.reference_stamp)]
        T_gt = metrics.relative_pose_gt(seq.poses[ri][1], seq.poses[qi][1])
        err = metrics.transfer_errors(a["pts_ref"], a["pts_query"], seq[ri].depth, seq.camera.K, seq.camera.K, T_gt)
        dist.append(a["distinctiveness"])
        ok.append(np.nan_to_num(err, nan=np.inf) < 3.0)
    dist, ok = np.concatenate(dist), np.concatenate(ok)
    assert np.isfinite(dist).all() and ((dist >= 0) & (dist <= 1)).all()
    assert (~ok).sum() >= 10 and dist[ok].mean() > dist[~ok].mean()


def test_metric_pose_with_depth(room, tmp_path):
    seq, _ = room
    bag = tmp_path / "room_depth"
    write_sequence_bag(bag, seq, storage="sqlite3", with_depth=True)
    res = replay_through_node(bag, seq, {"matcher": "orb_teblid", "use_depth": True}, rate=0.5,
                              domain_id=free_domain_id())
    valid = [m for m in res.messages if m.pose_valid]
    from match_ros.evaluation.metrics import pose_errors, relative_pose_gt
    from match_ros.ros.conversions import pose_to_matrix, stamp_to_ns

    # failed once in ~11 runs on 2026-12-06 (13 poses, some without scale), not reproduced in 9 more: say which
    unscaled = [(stamp_to_ns(m.header.stamp), stamp_to_ns(m.reference_stamp), m.num_inliers, m.is_keyframe)
                for m in valid if not m.scale_known]
    assert len(valid) >= 8 and not unscaled, (len(valid), unscaled, res.node_log[-3000:])

    idx = {s: i for i, s in enumerate(seq.stamps_ns)}
    errs = []
    for m in valid:
        T_gt = relative_pose_gt(seq.poses[idx[stamp_to_ns(m.reference_stamp)]][1],
                                seq.poses[idx[stamp_to_ns(m.header.stamp)]][1])
        errs.append(pose_errors(pose_to_matrix(m.relative_pose), T_gt, True)["trans_m"])
    assert np.median(errs) < 0.01  # metres


def test_bad_input_is_logged_and_the_node_keeps_running(graph):
    from match_ros.evaluation.graph import NodeProcess, spin_until

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from match_ros.msg import CorrespondenceSet
    from match_ros.ros import conversions as conv

    seq = make_sequence("room", n_frames=4, seed=0)
    node = graph()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, "/cam/image", qos)
    info_pub = node.create_publisher(CameraInfo, "/cam/camera_info", qos)
    got, diags = [], []
    node.create_subscription(CorrespondenceSet, "/keyframe_matcher/correspondences", got.append, 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    params = {"matcher": "orb_teblid", "image_qos": "reliable"}
    remaps = {"image": "/cam/image", "camera_info": "/cam/camera_info"}
    with NodeProcess("match_ros.nodes.keyframe_matcher", params, remaps) as proc:
        assert spin_until(node, lambda: pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 60), proc.log()

        def send(msg, pause=0.4):
            pub.publish(msg)
            spin_until(node, lambda: False, pause)

        good = [conv.numpy_to_image(f.rgb, "rgb8") for f in seq]
        for i, m in enumerate(good):
            m.header.stamp = conv.ns_to_stamp(seq.stamps_ns[i])
            m.header.frame_id = "cam"
        # frame 0 arrives before any camera_info: matched later without a pose, no crash
        send(good[0])
        bad_encoding = conv.numpy_to_image(seq[1].rgb, "rgb8")
        bad_encoding.encoding = "yuv422"
        send(bad_encoding)
        send(Image(encoding="rgb8"))                      # zero size
        wrong_step = conv.numpy_to_image(seq[1].rgb, "rgb8")
        wrong_step.step = 100
        send(wrong_step)
        send(conv.numpy_to_image(np.zeros((8, 8), np.uint8), "mono8"))  # too small to match
        info_pub.publish(CameraInfo())                    # uncalibrated camera_info
        spin_until(node, lambda: False, 0.3)
        assert proc.alive(), proc.log()
        info = CameraInfo(k=seq.camera.K.ravel().tolist(), width=640, height=480)
        info_pub.publish(info)
        spin_until(node, lambda: False, 0.3)
        for m in good[1:]:
            send(m, 0.6)
        assert spin_until(node, lambda: len(got) >= 4, 20), proc.log()
        spin_until(node, lambda: any(_value(d, "errors", 0) >= 5 for d in diags), 3.0)
        assert proc.alive()
    # every bad input is counted by kind in /diagnostics: 3 undecodable images, 1 too small, 1 uncalibrated
    # camera_info
    last = diags[-1]
    assert int(_value(last, "errors_image", 0)) >= 4 and int(_value(last, "errors_camera_info", 0)) >= 1
    assert int(_value(last, "errors", 0)) >= 5
    # the good frames after the bad ones are matched with correct geometry
    last = got[-1]
    assert last.pose_valid and last.num_inliers > 50


def test_stamps_that_jump_back_reset_the_keyframe(graph):
    """A camera stream whose stamps jump back 100 s (a bag played again, /clock reset): the node warns, the first
    frame after the jump starts a new keyframe and the frames after it are matched against it with correct poses
    (before: 0 new keyframes after the jump, 7 of 8 poses invalid, diagnostics OK)."""
    from match_ros.evaluation.graph import NodeProcess, spin_until

    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from match_ros.core.geometry.transforms import invert, rotation_error_deg
    from match_ros.msg import CorrespondenceSet
    from match_ros.ros import conversions as conv

    seq = make_sequence("room", n_frames=12, seed=0)
    jump_ns = 100 * 10**9
    stamps = [s if i < 6 else s - jump_ns for i, s in enumerate(seq.stamps_ns)]
    index = {s: i for i, s in enumerate(stamps)}
    node = graph()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, "/cam/image", qos)
    info_pub = node.create_publisher(CameraInfo, "/cam/camera_info", qos)
    got, diags, drawn = [], [], []
    node.create_subscription(CorrespondenceSet, "/keyframe_matcher/correspondences", got.append, 20)
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    node.create_subscription(Image, "/keyframe_matcher/debug_image", drawn.append, 20)
    params = {"matcher": "orb_teblid", "image_qos": "reliable"}
    with NodeProcess("match_ros.nodes.keyframe_matcher", params,
                     {"image": "/cam/image", "camera_info": "/cam/camera_info"}) as proc:
        assert spin_until(node, lambda: pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 60), proc.log()
        info = CameraInfo(k=seq.camera.K.ravel().tolist(), width=640, height=480)
        for i, f in enumerate(seq):
            info.header.stamp = conv.ns_to_stamp(stamps[i])
            info_pub.publish(info)
            m = conv.numpy_to_image(f.rgb, "rgb8")
            m.header.stamp, m.header.frame_id = conv.ns_to_stamp(stamps[i]), "cam"
            pub.publish(m)
            n = len(got)
            spin_until(node, lambda: len(got) > n, 10.0)  # one frame at a time: none dropped
        spin_until(node, lambda: any(_value(d, "time_resets", 0) >= 1 for d in diags), 3.0)
        # the last frame's debug image (1.8 MB) may still be on its way
        spin_until(node, lambda: any(conv.stamp_to_ns(m.header.stamp) == stamps[-1] for m in drawn), 5.0)
        log = proc.log()
    assert "image stamp jumped back 99.967 s" in log, log[-2000:]  # 100 s less one frame interval
    assert int(_value(diags[-1], "time_resets", 0)) == 1
    by_query = {index[conv.stamp_to_ns(m.header.stamp)]: m for m in got}
    assert set(by_query) == set(range(12)), sorted(by_query)
    assert by_query[6].is_keyframe and len(by_query[6].index_ref) == 0  # starts anew, matched to nothing
    posed = {}
    for q in list(range(1, 6)) + list(range(7, 12)):  # matched against a keyframe of its own side of the jump
        m = by_query[q]
        ref = index[conv.stamp_to_ns(m.reference_stamp)]
        assert (0 <= ref < q) if q < 6 else (6 <= ref < q), (q, ref)
        if m.pose_valid:  # (a pair without the parallax to tell is refused, with its reason)
            T_true = invert(seq[ref].T_world_cam) @ seq[q].T_world_cam
            R = conv.pose_to_matrix(m.relative_pose)[:3, :3]
            assert rotation_error_deg(R, T_true[:3, :3]) < 2.0  # (beyond 2 deg counts as wrong: docs/two_view)
            posed[q] = m.translation_valid
    print("posed (full pose?):", posed)
    # ~/debug_image (drawn while subscribed): keyframe | frame side by side, stamped with the frame, inlier
    # lines in green for a posed frame
    dbg = {conv.stamp_to_ns(m.header.stamp): m for m in drawn}
    q = max(posed)
    m = dbg[stamps[q]]
    img = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
    assert (m.width, m.height) == (1280, 480)
    assert np.sum(np.all(img == (40, 220, 40), axis=2)) > 5 * by_query[q].num_inliers
    # after the jump as many poses as before it (measured: 3 of 5 on each side, the rest refused for parallax)
    assert sum(q > 6 for q in posed) >= sum(q < 6 for q in posed) - 1, posed


def _value(diag_array, key: str, default=None):
    for status in diag_array.status:
        for kv in status.values:
            if kv.key == key:
                return int(kv.value) if kv.value.lstrip("-").isdigit() else kv.value
    return default


def test_compressed_images_from_a_camera_driver(room, graph):
    """image_transport: compressed: sensor_msgs/CompressedImage (JPEG, as image_transport's compressed plugin
    publishes) on image/compressed gives geometrically correct correspondences."""
    import cv2
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from match_ros.evaluation import metrics
    from match_ros.evaluation.graph import NodeProcess, spin_until
    from match_ros.msg import CorrespondenceSet
    from match_ros.ros import conversions as conv

    seq, _ = room
    node = graph()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(CompressedImage, "/cam/image/compressed", qos)
    info_pub = node.create_publisher(CameraInfo, "/cam/camera_info", qos)
    got = []
    node.create_subscription(CorrespondenceSet, "/keyframe_matcher/correspondences", got.append, 50)
    params = {"matcher": "orb_teblid", "image_qos": "reliable", "image_transport": "compressed"}
    remaps = {"image/compressed": "/cam/image/compressed", "camera_info": "/cam/camera_info"}
    with NodeProcess("match_ros.nodes.keyframe_matcher", params, remaps) as proc:
        assert spin_until(node, lambda: pub.get_subscription_count() > 0
                          and info_pub.get_subscription_count() > 0, 60), proc.log()
        info = CameraInfo(k=seq.camera.K.ravel().tolist(), width=640, height=480)
        for i in range(0, 12, 2):
            info_pub.publish(info)
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(seq[i].rgb, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])
            msg = CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpg.tobytes())
            msg.header.stamp, msg.header.frame_id = conv.ns_to_stamp(seq.stamps_ns[i]), "cam"
            pub.publish(msg)
            spin_until(node, lambda n=len(got): len(got) > n, 5.0)
        assert spin_until(node, lambda: len(got) >= 5, 20), proc.log()
    idx = {s: i for i, s in enumerate(seq.stamps_ns)}
    pairs = [m for m in got if len(m.score)]
    assert len(pairs) >= 4
    errors = []
    for m in pairs:
        a = conv.correspondence_arrays(m)
        qi, ri = idx[conv.stamp_to_ns(m.header.stamp)], idx[conv.stamp_to_ns(m.reference_stamp)]
        T_gt = metrics.relative_pose_gt(seq.poses[ri][1], seq.poses[qi][1])
        errors.extend(metrics.transfer_errors(a["pts_ref"], a["pts_query"], seq[ri].depth, seq.camera.K,
                                              seq.camera.K, T_gt))
    errors = np.array(errors)
    # JPEG at quality 95 keeps the geometry: measured 0.90 within 3 px, as raw images
    assert np.mean(errors[np.isfinite(errors)] < 3.0) > 0.75
