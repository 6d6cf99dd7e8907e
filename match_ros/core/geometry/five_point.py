"""Minimal 5-point essential-matrix solver, batched over many samples at once (numpy only).

For S samples of five correspondences x0 <-> x1 in normalised image coordinates (x1^T E x0 = 0), every sample's
real solutions are computed together, without a Python loop over the samples (Stewenius / Nister style):

1. Each correspondence gives one linear equation kron(x1, x0) . vec(E) = 0 (E row-major). The null space of the
   5 x 9 system is spanned by four orthonormal matrices X, Y, Z, W, so E = x X + y Y + z Z + W. They come from one
   batched complete QR of the transposed system (the last four columns of Q): the same space as the SVD's last
   four right singular vectors, at a third of the cost for 40 samples.
2. An essential matrix satisfies det(E) = 0 and 2 E E^T E - trace(E E^T) E = 0: ten cubic equations in (x, y, z),
   written as a [10 x 20] coefficient matrix over the 20 monomials of degree <= 3. The products are built from
   two small fixed tensors (linear x linear -> quadratic monomial, quadratic x linear -> cubic monomial)
   contracted with einsum / matmul over the whole batch.
3. One batched linear solve eliminates the 10 cubic monomials: each is expressed in the 10 monomials of degree
   <= 2 (x^2, xy, xz, y^2, yz, z^2, x, y, z, 1), the basis of the quotient ring.
4. Multiplication by x maps that basis into itself modulo the equations: the [10 x 10] action matrix. Its
   eigenvalues are the x of the (up to 10, complex) solutions and its eigenvectors the basis monomials there, from
   which y and z are read (batched eigen-decomposition).
5. Only real eigenvalues are kept; each gives E = x X + y Y + z Z + W, normalised to unit Frobenius norm.

The solutions are those of the classic 5-point solver (e.g. OpenCV's, which roots the equivalent degree-10
polynomial), up to scale, sign, order and floating-point rounding. Degenerate samples (non-finite points, a
5 x 9 system of rank < 5, a singular elimination block, non-finite results) give no solution, never an exception.
Solutions with W's coefficient zero (a measure-zero case) are not found.
"""
from __future__ import annotations

from itertools import product

import numpy as np

# Monomials x^a y^b z^c of degree <= 3 as exponent triples: the 10 cubic ones first, then the basis of degree
# <= 2 ending with the linear ones and 1, so that the linear variables (x, y, z, 1) are the last four.
_CUBIC = [e for e in product(range(4), repeat=3) if sum(e) == 3]
_BASIS = [(2, 0, 0), (1, 1, 0), (1, 0, 1), (0, 2, 0), (0, 1, 1), (0, 0, 2), (1, 0, 0), (0, 1, 0), (0, 0, 1),
          (0, 0, 0)]
_MONOMIALS = _CUBIC + _BASIS
_INDEX = {e: k for k, e in enumerate(_MONOMIALS)}
_LINEAR = _BASIS[6:]  # x, y, z, 1: the variables of E = x X + y Y + z Z + W


def _add(a, b):
    return tuple(int(u + v) for u, v in zip(a, b))


# linear x linear -> basis (degree <= 2) monomial: [4 x 4 x 10]
_P1 = np.zeros((4, 4, 10))
for _a, _b in product(range(4), repeat=2):
    _P1[_a, _b, _INDEX[_add(_LINEAR[_a], _LINEAR[_b])] - 10] = 1.0
# basis (degree <= 2) x linear -> monomial of degree <= 3: [10 x 4 x 20], flattened for one matmul
_P2 = np.zeros((10, 4, 20))
for _m, _c in product(range(10), range(4)):
    _P2[_m, _c, _INDEX[_add(_BASIS[_m], _LINEAR[_c])]] = 1.0
_P1_FLAT, _P2_FLAT = _P1.reshape(16, 10), _P2.reshape(40, 20)

# Action matrix of multiplication by x on the basis: x * basis[i] is either a basis monomial (a fixed 0/1 row)
# or a cubic one (minus that cubic monomial's row of the elimination).
_X_TIMES = np.array([_INDEX[_add((1, 0, 0), e)] for e in _BASIS])
_TO_CUBIC = np.flatnonzero(_X_TIMES < 10)  # basis rows whose product with x is cubic
_TO_BASIS = np.flatnonzero(_X_TIMES >= 10)
_ACTION_FIXED = np.zeros((10, 10))
_ACTION_FIXED[_TO_BASIS, _X_TIMES[_TO_BASIS] - 10] = 1.0
_ONE, _Y, _Z = _BASIS.index((0, 0, 0)), _BASIS.index((0, 1, 0)), _BASIS.index((0, 0, 1))
_SAFE = np.hstack([np.eye(10), np.zeros((10, 10))])  # elimination rows put in place of a degenerate sample's

# Numerical thresholds: smallest / largest |diagonal entry| of R in the QR of the 9 x 5 system (rank < 5 below),
# imaginary part of an eigenvalue relative to its modulus, eigenvector component of 1. The elimination block is
# only rejected when exactly singular: well-posed samples can have a tiny determinant (1e-17 of the row-normalised
# block is common), and an ill-conditioned one still gives accurate solutions.
_RANK_TOL, _IMAG_TOL, _ONE_TOL = 1e-10, 1e-8, 1e-12
_HUGE = 1e150  # an action matrix with larger (or non-finite) entries is degenerate


def essential_from_five(x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All real essential matrices of S minimal samples.

    x0, x1: [S x 5 x 2] normalised image points (or [S x 5 x 3] homogeneous) with x1^T E x0 = 0
    returns (E [K x 3 x 3], each of unit Frobenius norm; sample [K] int, the sample each came from), ordered
    by sample (up to 10 solutions per sample, none for a degenerate one)
    """
    x0, x1 = _homogeneous(x0), _homogeneous(x1)
    if x0.shape != x1.shape:
        raise ValueError(f"point arrays differ in shape: {x0.shape} vs {x1.shape}")
    s = len(x0)
    if s == 0:
        return np.zeros((0, 3, 3)), np.zeros(0, int)
    ok = np.all(np.isfinite(x0), axis=(1, 2)) & np.all(np.isfinite(x1), axis=(1, 2))
    At = np.einsum("spi,spj->sijp", x1, x0).reshape(s, 9, 5)  # columns: the 5 epipolar equations on vec(E)
    At[~ok] = 0.0
    Q, R = np.linalg.qr(At, mode="complete")  # the last 4 columns of Q span the null space
    diag = np.abs(np.diagonal(R, axis1=1, axis2=2))
    ok &= diag.min(axis=1) > _RANK_TOL * diag.max(axis=1)
    B = Q[:, :, 5:].reshape(s, 3, 3, 4)  # E_ij = sum_a B_ija (x, y, z, 1)_a
    M = _constraints(B)  # [S x 10 x 20]
    M /= np.maximum(np.linalg.norm(M, axis=2, keepdims=True), 1e-300)
    M[~ok] = _SAFE
    G = _eliminate(M)  # cubic monomials = -G @ basis; NaN where the elimination block is singular
    action = np.broadcast_to(_ACTION_FIXED, (s, 10, 10)).copy()
    action[:, _TO_CUBIC] = -G[:, _X_TIMES[_TO_CUBIC]]
    ok &= np.all(np.abs(action) < _HUGE, axis=(1, 2))  # also False for NaN
    action[~ok] = 0.0
    w, V, ok = _eig(action, ok)  # action @ v = x v, v = basis monomials at a solution
    one = V[:, _ONE, :]
    keep = ok[:, None] & (np.abs(w.imag) <= _IMAG_TOL * np.maximum(np.abs(w), 1.0)) & (np.abs(one) > _ONE_TOL)
    sample, k = np.nonzero(keep)
    coef = np.empty((len(sample), 4))
    coef[:, 0] = w.real[sample, k]
    coef[:, 1] = (V[sample, _Y, k] / one[sample, k]).real
    coef[:, 2] = (V[sample, _Z, k] / one[sample, k]).real
    coef[:, 3] = 1.0
    E = (B[sample].reshape(-1, 9, 4) @ coef[:, :, None]).reshape(-1, 3, 3)
    norm = np.linalg.norm(E.reshape(-1, 9), axis=1)
    good = np.isfinite(norm) & (norm > 0)
    return E[good] / norm[good, None, None], sample[good]


def _homogeneous(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 3 or x.shape[1] != 5 or x.shape[2] not in (2, 3):
        raise ValueError(f"expected [S x 5 x 2] or [S x 5 x 3] points, got {x.shape}")
    if x.shape[2] == 3:
        return x
    return np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)


def _eliminate(M: np.ndarray) -> np.ndarray:
    """[S x 10 x 10] G with C3 G = C2 for M = [C3 | C2]; NaN for a sample whose C3 is singular or not finite."""
    C3, C2 = M[:, :, :10], M[:, :, 10:]
    try:
        return np.linalg.solve(C3, C2)
    except np.linalg.LinAlgError:  # rare: find the singular blocks, solve the others
        with np.errstate(invalid="ignore", over="ignore"):
            det = np.linalg.det(C3)
        bad = ~np.isfinite(det) | (det == 0.0) | ~np.all(np.isfinite(C2), axis=(1, 2))
        C3, C2 = C3.copy(), C2.copy()
        C3[bad], C2[bad] = np.eye(10), 0.0
        G = np.linalg.solve(C3, C2)
        G[bad] = np.nan
        return G


def _eig(action: np.ndarray, ok: np.ndarray):
    """Batched eigen-decomposition; a matrix on which LAPACK fails (rare) is dropped, not raised."""
    try:
        w, V = np.linalg.eig(action)
    except np.linalg.LinAlgError:
        w, V, ok = np.zeros(action.shape[:2], complex), np.zeros(action.shape, complex), ok.copy()
        for i in np.flatnonzero(ok):
            try:
                w[i], V[i] = np.linalg.eig(action[i])
            except np.linalg.LinAlgError:
                ok[i] = False
    return w, V, ok


def _constraints(B: np.ndarray) -> np.ndarray:
    """[S x 10 x 20] coefficients of det(E) = 0 and the nine 2 E E^T E - trace(E E^T) E = 0 over the monomials,
    for E_ij = sum_a B[s, i, j, a] (x, y, z, 1)_a."""
    s = len(B)
    rows = B.transpose(0, 1, 3, 2).reshape(s, 12, 3)  # [(i, a) x k]
    outer = (rows @ rows.transpose(0, 2, 1)).reshape(s, 3, 4, 3, 4).transpose(0, 1, 3, 2, 4)  # B_ika B_jkb
    EEt = outer.reshape(s, 3, 3, 16) @ _P1_FLAT  # [S x 3 x 3 x 10] quadratic coefficients of E E^T
    D = 2.0 * EEt
    D[:, [0, 1, 2], [0, 1, 2]] -= np.einsum("siim->sm", EEt)[:, None, :]  # 2 E E^T - trace(E E^T) I
    # (D E)_ij = sum_k D_ik E_kj, as products of quadratic (m) and linear (c) monomials
    DE = (D.transpose(0, 1, 3, 2).reshape(s, 30, 3) @ B.reshape(s, 3, 12)).reshape(s, 3, 10, 3, 4)
    trace_eq = DE.transpose(0, 1, 3, 2, 4).reshape(s, 9, 40) @ _P2_FLAT
    # det(E) = E_0 . (E_1 x E_2), rows of E
    r1, r2 = B[:, 1], B[:, 2]
    cross = (r1[:, [1, 2, 0], :, None] * r2[:, [2, 0, 1], None, :]
             - r1[:, [2, 0, 1], :, None] * r2[:, [1, 2, 0], None, :]).reshape(s, 3, 16) @ _P1_FLAT
    det_eq = (B[:, 0].transpose(0, 2, 1) @ cross).transpose(0, 2, 1).reshape(s, 1, 40) @ _P2_FLAT
    return np.concatenate([det_eq, trace_eq], axis=1)
