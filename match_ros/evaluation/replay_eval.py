"""Replay a rendered sequence through the keyframe_matcher node and score it.

The node runs in its own process (a real ROS 2 graph over Fast DDS on
loopback); this process plays the bag with /clock and records the
CorrespondenceSet messages, then scores each one against the exact ground
truth of the rendered sequence (poses and depth).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from match_ros.core.geometry.absolute_pose import pose_sigmas
from match_ros.evaluation import metrics
from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, spin_until

CORRECT_PX = 3.0  # a correspondence is correct within this transfer error [px]


@dataclass
class PairScore:
    """Score of one received CorrespondenceSet against ground truth."""

    query_index: int
    ref_index: int
    matches: int
    inliers: int
    correct_ratio: float          # matches within CORRECT_PX of the GT transfer
    inlier_correct_ratio: float   # inlier matches within CORRECT_PX
    pose_valid: bool
    translation_valid: bool = False   # a full pose (else rotation only, when pose_valid)
    pose_reason: str = ""
    rot_err_deg: float = float("nan")
    trans_err_deg: float = float("nan")
    gt_baseline_m: float = 0.0
    trans_sigma_deg: float = float("nan")  # the published direction's own sigma (worst axis of its covariance)


@dataclass
class ReplayResult:
    scores: list = field(default_factory=list)
    frames_played: int = 0
    messages: list = field(default_factory=list)
    tf_count: int = 0
    wall_s: float = 0.0
    node_log: str = ""

    def summary(self) -> dict:
        s = self.scores
        pairs = [x for x in s if x.matches > 0]
        valid = [x for x in pairs if x.pose_valid]
        full = [x for x in valid if x.translation_valid]
        med = (lambda v: float(np.median(v)) if len(v) else float("nan"))
        return {
            "frames_played": self.frames_played,
            "sets_received": len(s),
            "frames_dropped": self.frames_played - len(s),
            "keyframes": len({x.ref_index for x in s}),
            "mean_matches": float(np.mean([x.matches for x in pairs])) if pairs else 0.0,
            "mean_inlier_ratio": float(np.mean([x.inliers / x.matches for x in pairs])) if pairs else 0.0,
            "correct_ratio": float(np.mean([x.correct_ratio for x in pairs])) if pairs else 0.0,
            "inlier_correct_ratio": med([x.inlier_correct_ratio for x in valid]),
            "full_poses": len(full),
            "rotation_only_poses": len(valid) - len(full),
            "no_pose": len(pairs) - len(valid),
            "median_rot_err_deg": med([x.rot_err_deg for x in valid]),
            "median_trans_err_deg": med([x.trans_err_deg for x in full]),
            # the published poses that are wrong: rotation off by more than 2 deg, or a translation direction
            # off by more than 15 deg (the target of issue 11 is zero)
            "poses_beyond_2deg_15deg": sum(x.rot_err_deg > 2.0 or (x.translation_valid and x.trans_err_deg > 15.0)
                                           for x in valid),
            "output_rate_hz": len(s) / self.wall_s if self.wall_s > 0 else 0.0,
        }


def score_set(msg, sequence, index_of_stamp: dict) -> PairScore:
    """Score one CorrespondenceSet against the sequence's exact poses and depth."""
    from match_ros.ros.conversions import correspondence_arrays, pose_to_matrix, stamp_to_ns

    qi = index_of_stamp[stamp_to_ns(msg.header.stamp)]
    ri = index_of_stamp[stamp_to_ns(msg.reference_stamp)]
    K = sequence.camera.K
    T_gt = metrics.relative_pose_gt(sequence.poses[ri][1], sequence.poses[qi][1])
    a = correspondence_arrays(msg)
    n = len(a["inliers"])
    score = PairScore(qi, ri, n, int(a["inliers"].sum()), 0.0, 0.0, bool(msg.pose_valid),
                      translation_valid=bool(msg.pose_valid and msg.translation_valid), pose_reason=msg.pose_reason,
                      gt_baseline_m=float(np.linalg.norm(T_gt[:3, 3])))
    if n:
        err = metrics.transfer_errors(a["pts_ref"], a["pts_query"], sequence[ri].depth, K, K, T_gt)
        ok = np.nan_to_num(err, nan=np.inf) < CORRECT_PX
        score.correct_ratio = float(ok.mean())
        score.inlier_correct_ratio = float(ok[a["inliers"]].mean()) if a["inliers"].any() else 0.0
    if msg.pose_valid:
        e = metrics.pose_errors(pose_to_matrix(msg.relative_pose), T_gt, bool(msg.scale_known))
        score.rot_err_deg = e["rot_deg"]
        if msg.translation_valid:
            score.trans_err_deg = e.get("trans_deg", float("nan"))
            if not msg.scale_known:  # the translation block is that of the unit direction [rad^2]
                cov = np.asarray(msg.relative_pose_covariance, np.float64).reshape(6, 6)
                score.trans_sigma_deg = float(np.degrees(pose_sigmas(cov)[0]))
    return score


def replay_through_node(bag_path: str | Path, sequence, params: dict, *, rate: float = 1.0,
                        domain_id: int | None = None, startup_timeout: float = 90.0,
                        log_path: str | Path | None = None) -> ReplayResult:
    """Start keyframe_matcher with ``params``, play the bag, collect and score its output."""
    confine_to_loopback(domain_id)
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from match_ros.msg import CorrespondenceSet

    from match_ros.ros.conversions import stamp_to_ns
    from match_ros.tools.bag_play import BagPlayer

    index_of_stamp = {s: i for i, s in enumerate(sequence.stamps_ns)}
    params = {"image_qos": "reliable", "use_sim_time": True, **params}
    remaps = {"image": "/camera/image_raw", "camera_info": "/camera/camera_info", "depth": "/camera/depth"}
    result = ReplayResult()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("match_ros_replay_eval", context=ctx)
    try:
        from rclpy.executors import SingleThreadedExecutor

        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        received = result.messages
        node.create_subscription(CorrespondenceSet, "/keyframe_matcher/correspondences", received.append,
                                 QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE))
        tf_msgs = []
        try:
            from tf2_msgs.msg import TFMessage

            node.create_subscription(TFMessage, "/tf", tf_msgs.append, QoSProfile(depth=500))
        except ImportError:
            pass
        player = BagPlayer(node, bag_path, rate=rate, clock=True,
                           topics=["/camera/image_raw", "/camera/camera_info"]
                           + (["/camera/depth"] if params.get("use_depth") else []))
        with NodeProcess("match_ros.nodes.keyframe_matcher", params,
                         {**remaps, "correspondences": "/keyframe_matcher/correspondences"},
                         log_path=log_path) as proc:
            image_pub = player.publishers["/camera/image_raw"]
            ready = spin_until(node, lambda: not proc.alive() or (image_pub.get_subscription_count() > 0
                               and node.count_publishers("/keyframe_matcher/correspondences") > 0),
                               startup_timeout, executor=ex)
            if not ready or not proc.alive():
                raise RuntimeError(f"keyframe_matcher did not come up in {startup_timeout} s:\n{proc.log()[-3000:]}")
            spin_until(node, lambda: False, 1.0, executor=ex)  # let the remaining discovery settle
            t0 = time.monotonic()
            thread = player.start()
            while thread.is_alive():
                ex.spin_once(timeout_sec=0.05)
            result.frames_played = player.stats.counts["/camera/image_raw"]
            # wait for the last frame's result (the node finishes its current frame)
            last = sequence.stamps_ns[-1]
            spin_until(node, lambda: bool(received) and stamp_to_ns(received[-1].header.stamp) == last, 15.0,
                       executor=ex)
            result.wall_s = time.monotonic() - t0
            spin_until(node, lambda: False, 0.3, executor=ex)
            result.node_log = proc.log()
        player.close()
        result.tf_count = sum(len(m.transforms) for m in tf_msgs)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    result.scores = [score_set(m, sequence, index_of_stamp) for m in result.messages]
    return result
