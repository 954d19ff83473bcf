# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""FPFH's per-point maths in torch: closed-form normals of 3×3 covariances and Open3D's pair-feature bins.

Shared by the pixel-window graph (:mod:`anomalib_btm.features.fpfh_torch`) and the k-NN module's brute-force twin
(:mod:`anomalib_btm.features.fpfh_knn`), which the graph's dispatcher calls: keeping the maths here leaves no import
cycle between the two.
"""

from __future__ import annotations

import math

import torch

__all__ = ["pool_separable", "smallest_eigenvector"]

_NUM_BINS = 11
"""Bins per pair feature (Open3D's FPFH: 3 × 11 = 33)."""


def _cross(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross product of vectors given as component tuples."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Dot product of vectors given as component tuples."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _select(mask: torch.Tensor, a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Component-wise ``where(mask, a, b)``."""
    return tuple(torch.where(mask, x, y) for x, y in zip(a, b, strict=True))


def _safe_div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x / y`` where ``y != 0``, else 0 (no NaN/inf even in unused branches)."""
    nonzero = y != 0
    return torch.where(nonzero, x / torch.where(nonzero, y, torch.ones_like(y)), torch.zeros_like(x))


def _eigenvector_from_rows(a: tuple[torch.Tensor, ...], eigenvalue: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Eigenvector of a symmetric 3×3 matrix for an eigenvalue of multiplicity one.

    The rows of ``A - eigenvalue * I`` span the orthogonal complement of the eigenvector; the largest of the
    three pairwise cross products of the rows is used (first one on ties), as in Eberly's robust solver.

    Args:
        a: Matrix entries ``(a00, a01, a02, a11, a12, a22)``.
        eigenvalue: The eigenvalue.

    Returns:
        Unit eigenvector as a component tuple (zero if the rows are all parallel).
    """
    a00, a01, a02, a11, a12, a22 = a
    row0 = (a00 - eigenvalue, a01, a02)
    row1 = (a01, a11 - eigenvalue, a12)
    row2 = (a02, a12, a22 - eigenvalue)
    c01, c02, c12 = _cross(row0, row1), _cross(row0, row2), _cross(row1, row2)
    d01, d02, d12 = _dot(c01, c01), _dot(c02, c02), _dot(c12, c12)
    use02 = d02 > d01
    best = _select(use02, c02, c01)
    best_d = torch.where(use02, d02, d01)
    use12 = d12 > best_d
    best = _select(use12, c12, best)
    best_d = torch.where(use12, d12, best_d)
    norm = torch.sqrt(best_d)
    return tuple(_safe_div(c, norm) for c in best)


def _eigenvector_in_complement(
    a: tuple[torch.Tensor, ...], evec: tuple[torch.Tensor, ...], eigenvalue: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Eigenvector for ``eigenvalue`` in the plane orthogonal to a known unit eigenvector ``evec``.

    Builds an orthonormal basis ``(U, V)`` of the plane, restricts the matrix to it and takes the null vector
    of the 2×2 matrix ``M - eigenvalue * I`` from its row of largest magnitude (Eberly's construction).

    Args:
        a: Matrix entries ``(a00, a01, a02, a11, a12, a22)``.
        evec: Known unit eigenvector.
        eigenvalue: Eigenvalue of the wanted eigenvector.

    Returns:
        Unit eigenvector as a component tuple.
    """
    a00, a01, a02, a11, a12, a22 = a
    ex, ey, ez = evec
    zero = torch.zeros_like(ex)
    x_major = ex.abs() > ey.abs()
    inv_x = _safe_div(torch.ones_like(ex), torch.sqrt(ex * ex + ez * ez))
    inv_y = _safe_div(torch.ones_like(ex), torch.sqrt(ey * ey + ez * ez))
    u = _select(x_major, (-ez * inv_x, zero, ex * inv_x), (zero, ez * inv_y, -ey * inv_y))
    v = _cross(evec, u)

    def apply(w: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (
            a00 * w[0] + a01 * w[1] + a02 * w[2],
            a01 * w[0] + a11 * w[1] + a12 * w[2],
            a02 * w[0] + a12 * w[1] + a22 * w[2],
        )

    au, av = apply(u), apply(v)
    m00 = _dot(u, au) - eigenvalue
    m01 = _dot(u, av)
    m11 = _dot(v, av) - eigenvalue
    abs00, abs01, abs11 = m00.abs(), m01.abs(), m11.abs()
    one = torch.ones_like(m00)

    # Row 0 (|m00| >= |m11|): null vector ∝ (m01, -m00) in (U, V), normalised through the larger entry.
    r0_a = _safe_div(m01, m00)  # |m00| >= |m01|
    s0_a = 1 / torch.sqrt(1 + r0_a * r0_a)
    r0_b = _safe_div(m00, m01)  # |m01| > |m00|
    s0_b = 1 / torch.sqrt(1 + r0_b * r0_b)
    row0_first = abs00 >= abs01
    cu0 = torch.where(row0_first, r0_a * s0_a, s0_b)  # coefficient of U
    cv0 = torch.where(row0_first, s0_a, r0_b * s0_b)  # coefficient of -V
    row0_ok = torch.maximum(abs00, abs01) > 0

    # Row 1 (|m11| > |m00|): null vector ∝ (m11, -m01).
    r1_a = _safe_div(m01, m11)  # |m11| >= |m01|
    s1_a = 1 / torch.sqrt(1 + r1_a * r1_a)
    r1_b = _safe_div(m11, m01)
    s1_b = 1 / torch.sqrt(1 + r1_b * r1_b)
    row1_first = abs11 >= abs01
    cu1 = torch.where(row1_first, s1_a, r1_b * s1_b)
    cv1 = torch.where(row1_first, r1_a * s1_a, s1_b)
    row1_ok = torch.maximum(abs11, abs01) > 0

    use_row0 = abs00 >= abs11
    cu = torch.where(use_row0, torch.where(row0_ok, cu0, one), torch.where(row1_ok, cu1, one))
    cv = torch.where(use_row0, torch.where(row0_ok, cv0, zero), torch.where(row1_ok, cv1, zero))
    return tuple(cu * uu - cv * vv for uu, vv in zip(u, v, strict=True))


def smallest_eigenvector(cov: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit eigenvector of the smallest eigenvalue of symmetric 3×3 matrices, in closed form.

    Follows the construction of Open3D's ``FastEigen3x3`` (Eberly, "A Robust Eigensolver for 3×3 Symmetric
    Matrices"): scale by the largest entry, eigenvalues from the trigonometric solution of the characteristic
    polynomial, the isolated eigenvalue's eigenvector from cross products of rows, the second one in the
    orthogonal plane, the third as a cross product. Because every step is the same, the sign of the returned
    vector is Open3D's. Diagonal matrices give the axis of the strictly smallest diagonal entry (z on ties),
    the zero matrix gives ``(0, 0, 1)``. Works element-wise on tensors of any shape (no ``torch.linalg.eigh``,
    which does not export to ONNX).

    Args:
        cov: Entries ``(c00, c01, c02, c11, c12, c22)``, tensors of identical shape.

    Returns:
        Components ``(x, y, z)`` of the unit eigenvector.
    """
    c00, c01, c02, c11, c12, c22 = cov
    max_coeff = torch.stack([c00, c01, c02, c11, c12, c22]).amax(dim=0)
    positive = max_coeff > 0
    scale = torch.where(positive, max_coeff, torch.ones_like(max_coeff))
    a = tuple(c / scale for c in cov)
    a00, a01, a02, a11, a12, a22 = a
    off_norm = a01 * a01 + a02 * a02 + a12 * a12
    q = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = torch.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2 * off_norm) / 6)
    m00 = b11 * b22 - a12 * a12
    m01 = a01 * b22 - a12 * a02
    m02 = a01 * a12 - b11 * a02
    det = _safe_div(b00 * m00 - a01 * m01 + a02 * m02, p * p * p)
    half_det = (0.5 * det).clamp(-1.0, 1.0)
    angle = torch.acos(half_det) / 3
    beta2 = 2 * torch.cos(angle)
    beta0 = 2 * torch.cos(angle + 2 * math.pi / 3)
    beta1 = -(beta0 + beta2)
    eval0, eval1, eval2 = q + p * beta0, q + p * beta1, q + p * beta2

    # half_det >= 0: eigenvalue 2 is isolated; else eigenvalue 0 is. Start from the isolated one.
    upper = half_det >= 0
    first_eval = torch.where(upper, eval2, eval0)
    first = _eigenvector_from_rows(a, first_eval)
    second = _eigenvector_in_complement(a, first, eval1)
    third = _select(upper, _cross(second, first), _cross(first, second))
    first_smallest = (first_eval < torch.where(upper, eval0, eval1)) & (first_eval < torch.where(upper, eval1, eval2))
    second_smallest = (eval1 < eval0) & (eval1 < eval2)
    general = _select(first_smallest, first, _select(second_smallest, second, third))

    x_axis = (a00 < a11) & (a00 < a22)
    y_axis = ~x_axis & (a11 < a00) & (a11 < a22)
    one, zero = torch.ones_like(a00), torch.zeros_like(a00)
    diagonal = (torch.where(x_axis, one, zero), torch.where(y_axis, one, zero), torch.where(x_axis | y_axis, zero, one))
    normal = _select(off_norm > 0, general, diagonal)
    # Open3D replaces zero normals (zero matrix) by (0, 0, 1); guard against non-unit results of rounding, too.
    length = _dot(normal, normal)
    fine = positive & (length > 0.5)
    return _select(fine, normal, (zero, zero, one))  # type: ignore[return-value]


def _bin(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Open3D's histogram bin ``floor(11 * (value - low) / (high - low))`` clamped to ``[0, 10]`` (as float)."""
    return torch.floor((value - low) * (_NUM_BINS / (high - low))).clamp(0, _NUM_BINS - 1)


def _pair_feature_bins(
    d: tuple[torch.Tensor, ...],
    squared_distance: torch.Tensor,
    n1: tuple[torch.Tensor, ...],
    n2: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bins of Open3D's pair features ``(f0, f1, f2)`` of source points (normal ``n1``) and neighbours (``n2``).

    Open3D's ``ComputePairFeatures`` with ``d = p2 - p1``, ``r = |d|``, written with ``e1 = n1·d``, ``e2 = n2·d``,
    ``c = n1·n2`` and ``g = d·(n1 × n2)``: the roles swap when ``|e1| < |e2|`` (Open3D: ``acos|a1| > acos|a2|``),
    ``s`` is the source normal and ``v = d × s`` (``-d × s`` when swapped); then ``f2 = e1 / r`` (swapped:
    ``-e2 / r``), ``f1 = v̂·n_target = g / |v|`` and ``f0 = atan2((s × v̂)·n_target, c) = atan2(-v·(n1 × n2), c |v|)``
    with ``|v|² = r² - (d·s)²`` and ``v·(n1 × n2) = e1 c - e2`` (swapped: ``e1 - e2 c``). ``r = 0`` or ``v = 0`` give
    the zero feature (the middle bins), as in Open3D.

    Args:
        d: Components of ``p2 - p1``.
        squared_distance: ``|d|²``.
        n1: Source normal components (broadcastable).
        n2: Neighbour normal components.

    Returns:
        Float bins in ``[0, 10]`` of ``f0`` (over ``[-pi, pi]``), ``f1`` and ``f2`` (over ``[-1, 1]``).
    """
    e1, e2, c = _dot(n1, d), _dot(n2, d), _dot(n1, n2)
    g = _dot(d, _cross(n1, n2))
    swap = e1.abs() < e2.abs()
    e_source = torch.where(swap, e2, e1)
    v_squared = (squared_distance - e_source * e_source).clamp_min(0)
    v_norm = torch.sqrt(v_squared)
    f2 = _safe_div(torch.where(swap, -e2, e1), torch.sqrt(squared_distance))
    f1 = _safe_div(g, v_norm)
    f0 = torch.atan2(-torch.where(swap, e1 - e2 * c, e1 * c - e2), c * v_norm)
    degenerate = (squared_distance == 0) | (v_squared == 0)
    zero = torch.zeros_like(squared_distance)
    f0, f1, f2 = (torch.where(degenerate, zero, f) for f in (f0, f1, f2))
    return _bin(f0, -math.pi, math.pi), _bin(f1, -1.0, 1.0), _bin(f2, -1.0, 1.0)


def pool_separable(maps: torch.Tensor, pooling: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Apply a separable linear pooling to maps: ``out[b, c] = P_rows @ maps[b, c] @ P_columns.T``.

    Args:
        maps (torch.Tensor): ``(B, C, H, W)`` maps.
        pooling (tuple[torch.Tensor, torch.Tensor]): ``P_rows`` ``(h, H)`` and ``P_columns`` ``(w, W)``.

    Returns:
        torch.Tensor: ``(B, C, h, w)`` in the dtype of ``maps``.

    Example:
        >>> rows = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # 2 × 2 block means of a 4 × 4 map
        >>> pool_separable(torch.arange(16.0).reshape(1, 1, 4, 4), (rows, rows))
        tensor([[[[ 2.5000,  4.5000],
                  [10.5000, 12.5000]]]])
    """
    rows, columns = (matrix.to(device=maps.device, dtype=maps.dtype) for matrix in pooling)
    return torch.einsum("ih,bchw,jw->bcij", rows, maps, columns)
