"""Rendered camera sequences with exact ground truth (pure: numpy + OpenCV, no ROS).

``scene`` holds the camera model, the textured-plane renderer and lazily rendered sequences;
``factories`` builds the ready-made scenes, trajectories and sequences from real photos.
"""
from match_ros.sim.factories import (CHANGED_DAY_SCENES, DEFAULT_START_NS, DEFAULT_TRAJECTORY, SCENES, TRAJECTORIES,
                                     UNSEEN_PHOTOS, closest_view_pairs, default_textures_dir, load_photos,
                                     make_changed_day_sequence, make_scene, make_sequence, make_trajectory,
                                     offset_path)
from match_ros.sim.scene import (Camera, Frame, Lighting, Plane, Scene, Sequence, invert_pose, look_at,
                                 matrix_from_quaternion, motion_blur, pose_from_ypr, quaternion_from_matrix)

__all__ = [
    "Camera", "Frame", "Lighting", "Plane", "Scene", "Sequence", "invert_pose", "look_at", "matrix_from_quaternion",
    "motion_blur", "pose_from_ypr", "quaternion_from_matrix", "CHANGED_DAY_SCENES", "DEFAULT_START_NS",
    "DEFAULT_TRAJECTORY", "SCENES", "TRAJECTORIES", "UNSEEN_PHOTOS", "closest_view_pairs", "default_textures_dir",
    "load_photos",
    "make_changed_day_sequence", "make_scene", "make_sequence", "make_trajectory", "offset_path",
]
