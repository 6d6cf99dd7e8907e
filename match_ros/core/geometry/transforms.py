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


def rigid_fit(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """[S x 4 x 4] rigid motions G (rotation, translation; no scale) with G A_s ~ B_s in the least-squares sense
    (Kabsch), for S sets of paired points A, B [S x k x 3] (k >= 3)."""
    ca, cb = A.mean(axis=1, keepdims=True), B.mean(axis=1, keepdims=True)
    U, _, Vt = np.linalg.svd(np.einsum("ski,skj->sij", B - cb, A - ca))
    D = np.ones((len(A), 3))
    D[:, 2] = np.linalg.det(U @ Vt)
    R = (U * D[:, None, :]) @ Vt
    G = np.tile(np.eye(4), (len(A), 1, 1))
    G[:, :3, :3] = R
    G[:, :3, 3] = cb[:, 0] - np.einsum("sij,sj->si", R, ca[:, 0])
    return G


def rigid_ransac(A: np.ndarray, B: np.ndarray, threshold: float, iterations: int = 500,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(G [4 x 4], inliers [N] bool) for paired points A, B [N x 3]: the rigid motion that brings the most pairs
    within ``threshold`` (G A_i ~ B_i), from minimal samples of three, refitted on its inliers twice."""
    if len(A) < 3:
        return np.eye(4), np.zeros(len(A), bool)
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(len(A), 3, replace=False) for _ in range(iterations)])
    Gs = rigid_fit(A[idx], B[idx])
    err = np.linalg.norm(np.einsum("sij,nj->sni", Gs[:, :3, :3], A) + Gs[:, None, :3, 3] - B, axis=-1)
    counts = (err < threshold).sum(axis=1)
    k = int(np.argmax(counts))
    G, inl = Gs[k], err[k] < threshold
    for _ in range(2):
        if inl.sum() < 3:
            break
        G = rigid_fit(A[inl][None], B[inl][None])[0]
        inl = np.linalg.norm(A @ G[:3, :3].T + G[:3, 3] - B, axis=1) < threshold
    return G, inl


def dominant_plane(X: np.ndarray, threshold: float, iterations: int = 200,
                   seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """(share, point [3], unit normal [3]) of the plane that holds the most of the points X [N x 3] within
    ``threshold`` (RANSAC over samples of three); share 0 when X has fewer than three points in general position."""
    none = (0.0, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    if len(X) < 3:
        return none
    rng = np.random.default_rng(seed)
    P = X[np.stack([rng.choice(len(X), 3, replace=False) for _ in range(iterations)])]  # [S x 3 x 3]
    n = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 0])
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-12
    if not ok.any():
        return none
    P, n = P[ok], n[ok] / norm[ok, None]
    counts = (np.abs(np.einsum("snd,sd->sn", X[None] - P[:, :1], n)) < threshold).sum(axis=1)
    k = int(np.argmax(counts))
    return float(counts[k] / len(X)), P[k, 0].copy(), n[k].copy()
