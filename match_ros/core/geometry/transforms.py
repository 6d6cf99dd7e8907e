"""Rigid transforms and rotations: inverse, composition helpers, quaternions, angular errors.

``T_a_b`` is a 4x4 float64 transform mapping points in frame b into frame a (the pose of b in a);
quaternions are (x, y, z, w) as in geometry_msgs.
"""
from __future__ import annotations

import numpy as np


def skew(v) -> np.ndarray:
    """[3 x 3] matrix of the cross product with v (skew(v) @ w == v x w); [N x 3 x 3] for [N x 3] rows."""
    v = np.asarray(v, np.float64)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    out[..., 1, 0], out[..., 2, 0], out[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    return out


def rotation_from_vector(w) -> np.ndarray:
    """[3 x 3] rotation of the rotation vector w [rad] (axis * angle)."""
    import cv2

    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def perturb_pose(T: np.ndarray, delta) -> np.ndarray:
    """T moved by delta = (dx, dy, dz, rot_x, rot_y, rot_z): translation added in the parent frame, the small
    rotation applied about the parent's axes at the frame's origin (geometry_msgs/PoseWithCovariance's
    parameters, in which the package's pose covariances are expressed)."""
    out = np.array(T, np.float64, copy=True)
    out[:3, :3] = rotation_from_vector(delta[3:]) @ out[:3, :3]
    out[:3, 3] = out[:3, 3] + np.asarray(delta[:3], np.float64)
    return out


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, np.asarray(t, np.float64).ravel()
    return T


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """[3 x 3] rotation -> unit quaternion (x, y, z, w), w >= 0."""
    R = np.asarray(R, np.float64)
    q = np.empty(4)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q[:] = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def matrix_from_quaternion(q) -> np.ndarray:
    """Quaternion (x, y, z, w) -> [3 x 3] rotation. Raises ValueError on a zero quaternion."""
    x, y, z, w = np.asarray(q, np.float64)
    n = x * x + y * y + z * z + w * w
    if n < 1e-12:
        raise ValueError("zero quaternion")
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of R_a^T R_b in degrees."""
    cos = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_angle_deg(t_a: np.ndarray, t_b: np.ndarray) -> float:
    """Angle between two translation directions in degrees (scale-free error)."""
    na, nb = np.linalg.norm(t_a), np.linalg.norm(t_b)
    if na < 1e-12 or nb < 1e-12:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(np.dot(t_a, t_b) / (na * nb), -1.0, 1.0))))
