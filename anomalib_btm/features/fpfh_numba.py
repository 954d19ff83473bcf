# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Fused CPU kernels of the torch FPFH backend, compiled with Numba.

:func:`anomalib_btm.features.fpfh_torch.fpfh_torch` runs CPU tensors through these kernels by default
(``cpu_kernel=True``). They compute the arithmetic of the torch graph in the same order — window candidates, the
``"fast"``/``"exact"`` neighbour selection, covariances, the closed-form eigen solver, pair-feature bins, histograms,
the ``1/d²``-weighted neighbour sum — but pixel row by pixel row with every per-candidate value in registers or a
cache-resident row buffer, where the torch graph streams one ``(B, window**2, H, W)`` tensor per operation through
memory. Results equal the torch graph's up to float32 rounding (LLVM may fuse multiply-adds; ``atan2`` is Cephes'
float32 polynomial, within 1e-6 rad of the library function; the eigen solver, vectorised across a row's pixels, uses
float32 polynomials for ``acos``, ``sin`` and ``cos``): a pair feature within rounding of a bin edge may fall
into the neighbouring bin, and a neighbour-count correction pass may then step differently
(``tests/features/test_fpfh_numba.py`` bounds both).

Rows are split into chunks that a thread pool of ``torch.get_num_threads()`` workers runs concurrently (the
kernels release the GIL). The first call in a fresh environment compiles the kernels (seconds); Numba caches
the machine code on disk, and later processes load it instead of compiling.

The torch graph remains the implementation for CUDA, ``torch.compile``, ONNX/OpenVINO export, float64 input and
autograd.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit

__all__ = ["fpfh_numba"]

_NUM_BINS = 11
_EXACT_STEPS = 24
_F32 = np.float32
_ZERO = _F32(0.0)
_ONE = _F32(1.0)
_HUNDRED = _F32(100.0)
_INF = _F32(np.inf)
_PI = _F32(math.pi)
_TINY = _F32(np.finfo(np.float32).tiny)
_MIN_FACTOR = _F32(1 / 16)
_MAX_FACTOR = _F32(16.0)
_ANGLE_SCALE = _F32(_NUM_BINS / (2 * math.pi))
_UNIT_SCALE = _F32(_NUM_BINS / 2.0)
_LAST_BIN = _F32(_NUM_BINS - 1)
_LOG_MARGIN = _F32(1e-3)
# Fast-math without "nnan"/"ninf": thresholds are infinite where everything is kept, and comparisons with them
# must stay exact. "contract" lets LLVM fuse multiply-adds (the only source of differences to the torch graph).
_FLAGS = {"contract", "nsz", "arcp"}
_JIT = {"nogil": True, "cache": True, "fastmath": _FLAGS, "error_model": "numpy", "boundscheck": False}


@njit(**_JIT)
def _candidate_distances(
    padded: np.ndarray,
    xyz: np.ndarray,
    valid: np.ndarray,
    b: int,
    y: int,
    window: int,
    radius2: float,
    valid_channel: int,
    sqd: np.ndarray,
    adm: np.ndarray,
) -> None:
    """Squared distances and admissibility ``(P, W)`` of the window candidates of output row ``y`` of cloud ``b``."""
    width = xyz.shape[3]
    px, py, pz, own = xyz[b, 0, y], xyz[b, 1, y], xyz[b, 2, y], valid[b, y]
    for p in range(window * window):
        i, j = p // window, p % window
        cx, cy, cz = (
            padded[b, 0, y + i, j : j + width],
            padded[b, 1, y + i, j : j + width],
            padded[b, 2, y + i, j : j + width],
        )
        cv = padded[b, valid_channel, y + i, j : j + width]
        for w in range(width):
            dx, dy, dz = cx[w] - px[w], cy[w] - py[w], cz[w] - pz[w]
            s = dx * dx + dy * dy + dz * dz
            sqd[p, w] = s
            adm[p, w] = (cv[w] > _ZERO) and own[w] and (s <= radius2)


@njit(**_JIT)
def _count_below(sqd: np.ndarray, adm: np.ndarray, threshold: np.ndarray, counts: np.ndarray) -> None:
    """``counts[w]`` = admissible candidates with squared distance at most ``threshold[w]``."""
    counts[:] = _ZERO
    for p in range(sqd.shape[0]):
        for w in range(sqd.shape[1]):
            counts[w] += _ONE if (adm[p, w] and sqd[p, w] <= threshold[w]) else _ZERO


@njit(**_JIT)
def _threshold(
    sqd: np.ndarray,
    adm: np.ndarray,
    window: int,
    k: int,
    exact: bool,
    passes: int,
    threshold: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Squared-distance threshold per pixel of the row (``_kth_threshold`` of the torch graph)."""
    num, width = sqd.shape
    centre = num // 2
    kf = _F32(k)
    total = np.zeros(width, _F32)
    largest = np.zeros(width, _F32)
    smallest = np.full(width, _INF, _F32)
    for p in range(num):
        for w in range(width):
            a, s = adm[p, w], sqd[p, w]
            total[w] += _ONE if a else _ZERO
            largest[w] = max(largest[w], s if a else _ZERO)
            smallest[w] = min(smallest[w], s if (a and s > _ZERO) else _INF)
    if exact:
        low = np.empty(width, _F32)
        high = np.empty(width, _F32)
        for w in range(width):
            high[w] = math.log(max(largest[w], _TINY))
            start = largest[w] if smallest[w] == _INF else smallest[w]
            low[w] = math.log(max(start, _TINY)) - _LOG_MARGIN
        for _ in range(_EXACT_STEPS):
            for w in range(width):
                threshold[w] = math.exp(_F32(0.5) * (low[w] + high[w]))
            _count_below(sqd, adm, threshold, counts)
            for w in range(width):
                middle = _F32(0.5) * (low[w] + high[w])
                if counts[w] >= kf:
                    high[w] = middle
                else:
                    low[w] = middle
        for w in range(width):
            threshold[w] = math.exp(high[w])
    else:
        guess_scale = _F32(k / math.pi)
        for w in range(width):
            horizontal = _INF
            for q in (centre - 1, centre + 1):
                if 0 <= q < num and adm[q, w] and sqd[q, w] > _ZERO:
                    horizontal = min(horizontal, sqd[q, w])
            vertical = _INF
            for q in (centre - window, centre + window):
                if 0 <= q < num and adm[q, w] and sqd[q, w] > _ZERO:
                    vertical = min(vertical, sqd[q, w])
            if horizontal < _INF and vertical < _INF:
                area = math.sqrt(horizontal * vertical)
            else:
                area = min(horizontal, vertical)
            guess = area * guess_scale
            threshold[w] = guess if (guess < _INF and guess > _ZERO) else largest[w]
        for _ in range(passes):
            _count_below(sqd, adm, threshold, counts)
            for w in range(width):
                factor = min(max(kf / max(counts[w], _ONE), _MIN_FACTOR), _MAX_FACTOR)
                threshold[w] = threshold[w] * factor
    for w in range(width):
        if total[w] <= kf:
            threshold[w] = _INF


@njit(**_JIT)
def _safe_div(x: float, y: float) -> float:
    """``x / y`` where ``y != 0``, else 0."""
    return x / y if y != _ZERO else _ZERO


@njit(**_JIT)
def _covariance(
    out: np.ndarray,
    slot: int,
    count: float,
    s1: float,
    s2: float,
    s3: float,
    s4: float,
    s5: float,
    s6: float,
    s7: float,
    s8: float,
    s9: float,
) -> None:
    """Covariance of a normal's neighbourhood from its count and sums into column ``slot`` of ``out`` ``(6, n)``.

    ``s1-s3`` are the sums of the offsets ``x, y, z``, ``s4-s9`` of ``xx, xy, xz, yy, yz, zz``. With fewer than 3
    neighbours the identity, whose normal is the z axis (Open3D's default).
    """
    enough = count >= _F32(3.0)
    inv = _ONE / count if enough else _ZERO
    mx, my, mz = s1 * inv, s2 * inv, s3 * inv
    out[0, slot] = s4 * inv - mx * mx if enough else _ONE
    out[1, slot] = s5 * inv - mx * my if enough else _ZERO
    out[2, slot] = s6 * inv - mx * mz if enough else _ZERO
    out[3, slot] = s7 * inv - my * my if enough else _ONE
    out[4, slot] = s8 * inv - my * mz if enough else _ZERO
    out[5, slot] = s9 * inv - mz * mz if enough else _ONE


_ASIN = tuple(_F32(c) for c in (4.2163199048e-2, 2.4181311049e-2, 4.5470025998e-2, 7.4953002686e-2, 1.6666752422e-1))
"""Cephes' ``asinf`` polynomial on ``[-0.5, 0.5]`` (highest power first)."""
_COS = tuple(_F32((-1) ** i / math.factorial(2 * i)) for i in range(5, 0, -1))
"""Taylor coefficients of ``cos`` (``t^10`` down to ``t^2``): within 1e-8 on ``[0, pi/3]``."""
_SIN = tuple(_F32((-1) ** i / math.factorial(2 * i + 1)) for i in range(4, 0, -1))
"""Taylor coefficients of ``sin`` (``t^9`` down to ``t^3``): within 1e-7 on ``[0, pi/3]``."""
_HALF = _F32(0.5)
_HALF_PI = _F32(math.pi / 2)
_SQRT3 = _F32(math.sqrt(3.0))


@njit(**_JIT)
def _smallest_eigenvectors(covariances: np.ndarray, out: np.ndarray) -> None:
    """Unit eigenvectors of the smallest eigenvalues of many symmetric 3 × 3 matrices ``(6, n)``, into ``(3, n)``.

    Open3D's ``FastEigen3x3``, the computation of the torch graph's
    :func:`~anomalib_btm.features.fpfh_math.smallest_eigenvector` (sign included): the eigenvalues in closed form, the
    eigenvector of the extreme one from the largest cross product of rows of ``A - value I``, the middle one by
    Eberly's 2 × 2 construction in its complement, the third as their cross product, and the one of the smallest
    eigenvalue kept. Written without branches (every case computed and selected) so that LLVM vectorises the loop
    across matrices: about 10× faster than one scalar solve per matrix. ``acos`` (Cephes), ``sin`` and ``cos`` of the
    third angle in ``[0, pi/3]`` are float32 polynomials; ``cos(t + 2 pi / 3) = -(cos t + sqrt(3) sin t) / 2``.
    Eigenvectors agree with the torch solver's up to float32 rounding where the smallest eigenvalue is simple
    (normals of surfaces); for a repeated smallest eigenvalue either returns some unit vector of its eigenspace.
    The loop's scalar remainder may round differently from its vector lanes: callers that must not depend on how
    the points are split (the thread count) solve in fixed, aligned chunks.

    Args:
        covariances: Rows ``c00, c01, c02, c11, c12, c22`` of symmetric matrices, float32.
        out: Float32 ``(3, n)``, written.
    """
    c00s, c01s, c02s = covariances[0], covariances[1], covariances[2]
    c11s, c12s, c22s = covariances[3], covariances[4], covariances[5]
    out_x, out_y, out_z = out[0], out[1], out[2]
    two, three, six = _F32(2.0), _F32(3.0), _F32(6.0)
    for i in range(c00s.shape[0]):
        c00, c01, c02, c11, c12, c22 = c00s[i], c01s[i], c02s[i], c11s[i], c12s[i], c22s[i]
        max_coeff = max(max(max(c00, c01), max(c02, c11)), max(c12, c22))
        positive = max_coeff > _ZERO
        inv_max = _ONE / max_coeff if positive else _ONE
        a00, a01, a02 = c00 * inv_max, c01 * inv_max, c02 * inv_max
        a11, a12, a22 = c11 * inv_max, c12 * inv_max, c22 * inv_max
        off_norm = a01 * a01 + a02 * a02 + a12 * a12
        q = (a00 + a11 + a22) / three
        b00, b11, b22 = a00 - q, a11 - q, a22 - q
        p = math.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + two * off_norm) / six)
        m00 = b11 * b22 - a12 * a12
        m01 = a01 * b22 - a12 * a02
        m02 = a01 * a12 - b11 * a02
        det = _safe_div(b00 * m00 - a01 * m01 + a02 * m02, p * p * p)
        half_det = min(max(_HALF * det, -_ONE), _ONE)
        # acos(half_det): asin of x (|x| <= 1/2) or of sqrt((1 - |x|) / 2), Cephes' acosf without branches.
        large = abs(half_det) > _HALF
        a = math.sqrt(_HALF * (_ONE - abs(half_det))) if large else half_det
        z = a * a
        asin = ((((_ASIN[0] * z + _ASIN[1]) * z + _ASIN[2]) * z + _ASIN[3]) * z + _ASIN[4]) * z * a + a
        acos = (two * asin if half_det > _ZERO else _PI - two * asin) if large else _HALF_PI - asin
        t = acos / three
        t2 = t * t
        cos_t = ((((_COS[0] * t2 + _COS[1]) * t2 + _COS[2]) * t2 + _COS[3]) * t2 + _COS[4]) * t2 + _ONE
        sin_t = (((_SIN[0] * t2 + _SIN[1]) * t2 + _SIN[2]) * t2 + _SIN[3]) * t2 * t + t
        beta2 = two * cos_t
        beta0 = -cos_t - _SQRT3 * sin_t
        beta1 = -(beta0 + beta2)
        eval0, eval1, eval2 = q + p * beta0, q + p * beta1, q + p * beta2
        upper = half_det >= _ZERO
        first_eval = eval2 if upper else eval0
        # The eigenvector of first_eval: the largest cross product of rows of A - first_eval I.
        r0x, r0y, r0z = a00 - first_eval, a01, a02
        r1x, r1y, r1z = a01, a11 - first_eval, a12
        r2x, r2y, r2z = a02, a12, a22 - first_eval
        c01x, c01y, c01z = r0y * r1z - r0z * r1y, r0z * r1x - r0x * r1z, r0x * r1y - r0y * r1x
        c02x, c02y, c02z = r0y * r2z - r0z * r2y, r0z * r2x - r0x * r2z, r0x * r2y - r0y * r2x
        c12x, c12y, c12z = r1y * r2z - r1z * r2y, r1z * r2x - r1x * r2z, r1x * r2y - r1y * r2x
        d01 = c01x * c01x + c01y * c01y + c01z * c01z
        d02 = c02x * c02x + c02y * c02y + c02z * c02z
        d12 = c12x * c12x + c12y * c12y + c12z * c12z
        take02 = d02 > d01
        bx = c02x if take02 else c01x
        by = c02y if take02 else c01y
        bz = c02z if take02 else c01z
        bd = d02 if take02 else d01
        take12 = d12 > bd
        bx = c12x if take12 else bx
        by = c12y if take12 else by
        bz = c12z if take12 else bz
        bd = d12 if take12 else bd
        inv_norm = _safe_div(_ONE, math.sqrt(bd))
        fx, fy, fz = bx * inv_norm, by * inv_norm, bz * inv_norm
        # The eigenvector of eval1 orthogonal to f: Eberly's 2 × 2 construction.
        x_major = abs(fx) > abs(fy)
        inv = _safe_div(_ONE, math.sqrt(fx * fx + fz * fz if x_major else fy * fy + fz * fz))
        ux = -fz * inv if x_major else _ZERO
        uy = _ZERO if x_major else fz * inv
        uz = fx * inv if x_major else -fy * inv
        vx, vy, vz = fy * uz - fz * uy, fz * ux - fx * uz, fx * uy - fy * ux
        aux, auy, auz = a00 * ux + a01 * uy + a02 * uz, a01 * ux + a11 * uy + a12 * uz, a02 * ux + a12 * uy + a22 * uz
        avx, avy, avz = a00 * vx + a01 * vy + a02 * vz, a01 * vx + a11 * vy + a12 * vz, a02 * vx + a12 * vy + a22 * vz
        e00 = ux * aux + uy * auy + uz * auz - eval1
        e01 = ux * avx + uy * avy + uz * avz
        e11 = vx * avx + vy * avy + vz * avz - eval1
        first_row = abs(e00) >= abs(e11)
        diagonal = e00 if first_row else e11
        larger = max(abs(diagonal), abs(e01))
        diagonal_major = abs(diagonal) >= abs(e01)
        ratio = _safe_div(e01, diagonal) if diagonal_major else _safe_div(diagonal, e01)
        scale = _ONE / math.sqrt(_ONE + ratio * ratio)
        ratio_on_u = first_row == diagonal_major
        cu = (ratio * scale if ratio_on_u else scale) if larger > _ZERO else _ONE
        cv = (scale if ratio_on_u else ratio * scale) if larger > _ZERO else _ZERO
        sx, sy, sz = cu * ux - cv * vx, cu * uy - cv * vy, cu * uz - cv * vz
        tx = sy * fz - sz * fy if upper else fy * sz - fz * sy
        ty = sz * fx - sx * fz if upper else fz * sx - fx * sz
        tz = sx * fy - sy * fx if upper else fx * sy - fy * sx
        pick_first = (first_eval < (eval0 if upper else eval1)) and (first_eval < (eval1 if upper else eval2))
        pick_second = (eval1 < eval0) and (eval1 < eval2)
        nx = fx if pick_first else (sx if pick_second else tx)
        ny = fy if pick_first else (sy if pick_second else ty)
        nz = fz if pick_first else (sz if pick_second else tz)
        # No off-diagonal entries: the axis of the smallest diagonal entry.
        x_axis = (a00 < a11) and (a00 < a22)
        y_axis = (not x_axis) and (a11 < a00) and (a11 < a22)
        axes = not (off_norm > _ZERO)
        nx = (_ONE if x_axis else _ZERO) if axes else nx
        ny = (_ONE if y_axis else _ZERO) if axes else ny
        nz = (_ZERO if (x_axis or y_axis) else _ONE) if axes else nz
        unit = positive and (nx * nx + ny * ny + nz * nz > _HALF)
        out_x[i] = nx if unit else _ZERO
        out_y[i] = ny if unit else _ZERO
        out_z[i] = nz if unit else _ONE


@njit(**_JIT)
def _accumulate(sums: np.ndarray, local: np.ndarray) -> None:
    """Add the selected offsets ``local`` (dx, dy, dz, 1) and their products to the covariance sums.

    One loop per sum: a loop that updates all ten at once has too many arrays for LLVM to vectorise it.
    """
    dx, dy, dz, one = local[0], local[1], local[2], local[3]
    s0, s1, s2, s3, s4 = sums[0], sums[1], sums[2], sums[3], sums[4]
    s5, s6, s7, s8, s9 = sums[5], sums[6], sums[7], sums[8], sums[9]
    for w in range(dx.shape[0]):
        s0[w] += one[w]
    for w in range(dx.shape[0]):
        s1[w] += dx[w]
    for w in range(dx.shape[0]):
        s2[w] += dy[w]
    for w in range(dx.shape[0]):
        s3[w] += dz[w]
    for w in range(dx.shape[0]):
        s4[w] += dx[w] * dx[w]
    for w in range(dx.shape[0]):
        s5[w] += dx[w] * dy[w]
    for w in range(dx.shape[0]):
        s6[w] += dx[w] * dz[w]
    for w in range(dx.shape[0]):
        s7[w] += dy[w] * dy[w]
    for w in range(dx.shape[0]):
        s8[w] += dy[w] * dz[w]
    for w in range(dx.shape[0]):
        s9[w] += dz[w] * dz[w]


@njit(**_JIT)
def _normal_rows(
    start: int,
    stop: int,
    padded: np.ndarray,
    xyz: np.ndarray,
    valid: np.ndarray,
    window: int,
    radius2: float,
    k: int,
    exact: bool,
    passes: int,
    camera: bool,
    normals: np.ndarray,
) -> None:
    """Normals of rows ``start:stop`` (flattened ``b * H + y``) into ``normals`` ``(B, 3, H, W)``."""
    height, width = xyz.shape[2], xyz.shape[3]
    num = window * window
    sqd = np.empty((num, width), _F32)
    adm = np.empty((num, width), np.bool_)
    threshold = np.empty(width, _F32)
    counts = np.empty(width, _F32)
    sums = np.empty((10, width), _F32)
    local = np.empty((4, width), _F32)
    covariances = np.empty((6, width), _F32)
    row_normals = np.empty((3, width), _F32)
    for row in range(start, stop):
        b, y = row // height, row % height
        _candidate_distances(padded, xyz, valid, b, y, window, radius2, 3, sqd, adm)
        _threshold(sqd, adm, window, k, exact, passes, threshold, counts)
        sums[:] = _ZERO
        px, py, pz = xyz[b, 0, y], xyz[b, 1, y], xyz[b, 2, y]
        for p in range(num):
            i, j = p // window, p % window
            cx = padded[b, 0, y + i, j : j + width]
            cy = padded[b, 1, y + i, j : j + width]
            cz = padded[b, 2, y + i, j : j + width]
            for w in range(width):
                selected = adm[p, w] and sqd[p, w] <= threshold[w]
                local[0, w] = cx[w] - px[w] if selected else _ZERO
                local[1, w] = cy[w] - py[w] if selected else _ZERO
                local[2, w] = cz[w] - pz[w] if selected else _ZERO
                local[3, w] = _ONE if selected else _ZERO
            _accumulate(sums, local)
        for w in range(width):
            _covariance(covariances, w, sums[0, w], sums[1, w], sums[2, w], sums[3, w], sums[4, w], sums[5, w],
                        sums[6, w], sums[7, w], sums[8, w], sums[9, w])  # fmt: skip
        _smallest_eigenvectors(covariances, row_normals)
        for w in range(width):
            nx, ny, nz = row_normals[0, w], row_normals[1, w], row_normals[2, w]
            if camera and nx * px[w] + ny * py[w] + nz * pz[w] > _ZERO:
                nx, ny, nz = -nx, -ny, -nz
            normals[b, 0, y, w] = nx
            normals[b, 1, y, w] = ny
            normals[b, 2, y, w] = nz


@njit(**_JIT)
def _atan2(y: float, x: float) -> float:
    """float32 ``atan2`` with Cephes' ``atanf`` polynomial (about 1 ulp; vectorisable, unlike the libm call)."""
    ax, ay = abs(x), abs(y)
    large, small = max(ax, ay), min(ax, ay)
    ratio = small / large if large > _ZERO else _ZERO
    reduced = ratio > _F32(0.41421356237309503)
    t = (ratio - _ONE) / (ratio + _ONE) if reduced else ratio
    z = t * t
    poly = (_F32(8.05374449538e-2) * z - _F32(1.38776856032e-1)) * z + _F32(1.99777106478e-1)
    angle = (poly * z - _F32(3.33329491539e-1)) * z * t + t
    angle = angle + _F32(math.pi / 4) if reduced else angle
    angle = _F32(math.pi / 2) - angle if ay > ax else angle
    angle = _PI - angle if x < _ZERO else angle
    return -angle if math.copysign(_ONE, y) < _ZERO else angle


@njit(**_JIT)
def _bin(value: float, low: float, scale: float) -> int:
    """Open3D's histogram bin ``floor((value - low) * scale)`` clamped to ``[0, 10]``."""
    return np.int32(min(max(math.floor((value - low) * scale), _ZERO), _LAST_BIN))


@njit(**_JIT)
def _count_bins(code: np.ndarray, selected: np.ndarray, offset: int, bits: int, packed: np.ndarray) -> None:
    """Count the selected lanes' bins ``code - offset`` into the ``bits``-wide fields of ``packed`` ``(words, W)``.

    Lanes whose bin lies in another word may compute any shift: the select discards them.
    """
    per_word = 63 // bits
    for word in range(packed.shape[0]):
        target = packed[word]
        first = offset + word * per_word
        for w in range(code.shape[0]):
            field = np.int64(code[w] - first)
            target[w] += (np.int64(1) << (bits * field)) if (selected[w] and field >= 0 and field < per_word) else 0


@njit(**_JIT)
def _spfh_rows(
    start: int,
    stop: int,
    padded: np.ndarray,
    xyz: np.ndarray,
    valid: np.ndarray,
    window: int,
    radius2: float,
    k: int,
    exact: bool,
    passes: int,
    spfh: np.ndarray,
    counts_out: np.ndarray,
    threshold_out: np.ndarray,
    bits: int,
) -> None:
    """Neighbour selection and SPFH of rows ``start:stop``.

    Writes the SPFH into the zero-padded ``spfh`` ``(B, 33, H + window - 1, W + window - 1)`` (what the weighted
    sum reads), the neighbour count and the squared-distance threshold into ``(B, H, W)``.

    Histograms are counted in ``bits``-wide fields of 64-bit words, one add per candidate and pixel for each feature
    (vectorised: no scatter into bins; ``2**bits`` exceeds the number of candidates, so fields cannot overflow).
    """
    height, width = xyz.shape[2], xyz.shape[3]
    num = window * window
    centre = num // 2
    half = window // 2
    sqd = np.empty((num, width), _F32)
    adm = np.empty((num, width), np.bool_)
    threshold = np.empty(width, _F32)
    counts = np.empty(width, _F32)
    bins = np.empty((3, width), np.int32)
    selected = np.empty(width, np.bool_)
    per_word = 63 // bits
    words = -(-_NUM_BINS // per_word)
    mask = (np.int64(1) << bits) - 1
    packed = np.empty((3, words, width), np.int64)
    unpacked = np.empty(3 * _NUM_BINS, _F32)
    for row in range(start, stop):
        b, y = row // height, row % height
        _candidate_distances(padded, xyz, valid, b, y, window, radius2, 6, sqd, adm)
        _threshold(sqd, adm, window, k, exact, passes, threshold, counts)
        packed[:] = 0
        px, py, pz = xyz[b, 0, y], xyz[b, 1, y], xyz[b, 2, y]
        ax_, ay_, az_ = (
            padded[b, 3, y + half, half : half + width],
            padded[b, 4, y + half, half : half + width],
            padded[b, 5, y + half, half : half + width],
        )
        for p in range(num):
            if p == centre:
                continue
            i, j = p // window, p % window
            cx, cy, cz = (
                padded[b, 0, y + i, j : j + width],
                padded[b, 1, y + i, j : j + width],
                padded[b, 2, y + i, j : j + width],
            )
            mx, my, mz = (
                padded[b, 3, y + i, j : j + width],
                padded[b, 4, y + i, j : j + width],
                padded[b, 5, y + i, j : j + width],
            )
            for w in range(width):
                dx, dy, dz = cx[w] - px[w], cy[w] - py[w], cz[w] - pz[w]
                s = sqd[p, w]
                n1x, n1y, n1z = ax_[w], ay_[w], az_[w]
                n2x, n2y, n2z = mx[w], my[w], mz[w]
                e1 = n1x * dx + n1y * dy + n1z * dz
                e2 = n2x * dx + n2y * dy + n2z * dz
                c = n1x * n2x + n1y * n2y + n1z * n2z
                g = dx * (n1y * n2z - n1z * n2y) + dy * (n1z * n2x - n1x * n2z) + dz * (n1x * n2y - n1y * n2x)
                swap = abs(e1) < abs(e2)
                e_source = e2 if swap else e1
                v_squared = max(s - e_source * e_source, _ZERO)
                v_norm = math.sqrt(v_squared)
                degenerate = (s == _ZERO) or (v_squared == _ZERO)
                f2 = _ZERO if degenerate else (-e2 if swap else e1) / math.sqrt(s)
                f1 = _ZERO if degenerate else g / v_norm
                numerator = -(e1 - e2 * c) if swap else -(e1 * c - e2)
                f0 = _ZERO if degenerate else _atan2(numerator, c * v_norm)
                bins[0, w] = _bin(f0, -_PI, _ANGLE_SCALE)
                bins[1, w] = _bin(f1, -_ONE, _UNIT_SCALE) + _NUM_BINS
                bins[2, w] = _bin(f2, -_ONE, _UNIT_SCALE) + 2 * _NUM_BINS
                selected[w] = adm[p, w] and s <= threshold[w]
            for group in range(3):
                _count_bins(bins[group], selected, group * _NUM_BINS, bits, packed[group])
        for w in range(width):
            # Unpack the fields (no division in this loop: it runs 33 times per pixel).
            for group in range(3):
                q = 0
                for word in range(words):
                    value = packed[group, word, w]
                    for _ in range(min(per_word, _NUM_BINS - q)):
                        unpacked[group * _NUM_BINS + q] = _F32(value & mask)
                        value >>= bits
                        q += 1
            neighbours = _ZERO
            for q in range(_NUM_BINS):
                neighbours += unpacked[q]
            scale = _safe_div(_HUNDRED, neighbours)
            for q in range(3 * _NUM_BINS):
                spfh[b, q, y + half, w + half] = unpacked[q] * scale
            counts_out[b, y, w] = neighbours
            threshold_out[b, y, w] = threshold[w]


@njit(**_JIT)
def _fpfh_rows(
    start: int,
    stop: int,
    padded: np.ndarray,
    xyz: np.ndarray,
    valid: np.ndarray,
    spfh: np.ndarray,
    counts: np.ndarray,
    threshold: np.ndarray,
    window: int,
    radius2: float,
    fpfh: np.ndarray,
) -> None:
    """FPFH of rows ``start:stop``: own SPFH plus the ``1/d²``-weighted neighbour SPFHs rescaled per group."""
    height, width = xyz.shape[2], xyz.shape[3]
    num = window * window
    half = window // 2
    channels = 3 * _NUM_BINS
    weight = np.empty((num, width), _F32)
    total = np.empty((channels, width), _F32)
    group_sum = np.empty(width, _F32)
    for row in range(start, stop):
        b, y = row // height, row % height
        px, py, pz, own = xyz[b, 0, y], xyz[b, 1, y], xyz[b, 2, y], valid[b, y]
        limit = threshold[b, y]
        total[:] = _ZERO
        for p in range(num):
            i, j = p // window, p % window
            cx = padded[b, 0, y + i, j : j + width]
            cy = padded[b, 1, y + i, j : j + width]
            cz = padded[b, 2, y + i, j : j + width]
            cv = padded[b, 6, y + i, j : j + width]
            wp = weight[p]
            for w in range(width):
                dx, dy, dz = cx[w] - px[w], cy[w] - py[w], cz[w] - pz[w]
                s = dx * dx + dy * dy + dz * dz
                positive = (cv[w] > _ZERO) and own[w] and s <= radius2 and s <= limit[w] and s > _ZERO
                wp[w] = _ONE / s if positive else _ZERO
        for q in range(channels):
            accumulator = total[q]
            for p in range(num):
                source = spfh[b, q, y + p // window, p % window : p % window + width]
                wp = weight[p]
                for w in range(width):
                    accumulator[w] += source[w] * wp[w]
        for group in range(3):
            group_sum[:] = _ZERO
            for q in range(group * _NUM_BINS, (group + 1) * _NUM_BINS):
                for w in range(width):
                    group_sum[w] += total[q, w]
            for w in range(width):
                group_sum[w] = _safe_div(_HUNDRED, group_sum[w])
            for q in range(group * _NUM_BINS, (group + 1) * _NUM_BINS):
                own_spfh = spfh[b, q, y + half, half : half + width]
                for w in range(width):
                    keep = own[w] and counts[b, y, w] > _ZERO
                    fpfh[b, q, y, w] = total[q, w] * group_sum[w] + own_spfh[w] if keep else _ZERO


_POOL_LOCK = threading.Lock()
_POOL: tuple[tuple[int, int], ThreadPoolExecutor] | None = None
"""``((process id, threads), executor)`` of the shared worker pool."""


def _pool(threads: int) -> ThreadPoolExecutor:
    """The shared worker pool for ``threads`` threads, created anew after a fork (the child has no pool threads)."""
    global _POOL
    with _POOL_LOCK:
        key = (os.getpid(), threads)
        if _POOL is None or _POOL[0] != key:
            if _POOL is not None and _POOL[0][0] == key[0]:
                _POOL[1].shutdown(wait=False)  # same process, other thread count
            _POOL = (key, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fpfh"))
        return _POOL[1]


def _run_rows(kernel: Callable[..., None], rows: int, *args: object) -> None:
    """Run ``kernel(start, stop, *args)`` over ``rows`` in chunks on ``torch.get_num_threads()`` threads."""
    threads = max(1, torch.get_num_threads())
    if threads == 1 or rows < 2:
        kernel(0, rows, *args)
        return
    pool = _pool(threads)
    chunks = min(rows, 4 * threads)
    bounds = [rows * index // chunks for index in range(chunks + 1)]
    futures = [pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(chunks)]
    for future in futures:
        future.result()


def _padded(xyz: np.ndarray, valid: np.ndarray, normals: np.ndarray | None, half: int) -> np.ndarray:
    """Points, normals (if given) and validity as channels, zero padded by ``half`` pixels on every side."""
    batch, _, height, width = xyz.shape
    channels = 4 if normals is None else 7
    padded = np.zeros((batch, channels, height + 2 * half, width + 2 * half), np.float32)
    inner = (slice(None), slice(None), slice(half, half + height), slice(half, half + width))
    padded[:, :3][inner] = xyz
    if normals is not None:
        padded[:, 3:6][inner] = normals
    padded[:, -1][inner[0], inner[2], inner[3]] = valid
    return padded


def _fpfh_cloud(
    xyz: np.ndarray,
    out: np.ndarray,
    voxel_size: float,
    window: int,
    normal_window: int,
    max_nn: int,
    normal_max_nn: int,
    camera: bool,
    exact: bool,
    passes: int,
) -> None:
    """The three stages on clouds ``xyz`` ``(B, 3, H, W)``, FPFH into ``out`` ``(B, 33, H, W)``."""
    batch, _, height, width = xyz.shape
    rows = batch * height
    valid = (xyz != 0).all(axis=1)
    padded = _padded(xyz, valid, None, normal_window // 2)
    normals = np.empty((batch, 3, height, width), np.float32)
    radius2 = _F32((2.0 * voxel_size) ** 2)
    _run_rows(_normal_rows, rows, padded, xyz, valid, normal_window, radius2, normal_max_nn, exact, passes, camera,
              normals)  # fmt: skip
    half = window // 2
    padded = _padded(xyz, valid, normals, half)
    spfh = np.zeros((batch, 3 * _NUM_BINS, height + 2 * half, width + 2 * half), np.float32)
    counts = np.empty((batch, height, width), np.float32)
    threshold = np.empty((batch, height, width), np.float32)
    radius2 = _F32((5.0 * voxel_size) ** 2)
    bits = max(1, (window * window - 1).bit_length())  # histogram fields hold up to window**2 - 1 neighbours
    _run_rows(_spfh_rows, rows, padded, xyz, valid, window, radius2, max_nn, exact, passes, spfh, counts, threshold,
              bits)  # fmt: skip
    _run_rows(_fpfh_rows, rows, padded, xyz, valid, spfh, counts, threshold, window, radius2, out)


def fpfh_numba(
    xyz: torch.Tensor,
    voxel_size: float,
    *,
    window: int,
    normal_window: int,
    max_nn: int,
    normal_max_nn: int,
    normal_orientation: str,
    selection: str,
    passes: int,
) -> torch.Tensor:
    """FPFH of float32 CPU clouds ``(B, 3, H, W)`` with the fused kernels.

    Called by :func:`anomalib_btm.features.fpfh_torch.fpfh_torch`, which owns the defaults and validates the options.

    Args:
        xyz: Organized clouds, float32 on the CPU, metres, missing points exactly ``(0, 0, 0)``.
        voxel_size: Radius scale: normals within ``2 * voxel_size``, FPFH within ``5 * voxel_size``.
        window: Odd pixel window of the FPFH neighbour search.
        normal_window: Odd pixel window of the normal neighbour search.
        max_nn: FPFH neighbourhood size including the point itself.
        normal_max_nn: Normal neighbourhood size including the point itself.
        normal_orientation: ``"camera"`` or ``"open3d"``.
        selection: ``"fast"`` or ``"exact"``.
        passes: Correction passes of the fast selection.

    Returns:
        FPFH ``(B, 33, H, W)`` float32.
    """
    # NumPy glue only: a torch operation between the kernels would leave torch's OpenMP threads spinning on the
    # cores the kernels run on. Clouds run one after the other (rows in parallel), so a cloud's buffers stay in the
    # CPU caches.
    clouds = np.ascontiguousarray(xyz.detach().cpu().numpy())
    fpfh = np.empty((clouds.shape[0], 3 * _NUM_BINS, *clouds.shape[2:]), np.float32)
    for index in range(clouds.shape[0]):
        _fpfh_cloud(clouds[index : index + 1], fpfh[index : index + 1], voxel_size, window, normal_window, max_nn,
                    normal_max_nn, normal_orientation == "camera", selection == "exact", passes)  # fmt: skip
    return torch.from_numpy(fpfh)
