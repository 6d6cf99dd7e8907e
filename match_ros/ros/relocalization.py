"""Publishing a relocalization result (pose, TF, correspondences, status) for the relocalizer node."""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from std_msgs.msg import Header

from match_ros.core.geometry.absolute_pose import covariance_of_attached_frame
from match_ros.core.tracking.frontend import Keyframe, TrackResult
from match_ros.core.geometry.two_view import RelativePose
from match_ros.core.geometry.transforms import invert
from match_ros.ros import conversions as conv


def pose_with_covariance(header: Header, T_map_frame: np.ndarray, cov: np.ndarray) -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped(header=header)
    msg.pose.pose = conv.matrix_to_pose(T_map_frame)
    msg.pose.covariance = np.asarray(cov, np.float64).ravel().tolist()
    return msg


def best_keyframe_set(node, header: Header, result, query_id: int):
    """CorrespondenceSet of the matched keyframe with the most PnP inliers (None if nothing matched)."""
    if not result.matched:
        return None
    km = max(result.matched, key=lambda m: int(m.inliers.sum()))
    kf = node.map[km.keyframe_id]
    feats = node.localizer.keyframe_features(kf)
    T_kf_cam = invert(kf.T_world_cam) @ result.T_map_cam
    pose = RelativePose(bool(result.success), T_kf_cam, km.inliers, int(km.inliers.sum()), scale_known=True)
    keyframe = Keyframe(km.keyframe_id, int(kf.stamp_ns), kf.frame_id, feats, None, None)
    track = TrackResult(query_id, keyframe, result.num_query_keypoints, km.matches, km.pts_ref, km.pts_query,
                        pose, False, "relocalization")
    return conv.correspondence_set(track, header, node.matcher.name)


def publish_result(node, header: Header, result, T_base_cam, holder: dict) -> None:
    """Publish an accepted result (pose, TF, correspondences) or only a status saying why not."""
    values = {"retrieved": " ".join(f"{i}:{s:.2f}" for i, s in result.retrieved),
              "inliers": result.num_inliers, "rmse_px": result.rmse_px,
              **{f"{k}_ms": v for k, v in result.timings_ms.items()}}
    corr = best_keyframe_set(node, header, result, node.counts["queries"])
    if corr is not None:
        node.pub_corr.publish(corr)
    if not result.success:
        node.counts["rejected"] += 1
        holder["message"] = f"no pose: {result.reason}"
        node.report_status(header, DiagnosticStatus.WARN, holder["message"], values)
        return
    if T_base_cam is None:
        holder["message"] = f"pose found but no transform {node.base_frame} -> {header.frame_id}"
        node.report_status(header, DiagnosticStatus.ERROR, holder["message"], values)
        return
    T_map_base = result.T_map_cam @ invert(T_base_cam)
    cov = covariance_of_attached_frame(result.covariance, result.T_map_cam, T_map_base)
    out = Header(stamp=header.stamp, frame_id=node.map_frame)
    pose_msg = pose_with_covariance(out, T_map_base, cov)
    node.pub_pose.publish(pose_msg)
    node.counts["accepted"] += 1
    holder.update(success=True, pose=pose_msg, num_inliers=result.num_inliers,
                  message=f"localized with {result.num_inliers} inliers")
    level, text = DiagnosticStatus.OK, holder["message"]
    if node.publish_tf:
        if node.odom_frame:
            T_odom_cam = node.lookup_tf(node.odom_frame, header.frame_id, conv.stamp_to_ns(header.stamp))
            if T_odom_cam is None:
                level, text = DiagnosticStatus.WARN, f"{text}; no {node.odom_frame} transform: map->odom not sent"
            else:
                T_map_odom = result.T_map_cam @ invert(T_odom_cam)
                node.tf.send([conv.matrix_to_transform(T_map_odom, out, node.odom_frame)])
        else:
            node.tf.send([conv.matrix_to_transform(T_map_base, out, node.base_frame or header.frame_id)])
    node.report_status(header, level, text, values)
