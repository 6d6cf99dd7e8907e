"""Rendered camera sequences with exact ground truth (pure: numpy + OpenCV, no ROS).

``scene`` holds the camera model, the textured-plane renderer and lazily rendered sequences;
``factories`` builds the ready-made scenes, trajectories and sequences from real photos.
"""
from .factories import (DEFAULT_START_NS, DEFAULT_TRAJECTORY, SCENES, TRAJECTORIES, default_textures_dir,
                        load_photos, make_scene, make_sequence, make_trajectory)
from .scene import (Camera, Frame, Plane, Scene, Sequence, invert_pose, look_at, matrix_from_quaternion,
                    pose_from_ypr, quaternion_from_matrix)

__all__ = [
    "Camera", "Frame", "Plane", "Scene", "Sequence", "invert_pose", "look_at", "matrix_from_quaternion",
    "pose_from_ypr", "quaternion_from_matrix", "DEFAULT_START_NS", "DEFAULT_TRAJECTORY", "SCENES",
    "TRAJECTORIES", "default_textures_dir", "load_photos", "make_scene", "make_sequence", "make_trajectory",
]
