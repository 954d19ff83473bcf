# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""FPFH over true k-nearest neighbours (Open3D's neighbourhoods), fused CPU kernels and a torch twin.

Open3D searches ``KDTreeSearchParamHybrid(radius, max_nn)``: the ``max_nn`` nearest valid points in 3D (the point
itself included) within ``radius``. A fixed pixel window of the organized grid is not that neighbourhood on steep
slopes, next to silhouettes and depth steps, or on clouds resized from non-square sensors. This module finds the
real one:

* :func:`knn_search` (CPU, Numba): a uniform voxel grid over the valid points (counting sort, points stored cell by
  cell), queries processed cell by cell. The points within a reach of the box around a cell's queries are copied
  once into contiguous candidate arrays; each query of the cell computes its distances to all of them (one
  vectorised loop), keeps the ``k`` nearest within the radius, and is done when the ``k``-th distance is within
  the reach (nothing outside can be nearer) or the reach covers the radius; else its cell is gathered again with a
  larger reach. The result is exact (ties at the ``k``-th distance are broken by storage order). The reach starts
  from the previous cell's largest ``k``-th distance and the cell size follows the point spacing of the organized
  grid: they affect speed only, never the result.
* :func:`fpfh_knn_numba`: normals (Open3D's ``EstimateNormals`` neighbourhood: the ``normal_max_nn`` nearest within
  ``2 * voxel_size``, selected among the FPFH neighbours in the same pass), SPFH and the ``1/d²``-weighted FPFH sum
  over the neighbour lists, rows of queries on ``torch.get_num_threads()`` threads in small chunks, with the
  pair-feature arithmetic, eigen solver and histogram bins of :mod:`anomalib_btm.features.fpfh_numba` (``atan2`` with
  one division instead of two; the eigen solver vectorised across points). Three inner loops are LLVM IR
  (Numba intrinsics) because Numba's loops do not vectorise them: the compaction of the selected candidates
  (:func:`_compact_neighbours`), the SPFH's gather of the neighbours' points and normals (:func:`_gather_columns`) and
  the FPFH's weighted sum of their SPFH rows, whose 33 channels stay in vector registers (:func:`_weighted_rows`).
  ``benchmarks/fpfh.py`` times it against Open3D.
* :func:`fpfh_knn_torch`: the same definition in torch with a chunked brute-force search (``cdist`` + ``topk``),
  for CUDA tensors, float64 input and as an independent reference in the tests. Its shapes depend on the number of
  valid points, so it does not export: exported graphs use the pixel window (see ``fpfh_torch``).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from anomalib_btm.features.fpfh_math import _pair_feature_bins, smallest_eigenvector
from anomalib_btm.features.fpfh_numba import (
    _ANGLE_SCALE,
    _F32,
    _FLAGS,
    _HUNDRED,
    _JIT,
    _NUM_BINS,
    _ONE,
    _PI,
    _UNIT_SCALE,
    _ZERO,
    _covariance,
    _pool,
    _safe_div,
    _smallest_eigenvectors,
)

__all__ = ["fpfh_knn_numba", "fpfh_knn_torch", "knn_search", "knn_search_torch"]

_TAN_PI_8 = _F32(math.tan(math.pi / 8))
"""Above this ratio of its arguments ``atan2`` reduces them (Cephes' ``atanf``)."""
_JIT_SUMS = {**_JIT, "fastmath": _FLAGS | {"reassoc"}}
"""Float32 sums that LLVM may reorder, so that it vectorises them (the covariance of the normals)."""

_CELL_FACTOR = 0.5
"""Grid cell edge relative to the estimated ``k``-th neighbour distance on a frontal surface (speed only)."""
_MAX_CELLS_PER_POINT = 4
"""Cap of the grid's cell count relative to the number of points (coarser cells beyond it)."""
_GROWTH = 1.5
"""Growth of a cell's reach when some of its queries' ``k``-th distances lie beyond it."""
_REACH_MARGIN = 1.1
"""A cell's queries are first gathered within this factor of the previous cell's largest ``k``-th distance."""
_GAP = 16
"""Grid columns at most this many storage positions apart are gathered as one run (the points in between too: one
long vectorised copy is cheaper than many short ones)."""
_SELECT_PASSES = 8
"""Counting passes of the k-th distance selection before the remaining bracket is selected exactly (ties)."""
_SELECT_SMALL = 1
"""A bracket of at most this many values is selected exactly. At 1 the passes aim at a threshold that holds exactly
``k`` values, which is all that the neighbour lists and the normal's covariance need (no selection, a cheaper
compaction); a quickselect remains for ties and passes that run out."""
_CHUNKS_PER_THREAD = 16
"""Row chunks per thread of each phase, taken in turn by the threads that are free (see :func:`_run_chunks`)."""
_POOLED_CHUNKS = 32
"""Chunks of the pooled FPFH phase, whatever the number of threads (see :func:`_pooled_fpfh`)."""
_LANES = 8
"""Float32 lanes of the vectors of the LLVM IR kernels (AVX2; LLVM splits them on narrower targets)."""
_TABLE_WIDTH = 5 * _LANES
"""Columns of the SPFH table: the 33 bins padded to whole vectors (the padding is zero and never read back)."""
_OUT_BLOCK = 256
"""Points whose FPFH are staged point by point before they are written to the output planes channel by channel."""


def _chunk_bounds(rows: int, chunks: int | None = None, multiple: int = 1) -> list[int]:
    """Row bounds of ``chunks`` near-equal chunks of ``rows`` (at most ``rows`` of them).

    ``None``: the chunks :func:`_run_chunks` splits ``rows`` into by default, :data:`_CHUNKS_PER_THREAD` per thread.
    ``multiple``: every bound but the last is a multiple of it (at most ``chunks`` chunks, fewer for few rows).
    """
    if chunks is None:
        threads = max(1, torch.get_num_threads())
        chunks = 1 if threads == 1 else _CHUNKS_PER_THREAD * threads
    chunks = max(1, min(rows, chunks))
    if multiple == 1:
        return [rows * index // chunks for index in range(chunks + 1)]
    step = multiple * max(1, -(-rows // (chunks * multiple)))
    return [*range(0, rows, step), rows] if rows > 0 else [0, 0]


def _run_chunks(kernel: Callable[..., None], rows: int, *args: object, bounds: list[int] | None = None) -> None:
    """Run ``kernel(start, stop, *args)`` over ``rows`` on ``torch.get_num_threads()`` threads, in small chunks.

    Each phase ends with its slowest thread. On an idle machine chunks of equal rows cost about alike; where other
    processes take a core part of the time, threads do not run alike, and :data:`_CHUNKS_PER_THREAD` chunks per
    thread, taken in turn from the pool's queue, leave the others at most a small chunk to wait for at the end.
    ``bounds`` fixes the chunks instead (one after the other on one thread).
    """
    bounds = _chunk_bounds(rows) if bounds is None else bounds
    threads = max(1, torch.get_num_threads())
    if len(bounds) == 2 or threads == 1:
        for first, stop in itertools.pairwise(bounds):
            kernel(first, stop, *args)
        return
    pool = _pool(threads)
    chunks = len(bounds) - 1
    futures = [pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(chunks)]
    for future in futures:
        future.result()


# --------------------------------------------------------------------------------------------------------------------
# Exact k-nearest-neighbour search on a voxel grid
# --------------------------------------------------------------------------------------------------------------------


@njit(**_JIT)
def _cell_of(value: float, origin: float, inv_cell: float, size: int) -> int:
    """Grid coordinate of ``value`` clamped to ``[0, size - 1]``."""
    index = math.floor((value - origin) * inv_cell)
    return min(max(index, 0), size - 1)


@njit(**_JIT)
def _build_grid(
    points: np.ndarray, origin: np.ndarray, cell: float, dims: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counting sort of ``points`` ``(N, 3)`` by grid cell (cells along z adjacent in memory).

    Returns:
        ``start`` ``(cells + 1,)`` (first sorted position of each cell), the sorted coordinates ``(3, N)``, the
        point index and the cell of each sorted position.
    """
    n = points.shape[0]
    nx, ny, nz = dims[0], dims[1], dims[2]
    inv = 1.0 / cell
    keys = np.empty(n, np.int64)
    start = np.zeros(nx * ny * nz + 1, np.int64)
    for i in range(n):
        ix = _cell_of(points[i, 0], origin[0], inv, nx)
        iy = _cell_of(points[i, 1], origin[1], inv, ny)
        iz = _cell_of(points[i, 2], origin[2], inv, nz)
        key = (ix * ny + iy) * nz + iz
        keys[i] = key
        start[key + 1] += 1
    for c in range(nx * ny * nz):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    sorted_xyz = np.empty((3, n), points.dtype)
    sorted_index = np.empty(n, np.int32)
    sorted_cell = np.empty(n, np.int64)
    for i in range(n):
        s = fill[keys[i]]
        fill[keys[i]] += 1
        sorted_index[s] = i
        sorted_cell[s] = keys[i]
        for a in range(3):
            sorted_xyz[a, s] = points[i, a]
    return start, sorted_xyz, sorted_index, sorted_cell


@njit(**_JIT)
def _kth_smallest(values: np.ndarray, count: int, k: int) -> float:
    """The ``k``-th smallest (1-based) of ``values[:count]``, which are reordered (Hoare quickselect)."""
    lo, hi, target = 0, count - 1, k - 1
    while lo < hi:
        a, b, c = values[lo], values[(lo + hi) // 2], values[hi]
        pivot = max(min(a, b), min(max(a, b), c))  # median of three
        i, j = lo, hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return values[target]


@njit(**_JIT)
def _float32_at_most(threshold: float) -> np.float32:
    """The largest float32 at most ``threshold``: a float32 is at most either or neither (and above either or neither).

    Comparing float32 values with a float64 threshold converts every value to float64, four lanes at a time instead
    of eight (the counting passes of the search ran at half speed, seen in a cycle profile); comparing with this
    float32 gives the same answers. The thresholds of :func:`_bracket` are float32 values already, which this returns
    without the call to ``nextafter``.
    """
    value = _F32(threshold)
    return value if value <= threshold else np.nextafter(value, _F32(-np.inf))


@njit(**_JIT)
def _float32_at_least(threshold: float) -> np.float32:
    """The smallest float32 at least ``threshold``: a float32 is below either or neither (:func:`_float32_at_most`)."""
    value = _F32(threshold)
    return value if value >= threshold else np.nextafter(value, _F32(np.inf))


@njit(**_JIT)
def _count_at_most(values: np.ndarray, m: int, threshold: float) -> int:
    """How many of the float32 ``values[:m]`` are at most ``threshold`` (vectorised, float32 compares)."""
    bound = _float32_at_most(threshold)
    count = np.int32(0)  # int32 lanes: eight per vector, like the float32 values (Numba widens int32 sums)
    for i in range(m):
        count = np.int32(count + (np.int32(1) if values[i] <= bound else np.int32(0)))
    return count


@njit(**_JIT)
def _bracket(
    values: np.ndarray, m: int, k: int, limit: float, guess: float, small: int
) -> tuple[float, int, float, int, int]:
    """A bracket ``(low, high]`` around the ``take``-th smallest of ``values[:m]`` among those at most ``limit``.

    ``take = min(k, admissible)``. Counting passes (vectorised) narrow the bracket until ``high`` counts exactly
    ``take`` values (a threshold between the ``take``-th value and the next), the bracket holds at most ``small``
    values or the passes run out (ties). The first threshold is ``guess`` (the previous query's); the next ones aim
    between the ``take``-th and the next value, scaled by the ranks while the bracket is open below or above (the
    count of a surface grows linearly with the squared distance), interpolated between its counted ends after.

    The thresholds are float32 values (``limit`` must be one), so that the counts compare float32 with float32
    (:func:`_count_at_most`) and ``low`` and ``high`` are float32 values too.

    Returns:
        ``low``, the count at most ``low``, ``high``, the count at most ``high`` and ``take``.
    """
    take = k  # until the count at the limit is known
    low, count_low = -1.0, 0
    high, count_high = limit, -1
    threshold = float(_F32(guess)) if 0.0 < guess < limit else limit
    aim = k + 0.5
    for _ in range(_SELECT_PASSES):
        count = _count_at_most(values, m, threshold)
        if threshold >= limit:
            take = min(k, count)
            aim = take + 0.5
        if count >= take:
            high, count_high = threshold, count
        else:
            low, count_low = threshold, count
        if count_high == take or (count_high >= 0 and count_high - count_low <= small):
            break
        if low >= 0.0 and count_high >= 0:
            threshold = float(_F32(low + (high - low) * (aim - count_low) / (count_high - count_low)))
        else:
            threshold = float(_F32(min(threshold * aim / max(count, 1), limit)))
        if not (low < threshold < high or threshold == limit == high):
            threshold = float(_F32(0.5 * (max(low, 0.0) + high)))
    if count_high < 0:  # the passes stopped below the k-th value: the count at the limit sets take
        count_high = _count_at_most(values, m, limit)
        take = min(k, count_high)
    return low, count_low, high, count_high, take


@njit(**_JIT)
def _kth_distance(
    values: np.ndarray, m: int, k: int, limit: float, guess: float, scratch: np.ndarray
) -> tuple[float, int]:
    """A threshold that the ``take`` smallest of ``values[:m]`` at most ``limit`` are at most, and ``take``.

    ``take = min(k, admissible)``. The threshold is the top of the :func:`_bracket` when it holds exactly ``take``
    values (nothing else is at most it), else (ties) the ``take``-th smallest value, selected exactly among the few
    left in the bracket.

    Returns:
        The threshold (``0`` when nothing is admissible) and ``take``.
    """
    low, count_low, high, count_high, take = _bracket(values, m, k, limit, guess, _SELECT_SMALL)
    if take == 0:
        return 0.0, 0
    if count_high == take:
        return high, take
    low32, high32 = _float32_at_most(low), _float32_at_most(high)
    size = 0
    for i in range(m):  # branch-free compaction
        value = values[i]
        scratch[size] = value
        size += 1 if low32 < value <= high32 else 0
    return _kth_smallest(scratch, size, take - count_low), take


def _left_packed_lanes() -> np.ndarray:
    """For each 8-bit mask, the numbers of its set lanes in ascending order, left-packed ``(256, 8)``."""
    lanes = np.zeros((256, _LANES), np.int32)
    for mask in range(256):
        kept = [lane for lane in range(_LANES) if mask >> lane & 1]
        lanes[mask, : len(kept)] = kept
    return lanes


_PACKED_LANES = _left_packed_lanes()
"""Lookup table of :func:`_compact_neighbours`."""


_AVX2_PERMUTE: bool | None = None
"""Permute with AVX2's instructions (:func:`_permute`): ``None`` where the compile target has AVX2 (tests set it)."""


def _permute(builder: ir.IRBuilder, vector: ir.Value, lanes: ir.Value, avx2: bool) -> ir.Value:
    """``vector`` with its lanes taken in the order ``lanes`` (an 8 × i32 vector of lane numbers).

    AVX2's ``vpermd`` / ``vpermps`` where the target has it; else eight extracts and inserts (any target).
    """
    i32 = ir.IntType(32)
    if avx2:
        name = "llvm.x86.avx2.permps" if isinstance(vector.type.element, ir.FloatType) else "llvm.x86.avx2.permd"
        function = builder.module.declare_intrinsic(name, fnty=ir.FunctionType(vector.type, [vector.type, lanes.type]))
        return builder.call(function, [vector, lanes])
    result = ir.Constant(vector.type, ir.Undefined)
    for lane in range(_LANES):
        source = builder.extract_element(lanes, ir.Constant(i32, lane))
        result = builder.insert_element(result, builder.extract_element(vector, source), ir.Constant(i32, lane))
    return result


@intrinsic
def _compact_neighbours(
    typingctx: object,
    values: types.Array,
    m: types.Integer,
    threshold: types.Float,
    lanes: types.Array,
    candidate_index: types.Array,
    candidates: types.Array,
    query: types.UniTuple,
    out_index: types.Array,
    out_offsets: types.Array,
) -> tuple[object, Callable[..., object]]:
    """Compact the candidates ``i < m`` with ``values[i] <= threshold``, in ascending order; their count.

    Writes their indices (``candidate_index[i]``) to ``out_index``, their values back to ``values`` from position 0
    on (``values[:count]``: a block is loaded before anything is stored over it) and their offsets from ``query``
    (``candidates[c, i] - query[c]``) to rows 0-2 of ``out_offsets``. Eight candidates at a time: their comparison
    is an 8-bit mask, whose left-packed lane numbers (``lanes``, :data:`_PACKED_LANES`) permute the eight values of
    each array (AVX2's ``vpermps``), stored at once; the count advances by the mask's population count, and a block
    with nothing kept stores nothing. The neighbour lists were first written one value at a time from the selected
    positions: five scalar stores per neighbour, a quarter of the search (seen in a cycle profile).

    ``values``, ``candidates`` and ``query`` float32, ``candidate_index`` int32 or uint32, all read up to ``m``
    rounded up to 8 (``values`` must not be at most ``threshold`` from ``m`` on: NaN); ``out_index`` (int32 or
    uint32) and the rows of ``out_offsets`` are written up to the count plus 8.
    """
    signature = types.intp(values, m, threshold, lanes, candidate_index, candidates, query, out_index, out_offsets)

    def codegen(context: object, builder: ir.IRBuilder, sig: object, args: tuple[object, ...]) -> object:
        values_value, m_value, threshold_value, lanes_value, index_value, candidates_value, query_value = args[:7]
        out_index_value, out_offsets_value = args[7:]
        avx2 = _AVX2_PERMUTE
        if avx2 is None:
            avx2 = "+avx2" in getattr(context.codegen(), "_tm_features", "")
        source = context.make_array(sig.args[0])(context, builder, values_value)
        table = context.make_array(sig.args[3])(context, builder, lanes_value)
        index_array = context.make_array(sig.args[4])(context, builder, index_value)
        points = context.make_array(sig.args[5])(context, builder, candidates_value)
        index_target = context.make_array(sig.args[7])(context, builder, out_index_value)
        offsets_target = context.make_array(sig.args[8])(context, builder, out_offsets_value)
        i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
        floats = ir.VectorType(f32, _LANES)
        ints = ir.VectorType(i32, _LANES)
        splat = ir.Constant(ints, [0] * _LANES)

        def broadcast(value: ir.Value, vector: ir.VectorType) -> ir.Value:
            lane = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(lane, ir.Constant(vector, ir.Undefined), splat)

        def vector_at(base: ir.Value, element: ir.Value, vector: ir.VectorType) -> ir.Value:
            return builder.bitcast(builder.gep(base, [element]), vector.as_pointer())

        count64 = builder.sext(m_value, i64) if m_value.type.width < 64 else m_value
        limits = broadcast(threshold_value, floats)
        query_lanes = []
        for c in range(3):
            value = builder.extract_value(query_value, c)
            value = builder.fptrunc(value, f32) if value.type != f32 else value
            query_lanes.append(broadcast(value, floats))
        popcount = builder.module.declare_intrinsic("llvm.ctpop", [i8])
        data = builder.bitcast(source.data, f32.as_pointer())
        packed_base = builder.bitcast(table.data, i32.as_pointer())
        index_in = builder.bitcast(index_array.data, i32.as_pointer())
        index_out = builder.bitcast(index_target.data, i32.as_pointer())
        points_base = builder.bitcast(points.data, ir.IntType(8).as_pointer())
        points_stride = builder.extract_value(points.strides, 0)
        offsets_base = builder.bitcast(offsets_target.data, ir.IntType(8).as_pointer())
        offsets_stride = builder.extract_value(offsets_target.strides, 0)
        rows_in = [builder.bitcast(builder.gep(points_base, [builder.mul(ir.Constant(i64, c), points_stride)]),
                                   f32.as_pointer()) for c in range(3)]  # fmt: skip
        rows_out = [builder.bitcast(builder.gep(offsets_base, [builder.mul(ir.Constant(i64, c), offsets_stride)]),
                                    f32.as_pointer()) for c in range(3)]  # fmt: skip
        entry = builder.block
        loop = builder.append_basic_block("compact.loop")
        keep = builder.append_basic_block("compact.keep")
        latch = builder.append_basic_block("compact.latch")
        done = builder.append_basic_block("compact.done")
        builder.cbranch(builder.icmp_signed(">", count64, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        written = builder.phi(i64)
        j.add_incoming(ir.Constant(i64, 0), entry)
        written.add_incoming(ir.Constant(i64, 0), entry)
        block = builder.load(vector_at(data, j, floats), align=4)
        mask = builder.bitcast(builder.fcmp_ordered("<=", block, limits), i8)
        # Blocks with nothing kept skip the stores: the candidates come in runs of grid columns, and the columns in
        # the corners of the gathered box hold none of the nearest, so the branch is mostly predicted.
        builder.cbranch(builder.icmp_unsigned("==", mask, ir.Constant(i8, 0)), latch, keep)
        builder.position_at_end(keep)
        row = builder.mul(builder.zext(mask, i64), ir.Constant(i64, _LANES))
        packed = builder.load(vector_at(packed_base, row, ints), align=4)
        indices = builder.load(vector_at(index_in, j, ints), align=4)
        builder.store(_permute(builder, indices, packed, avx2), vector_at(index_out, written, ints), align=4)
        for c in range(3):
            offset = builder.fsub(builder.load(vector_at(rows_in[c], j, floats), align=4), query_lanes[c])
            builder.store(_permute(builder, offset, packed, avx2), vector_at(rows_out[c], written, floats), align=4)
        # The values last: the block was loaded, and what is stored at written <= j overwrites only values read.
        builder.store(_permute(builder, block, packed, avx2), vector_at(data, written, floats), align=4)
        kept = builder.add(written, builder.zext(builder.call(popcount, [mask]), i64))
        builder.branch(latch)
        builder.position_at_end(latch)
        written_next = builder.phi(i64)
        written_next.add_incoming(written, loop)
        written_next.add_incoming(kept, keep)
        j_next = builder.add(j, ir.Constant(i64, _LANES))
        j.add_incoming(j_next, latch)
        written.add_incoming(written_next, latch)
        builder.cbranch(builder.icmp_signed("<", j_next, count64), loop, done)
        builder.position_at_end(done)
        result = builder.phi(i64)
        result.add_incoming(ir.Constant(i64, 0), entry)
        result.add_incoming(written_next, latch)
        return result

    return signature, codegen


@njit(**_JIT)
def _nearest(
    values: np.ndarray,
    m: int,
    k: int,
    limit: float,
    guess: float,
    scratch: np.ndarray,
    candidate_index: np.ndarray,
    candidates: np.ndarray,
    query: tuple[float, float, float],
    out_index: np.ndarray,
    out_offsets: np.ndarray,
) -> tuple[float, int]:
    """The ``take`` nearest of the candidates ``:m`` (squared distances ``values``) at most ``limit``, in storage order.

    ``take = min(k, admissible)``; ties at the ``take``-th value are broken by storage order. One compaction
    (:func:`_compact_neighbours`; ``values`` is written eight past ``m``) of the candidates up to the top
    of the :func:`_bracket` writes their indices to ``out_index``, their squared distances to ``values[:take]`` and
    their offsets from ``query`` to ``out_offsets``: exactly ``take`` of them as a rule. Else (ties) the
    ``take``-th value is selected among them and the excess dropped.

    Returns:
        A bound at least the ``take``-th value and below every value left out (the top of the bracket, or the
        ``take``-th value itself when there are ties; ``0`` when nothing is admissible) and ``take``.
    """
    low, count_low, high, _, take = _bracket(values, m, k, limit, guess, _SELECT_SMALL)
    if take == 0:
        return 0.0, 0
    high32 = _float32_at_most(high)
    for i in range(m, m + _LANES):
        values[i] = np.nan  # at most no threshold: the last block of eight
    written = _compact_neighbours(values, m, high32, _PACKED_LANES, candidate_index, candidates, query, out_index,
                                  out_offsets)  # fmt: skip
    if written == take:
        return high, take
    low32 = _float32_at_most(low)
    size = 0
    for j in range(written):
        value = values[j]
        scratch[size] = value
        size += 1 if value > low32 else 0
    kth = _kth_smallest(scratch, size, take - count_low)
    ties = take
    for j in range(written):
        ties -= 1 if values[j] < kth else 0
    kept = 0
    for j in range(written):  # keep what is nearer than kth and the first ties at kth (kept <= j: in place)
        value = values[j]
        tie = value == kth and ties > 0
        ties -= 1 if tie else 0
        if value < kth or tie:
            values[kept] = value
            out_index[kept] = out_index[j]
            for c in range(3):
                out_offsets[c, kept] = out_offsets[c, j]
            kept += 1
    return kth, take


@njit(**_JIT)
def _count_below(values: np.ndarray, m: int, threshold: float) -> int:
    """How many of the float32 ``values[:m]`` are below ``threshold`` (vectorised, float32 compares)."""
    bound = _float32_at_least(threshold)
    count = np.int32(0)
    for i in range(m):
        count = np.int32(count + (np.int32(1) if values[i] < bound else np.int32(0)))
    return count


@njit(**_JIT)
def _gather(
    low: np.ndarray,
    high: np.ndarray,
    reach: float,
    sorted_xyz: np.ndarray,
    sorted_index: np.ndarray,
    start: np.ndarray,
    origin: np.ndarray,
    cell: float,
    dims: np.ndarray,
    candidates: np.ndarray,
    candidate_index: np.ndarray,
) -> tuple[int, bool]:
    """Coordinates and point indices of every stored point within ``reach`` of the box ``[low, high]`` (and more).

    The points of a grid column between the lowest and highest z cell in reach are contiguous in storage, and the
    columns are visited in storage order: columns at most :data:`_GAP` positions apart are copied as one run (the
    points between them too). Columns farther than ``reach`` from the box (in x and y) are skipped. The copies go
    to ``candidates`` ``(3, N)`` and ``candidate_index`` in storage order.

    Returns:
        The number of candidates and whether the box grown by ``reach`` covers the whole grid.
    """
    inv = 1.0 / cell
    nx, ny, nz = dims[0], dims[1], dims[2]
    x0, x1 = _cell_of(low[0] - reach, origin[0], inv, nx), _cell_of(high[0] + reach, origin[0], inv, nx)
    y0, y1 = _cell_of(low[1] - reach, origin[1], inv, ny), _cell_of(high[1] + reach, origin[1], inv, ny)
    z0, z1 = _cell_of(low[2] - reach, origin[2], inv, nz), _cell_of(high[2] + reach, origin[2], inv, nz)
    whole = True
    for a in range(3):
        whole = whole and low[a] - reach <= origin[a] and high[a] + reach >= origin[a] + dims[a] * cell
    # A column is skipped only when it is clearly out of reach (a margin for the rounding of the cell coordinates).
    skip2 = reach * reach * (1.0 + 1e-6) + 1e-30
    m = 0
    run_first = run_stop = 0  # the current run of storage positions
    for ix in range(x0, x1 + 1):
        low_x = origin[0] + ix * cell
        gx = max(low_x - high[0], low[0] - (low_x + cell), 0.0)
        for iy in range(y0, y1 + 1):
            low_y = origin[1] + iy * cell
            gy = max(low_y - high[1], low[1] - (low_y + cell), 0.0)
            if gx * gx + gy * gy > skip2:
                continue
            base = (ix * ny + iy) * nz
            first, stop = start[base + z0], start[base + z1 + 1]
            if first - run_stop > _GAP:
                m = _copy_run(sorted_xyz, sorted_index, run_first, run_stop, candidates, candidate_index, m)
                run_first = first
            run_stop = stop
    m = _copy_run(sorted_xyz, sorted_index, run_first, run_stop, candidates, candidate_index, m)
    return m, whole


@njit(**_JIT)
def _copy_run(
    sorted_xyz: np.ndarray,
    sorted_index: np.ndarray,
    first: int,
    stop: int,
    candidates: np.ndarray,
    candidate_index: np.ndarray,
    m: int,
) -> int:
    """Append storage positions ``first:stop`` to the candidates at ``m``; the new count."""
    count = max(stop - first, 0)
    # Slices and indices from 0: LLVM then knows no index is negative and vectorises (indexing with
    # ``range(first, stop)`` keeps Numba's negative-index wraparound, which turns every load into a gather).
    for a in range(3):
        source, target = sorted_xyz[a, first:stop], candidates[a, m : m + count]
        for t in range(count):
            target[t] = source[t]
    source_index, target_index = sorted_index[first:stop], candidate_index[m : m + count]
    for t in range(count):
        target_index[t] = source_index[t]
    return m + count


@njit(**_JIT)
def _squared_distances(qx: float, qy: float, qz: float, candidates: np.ndarray, m: int, squared: np.ndarray) -> None:
    """Squared distances of the first ``m`` candidates to the query (vectorised)."""
    cx, cy, cz = candidates[0, :m], candidates[1, :m], candidates[2, :m]
    out = squared[:m]
    for t in range(m):
        dx, dy, dz = cx[t] - qx, cy[t] - qy, cz[t] - qz
        out[t] = dx * dx + dy * dy + dz * dz


@njit(**_JIT)
def _knn_rows(
    first: int,
    last: int,
    sorted_xyz: np.ndarray,
    sorted_index: np.ndarray,
    sorted_cell: np.ndarray,
    start: np.ndarray,
    origin: np.ndarray,
    cell: float,
    dims: np.ndarray,
    k: int,
    radius2: float,
    normal_k: int,
    normal_radius2: float,
    neighbours: np.ndarray,
    distances: np.ndarray,
    counts: np.ndarray,
    covariances: np.ndarray,
) -> None:
    """Exact ``k`` nearest within the radius of the points at storage positions ``first:last``; normals' covariances.

    The covariances of the normals' neighbourhoods go to ``covariances`` ``(6, N)`` by storage position (solved by
    :func:`_normals`).

    Queries are processed cell by cell. The points within a reach of the box around a cell's queries are gathered
    once (:func:`_gather`); for each query, the ``k`` nearest of them are the ``k`` nearest of the cloud when the
    ``k``-th lies within the reach (everything nearer was gathered), when the reach covers the search radius or the
    whole grid. Queries that fail are gathered again with a larger reach. The reach starts from the largest
    ``k``-th distance of the previous cell, so that most cells need one gather. Ties at the ``k``-th distance are
    broken by storage order.

    The normal of each point (Open3D's ``EstimateNormals``: the ``normal_k`` nearest within the normal radius, the
    point itself included, at least 3 of them) comes from the same candidates (``normal_k <= k`` and
    ``normal_radius2 <= radius2``: they are among the ``k`` nearest). Only their covariances are computed here: the
    eigenvectors are solved afterwards for many points at once (:func:`_normals`, vectorised across points, about
    10× faster than one scalar solve per query, which took 11 % of the search).
    """
    n = sorted_index.shape[0]
    dtype = sorted_xyz.dtype
    candidates = np.empty((3, n + _LANES), dtype)  # read in blocks of eight (_compact_neighbours)
    candidate_index = np.empty(n + _LANES, np.int32)
    squared = np.empty(n + _LANES, dtype)
    scratch = np.empty(n, dtype)
    index = np.empty(n + _LANES, np.int32)  # the neighbours of a query (_nearest), written in blocks of eight
    offsets = np.empty((3, n + _LANES), dtype)  # and their offsets from it, for the normal
    pending = np.empty(n, np.int64)
    low = np.empty(3, np.float64)
    high = np.empty(3, np.float64)
    cap = math.sqrt(radius2) * (1.0 + 1e-5) + 1e-30  # a reach beyond it gathers every point within the radius
    # The radii as float32 values (the distances are float32: the same points are within them), see _bracket.
    radius2, normal_radius2 = float(_float32_at_most(radius2)), float(_float32_at_most(normal_radius2))
    guess = 2.0 * cell
    previous_kth = previous_normal_kth = 0.0
    s = first
    while s < last:
        stop = min(start[sorted_cell[s] + 1], last)
        waiting = 0
        for t in range(s, stop):
            pending[waiting] = t
            waiting += 1
        reach = min(guess, cap)
        largest_kth = 0.0
        while waiting > 0:
            for a in range(3):  # the box of the waiting queries (their float32 coordinates)
                low[a], high[a] = np.inf, -np.inf
                for i in range(waiting):
                    low[a] = min(low[a], sorted_xyz[a, pending[i]])
                    high[a] = max(high[a], sorted_xyz[a, pending[i]])
            m, whole = _gather(low, high, reach, sorted_xyz, sorted_index, start, origin, cell, dims, candidates,
                               candidate_index)  # fmt: skip
            # Exact when the k-th distance is within the reach (float32 distances: a relative margin).
            exact2 = reach * reach * (1.0 - 1e-5)
            complete = whole or reach >= cap
            still = 0
            for i in range(waiting):
                t = pending[i]
                qx, qy, qz = sorted_xyz[0, t], sorted_xyz[1, t], sorted_xyz[2, t]
                _squared_distances(qx, qy, qz, candidates, m, squared)
                kth, take = _nearest(squared, m, k, radius2, previous_kth, scratch, candidate_index, candidates,
                                     (qx, qy, qz), index, offsets)  # fmt: skip
                if not (complete or (take == k and kth <= exact2)):
                    pending[still] = t
                    still += 1
                    continue
                q = sorted_index[t]
                previous_normal_kth = _neighbours_and_covariance(
                    q, index, squared, offsets, take, normal_k, normal_radius2, previous_normal_kth, scratch,
                    neighbours, distances, counts, covariances, t
                )  # fmt: skip
                if take == k:
                    previous_kth = kth
                    largest_kth = max(largest_kth, kth)
            waiting = still
            reach = min(reach * _GROWTH, cap)
        if largest_kth > 0.0:
            guess = math.sqrt(largest_kth) * _REACH_MARGIN
        s = stop


@njit(**_JIT)
def _normal_rows(
    first: int,
    last: int,
    covariances: np.ndarray,
    sorted_xyz: np.ndarray,
    sorted_index: np.ndarray,
    camera: bool,
    points_normals: np.ndarray,
) -> None:
    """Normals of the points at storage positions ``first:last`` from their covariances, into ``points_normals``.

    :func:`~anomalib_btm.features.fpfh_numba._smallest_eigenvectors` solves them vectorised; its loop ends with a
    scalar remainder, whose rounding may differ from the vector lanes', so the chunks are fixed and aligned
    (:func:`_normals`), never the threads' chunks.
    """
    normals = np.empty((3, last - first), np.float32)
    _smallest_eigenvectors(np.ascontiguousarray(covariances[:, first:last]), normals)
    for t in range(first, last):
        qx, qy, qz = sorted_xyz[0, t], sorted_xyz[1, t], sorted_xyz[2, t]
        nx, ny, nz = normals[0, t - first], normals[1, t - first], normals[2, t - first]
        if camera and nx * qx + ny * qy + nz * qz > _ZERO:
            nx, ny, nz = -nx, -ny, -nz
        row = points_normals[sorted_index[t]]
        row[0], row[1], row[2], row[3], row[4], row[5] = qx, qy, qz, nx, ny, nz
        row[6] = row[7] = _ZERO


@njit(**_JIT)
def _neighbours_and_covariance(
    q: int,
    index: np.ndarray,
    squared: np.ndarray,
    offsets: np.ndarray,
    take: int,
    normal_k: int,
    normal_radius2: float,
    previous_normal_kth: float,
    scratch: np.ndarray,
    neighbours: np.ndarray,
    distances: np.ndarray,
    counts: np.ndarray,
    covariances: np.ndarray,
    slot: int,
) -> float:
    """Write the neighbour list of ``q`` and its normal's covariance; return the normal's distance threshold.

    The list is ``index[:take]`` with the squared distances ``squared[:take]`` and the offsets ``offsets[:, :take]``
    (:func:`_nearest`, in storage order); the covariance goes to column ``slot`` (the storage position of ``q``) of
    ``covariances`` ``(6, N)``, whose eigenvectors :func:`_normals` solves after the search. The normal's
    neighbourhood, the ``normal_k`` nearest within the normal radius, is selected among the neighbours (the nearest
    ``take`` contain it, :func:`_kth_distance`); its covariance is summed over the neighbours at most that far (ties at
    the normal's ``k``-th distance beyond ``normal_k`` are dropped in storage order, a second pass only when there are).
    The sums run over ``take`` contiguous values in storage order: the same order whatever the candidates gathered
    (their number depends on the reach, which depends on the previous cell of the thread's chunk), so the normals, and
    with them the FPFH, do not depend on the number of threads. The threshold is the next query's first guess.
    """
    row, row_squared = neighbours[q], distances[q]
    for j in range(take):
        row[j] = index[j]
    for j in range(take):
        row_squared[j] = squared[j]
    counts[q] = take
    normal_kth, normal_take = _kth_distance(row_squared, take, normal_k, normal_radius2, previous_normal_kth,
                                            scratch)  # fmt: skip
    moments = _moments(offsets, row_squared, take, normal_kth, take + 1)
    if moments[0] > _F32(normal_take):
        ties = normal_take - _count_below(row_squared, take, normal_kth)
        moments = _moments(offsets, row_squared, take, normal_kth, ties)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = moments
    _covariance(covariances, slot, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9)
    return normal_kth


@njit(**_JIT_SUMS)
def _moments(
    offsets: np.ndarray,
    squared: np.ndarray,
    m: int,
    threshold: float,
    ties: int,
) -> tuple[float, float, float, float, float, float, float, float, float, float]:
    """Count, first and second moments of the first ``m`` offsets ``(3, >= m)`` with ``squared`` at most ``threshold``.

    Offsets at exactly ``threshold`` count only while ``ties`` last (storage order): with ``ties > m`` the loop is
    branch-free and vectorised (reassociated float32 sums), else it keeps a running count of ties.
    """
    cx, cy, cz, cs = offsets[0, :m], offsets[1, :m], offsets[2, :m], squared[:m]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = _ZERO
    at_most = _float32_at_most(threshold)  # float32 compares (the squared distances are float32)
    if ties > m:
        for t in range(m):
            keep = _ONE if cs[t] <= at_most else _ZERO
            dx, dy, dz = cx[t], cy[t], cz[t]
            s0 += keep
            s1 += keep * dx
            s2 += keep * dy
            s3 += keep * dz
            s4 += keep * dx * dx
            s5 += keep * dx * dy
            s6 += keep * dx * dz
            s7 += keep * dy * dy
            s8 += keep * dy * dz
            s9 += keep * dz * dz
        return s0, s1, s2, s3, s4, s5, s6, s7, s8, s9
    exact = at_most == threshold  # no float32 equals a threshold that is not one
    below = _float32_at_least(threshold)
    for t in range(m):
        tie = exact and cs[t] == at_most and ties > 0
        ties -= 1 if tie else 0
        keep = _ONE if (cs[t] < below or tie) else _ZERO
        dx, dy, dz = cx[t], cy[t], cz[t]
        s0 += keep
        s1 += keep * dx
        s2 += keep * dy
        s3 += keep * dz
        s4 += keep * dx * dx
        s5 += keep * dx * dy
        s6 += keep * dx * dz
        s7 += keep * dy * dy
        s8 += keep * dy * dz
        s9 += keep * dz * dz
    return s0, s1, s2, s3, s4, s5, s6, s7, s8, s9


@njit(**_JIT)
def _add_step(x: np.ndarray, y: np.ndarray, z: np.ndarray, i: int, offset: int, steps: np.ndarray, count: int) -> int:
    """Append the distance from point ``i`` to point ``i + offset`` to ``steps`` when both are valid; the count."""
    o = i + offset
    if x[i] != 0 and y[i] != 0 and z[i] != 0 and x[o] != 0 and y[o] != 0 and z[o] != 0:
        dx, dy, dz = x[o] - x[i], y[o] - y[i], z[o] - z[i]
        steps[count] = math.sqrt(dx * dx + dy * dy + dz * dz)
        return count + 1
    return count


@njit(**_JIT)
def _valid_points(cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Valid points of an organized cloud ``(3, H, W)``, their bounds and the median spacing of adjacent pixels.

    Returns:
        The flat pixel index of each valid point ``(N,)``, the points ``(N, 3)``, their bounds ``(2, 3)`` (lowest,
        highest) and the median distance between valid neighbours in every 8th row and column (``-1`` if none).
    """
    _, height, width = cloud.shape
    x, y, z = cloud[0].ravel(), cloud[1].ravel(), cloud[2].ravel()
    n = 0
    for i in range(height * width):
        n += 1 if (x[i] != 0 and y[i] != 0 and z[i] != 0) else 0
    pixel = np.empty(n, np.int64)
    points = np.empty((n, 3), cloud.dtype)
    bounds = np.empty((2, 3), cloud.dtype)
    bounds[0], bounds[1] = np.inf, -np.inf
    j = 0
    for i in range(height * width):
        if x[i] != 0 and y[i] != 0 and z[i] != 0:
            pixel[j] = i
            points[j, 0], points[j, 1], points[j, 2] = x[i], y[i], z[i]
            for a in range(3):
                bounds[0, a] = min(bounds[0, a], points[j, a])
                bounds[1, a] = max(bounds[1, a], points[j, a])
            j += 1
    steps = np.empty((height // 8 + 1) * width + (width // 8 + 1) * height, np.float32)
    count = 0
    for row in range(0, height, 8):  # right neighbours in every 8th row
        for column in range(width - 1):
            count = _add_step(x, y, z, row * width + column, 1, steps, count)
    for column in range(0, width, 8):  # lower neighbours in every 8th column
        for row in range(height - 1):
            count = _add_step(x, y, z, row * width + column, width, steps, count)
    spacing = float(np.median(steps[:count])) if count > 0 else -1.0
    return pixel, points, bounds, spacing


def _cell_size(bounds: np.ndarray, spacing: float, n: int, k: int) -> float:
    """Grid cell edge from the median pixel spacing (speed only, see :func:`_valid_points`)."""
    extent = (bounds[1] - bounds[0]).astype(np.float64)
    if spacing <= 0:  # no adjacent valid pixels: assume the points fill a square
        spacing = float(max(extent.max(), 1e-12)) / math.sqrt(n)
    cell = max(_CELL_FACTOR * spacing * math.sqrt(k / math.pi), 1e-9)
    # Coarser cells where the grid would be much larger than the cloud (sparse points spread over a large volume).
    while np.prod(np.floor(extent / cell) + 1) > _MAX_CELLS_PER_POINT * n + 27:
        cell *= 1.5
    return cell


_BUFFERS = threading.local()
"""Large work arrays of the last call, per calling thread (see :func:`_reused`)."""


def _reused(shape: tuple[int, ...], dtype: type, name: str | None) -> np.ndarray:
    """An uninitialised array of ``shape`` in this thread's buffer ``name`` (a new array if ``None``).

    The buffer is reallocated only when it grows. The neighbour lists of a 224² cloud take 40 MB: fresh pages cost
    the kernels about as much time (page faults, zeroing by the OS) as writing them, so :func:`fpfh_knn_numba` keeps
    them from call to call (per thread).
    """
    if name is None:
        return np.empty(shape, dtype)
    size = math.prod(shape)
    held = getattr(_BUFFERS, name, None)
    if held is None or held.dtype != dtype or held.size < size:
        held = np.empty(size, dtype)
        setattr(_BUFFERS, name, held)
    return held[:size].reshape(shape)


def _search(
    points: np.ndarray,
    bounds: np.ndarray,
    spacing: float,
    k: int,
    radius: float,
    normal_k: int,
    normal_radius: float,
    camera: bool,
    reuse: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour lists ``(N, k)`` (indices, squared distances, counts) and points with normals ``(N, 8)``.

    ``points_normals`` holds each point in columns 0-2 and its normal in columns 3-5 (columns 6-7 are zero). With
    ``reuse`` the arrays but ``counts`` are this thread's buffers (:func:`_reused`), valid until its next call.
    """
    n = points.shape[0]
    cell = _cell_size(bounds, spacing, n, k)
    origin = bounds[0].astype(np.float64)
    dims = (np.floor((bounds[1] - origin) / cell) + 1).astype(np.int64)
    start, sorted_xyz, sorted_index, sorted_cell = _build_grid(points, origin, cell, dims)
    neighbours = _reused((n, k), np.int32, "neighbours" if reuse else None)
    distances = _reused((n, k), np.float32, "distances" if reuse else None)
    counts = np.zeros(n, np.int32)
    covariances = _reused((6, n), np.float32, "covariances" if reuse else None)
    radii2 = (radius * radius, normal_radius * normal_radius)
    _run_chunks(_knn_rows, n, sorted_xyz, sorted_index, sorted_cell, start, origin, cell, dims, k, radii2[0],
                normal_k, radii2[1], neighbours, distances, counts, covariances)  # fmt: skip
    points_normals = _reused((n, 8), np.float32, "points_normals" if reuse else None)
    _normals(covariances, sorted_xyz, sorted_index, camera, points_normals)
    return neighbours, distances, counts, points_normals


_NORMAL_CHUNKS = 8
"""Chunks of the normals' phase, whatever the number of threads (see :func:`_normals`)."""
_NORMAL_ALIGNMENT = 128
"""Chunk bounds of the normals' phase are multiples of this (of any vector loop's step, unrolled: 8 or 16 lanes × 4)."""


def _normals(
    covariances: np.ndarray, sorted_xyz: np.ndarray, sorted_index: np.ndarray, camera: bool, points_normals: np.ndarray
) -> None:
    """Solve the normals (:func:`_normal_rows`) in fixed chunks, their bounds multiples of :data:`_NORMAL_ALIGNMENT`.

    Every point is then solved by the same code (vector lanes, or the last chunk's scalar remainder) on any number
    of threads, so the normals do not depend on it.
    """
    n = sorted_index.shape[0]
    bounds = _chunk_bounds(n, _NORMAL_CHUNKS, _NORMAL_ALIGNMENT)
    _run_chunks(_normal_rows, n, covariances, sorted_xyz, sorted_index, camera, points_normals, bounds=bounds)


def knn_search(organized: np.ndarray, k: int, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact ``k`` nearest valid neighbours (the point itself included) within ``radius`` of every valid point.

    Args:
        organized: Organized cloud ``(H, W, 3)`` float32; missing points are exactly ``(0, 0, 0)``.
        k: Neighbours per point, the point itself included (Open3D's ``max_nn``).
        radius: Search radius (Open3D's hybrid radius).

    Returns:
        ``valid`` ``(H * W,)`` mask of the points, ``neighbours`` ``(N, k)`` indices into the valid points,
        ``distances`` ``(N, k)`` squared distances (unsorted; entries beyond ``counts`` are undefined) and
        ``counts`` ``(N,)``.
    """
    cloud = np.ascontiguousarray(np.asarray(organized, dtype=np.float32).transpose(2, 0, 1))
    pixel, points, bounds, spacing = _valid_points(cloud)
    valid = np.zeros(cloud.shape[1] * cloud.shape[2], bool)
    valid[pixel] = True
    if points.shape[0] == 0:
        return valid, np.empty((0, k), np.int32), np.empty((0, k), np.float32), np.zeros(0, np.int32)
    neighbours, distances, counts, _ = _search(points, bounds, spacing, k, radius, 1, 0.0, False)
    return valid, neighbours, distances, counts


# --------------------------------------------------------------------------------------------------------------------
# SPFH and FPFH over neighbour lists
# --------------------------------------------------------------------------------------------------------------------


@njit(**_JIT)
def _atan2_one_division(y: float, x: float) -> float:
    """:func:`anomalib_btm.features.fpfh_numba._atan2` with one division instead of two (within 1 ulp of it).

    The reduced argument ``(r - 1) / (r + 1)`` of ``r = small / large`` is ``(small - large) / (small + large)``.
    """
    ax, ay = abs(x), abs(y)
    large, small = max(ax, ay), min(ax, ay)
    reduced = small > _TAN_PI_8 * large
    numerator = small - large if reduced else small
    denominator = small + large if reduced else large
    t = numerator / denominator if denominator > _ZERO else _ZERO
    z = t * t
    poly = (_F32(8.05374449538e-2) * z - _F32(1.38776856032e-1)) * z + _F32(1.99777106478e-1)
    angle = (poly * z - _F32(3.33329491539e-1)) * z * t + t
    angle = angle + _F32(math.pi / 4) if reduced else angle
    angle = _F32(math.pi / 2) - angle if ay > ax else angle
    angle = _PI - angle if x < _ZERO else angle
    return -angle if math.copysign(_ONE, y) < _ZERO else angle


@njit(**_JIT)
def _bin_clamped(value: float, low: float, scale: float) -> int:
    """Open3D's bin ``floor((value - low) * scale)`` clamped to ``[0, 10]``: truncation after clamping, the same."""
    return np.int32(min(max((value - low) * scale, _ZERO), _F32(_NUM_BINS - 1)))


_TRANSPOSE_STEPS = (
    ((0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)),  # rows 0/1, 2/3, ... interleaved (unpck{l,h}ps)
    ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),  # pairs of those (shufps)
    ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)),  # 128-bit halves of rows 0-3 and 4-7 (vperm2f128)
)
"""Low and high lane selections of the three rounds of two-vector shuffles of an 8×8 float32 transpose."""


@intrinsic
def _gather_columns(
    typingctx: object,
    table: types.Array,
    index: types.Array,
    count: types.Integer,
    origin: types.UniTuple,
    columns: types.Array,
) -> tuple[object, Callable[..., object]]:
    """``columns[c, j] = table[index[j], c] - origin[c]`` (``origin`` for ``c < 3``, else 0) for ``c < 6``.

    ``j`` runs over ``count`` rounded up to a multiple of 8 (``index`` padded with valid rows, ``columns`` wide
    enough). Eight rows of eight float32 (one vector each) are loaded and transposed in registers: six vector
    stores per eight rows where copying the columns one by one takes six scalar stores per row. ``table`` ``(N, 8)``
    and ``columns`` ``(>= 6, W)`` float32, C order.
    """
    signature = types.void(table, index, count, origin, columns)

    def codegen(context: object, builder: ir.IRBuilder, sig: object, args: tuple[object, ...]) -> object:
        table_value, index_value, count_value, origin_value, columns_value = args
        rows = context.make_array(sig.args[0])(context, builder, table_value)
        indices = context.make_array(sig.args[1])(context, builder, index_value)
        out = context.make_array(sig.args[4])(context, builder, columns_value)
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vector = ir.VectorType(f32, _LANES)
        row_stride = builder.extract_value(rows.strides, 0)
        out_stride = builder.extract_value(out.strides, 0)
        rows_base = builder.bitcast(rows.data, ir.IntType(8).as_pointer())
        out_base = builder.bitcast(out.data, ir.IntType(8).as_pointer())
        count64 = builder.sext(count_value, i64) if count_value.type.width < 64 else count_value
        offsets = []
        for c in range(3):
            value = builder.extract_value(origin_value, c)
            value = builder.fptrunc(value, f32) if value.type != f32 else value
            lane = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(i32, 0))
            offsets.append(builder.shuffle_vector(lane, ir.Constant(vector, ir.Undefined),
                                                  ir.Constant(ir.VectorType(i32, _LANES), [0] * _LANES)))  # fmt: skip
        entry = builder.block
        loop = builder.append_basic_block("gather_columns.loop")
        done = builder.append_basic_block("gather_columns.done")
        builder.cbranch(builder.icmp_signed(">", count64, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        j.add_incoming(ir.Constant(i64, 0), entry)
        block = []
        for lane in range(_LANES):
            row = builder.load(builder.gep(indices.data, [builder.add(j, ir.Constant(i64, lane))]))
            row = builder.zext(row, i64) if row.type.width < 64 else row
            pointer = builder.bitcast(builder.gep(rows_base, [builder.mul(row, row_stride)]), vector.as_pointer())
            block.append(builder.load(pointer, align=4))

        def shuffle(first: ir.Value, second: ir.Value, selection: tuple[int, ...]) -> ir.Value:
            return builder.shuffle_vector(first, second, ir.Constant(ir.VectorType(i32, _LANES), selection))

        (lo1, hi1), (lo2, hi2), (lo3, hi3) = _TRANSPOSE_STEPS
        t = [shuffle(block[2 * (i // 2)], block[2 * (i // 2) + 1], hi1 if i % 2 else lo1) for i in range(_LANES)]
        pairs2 = ((0, 2), (1, 3), (4, 6), (5, 7))
        u = [shuffle(t[pairs2[i // 2][0]], t[pairs2[i // 2][1]], hi2 if i % 2 else lo2) for i in range(_LANES)]
        # columns 0-3 are the low halves of (u0, u4) ... (u3, u7), columns 4-5 the high halves of (u0, u4), (u1, u5)
        columns_out = [shuffle(u[c], u[c + 4], lo3) for c in range(4)] + [
            shuffle(u[c], u[c + 4], hi3) for c in range(2)
        ]
        start = builder.mul(j, ir.Constant(i64, 4))
        for c, value in enumerate(columns_out):
            if c < 3:
                value = builder.fsub(value, offsets[c])
            target = builder.gep(out_base, [builder.add(builder.mul(ir.Constant(i64, c), out_stride), start)])
            builder.store(value, builder.bitcast(target, vector.as_pointer()), align=4)
        j_next = builder.add(j, ir.Constant(i64, _LANES))
        j.add_incoming(j_next, loop)
        builder.cbranch(builder.icmp_signed("<", j_next, count64), loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return signature, codegen


@njit(**_JIT)
def _counted_histograms(b0: np.ndarray, b1: np.ndarray, b2: np.ndarray, m: int, histogram: np.ndarray) -> None:
    """The three 11-bin histograms of the bins ``b0[:m]``, ``b1[:m]``, ``b2[:m]``: one counting pass per bin."""
    for b in range(_NUM_BINS):
        c0 = c1 = c2 = np.int32(0)  # int32 lanes, eight per vector (Numba widens int32 sums: cast back)
        for j in range(m):
            c0 = np.int32(c0 + (np.int32(1) if b0[j] == b else np.int32(0)))
            c1 = np.int32(c1 + (np.int32(1) if b1[j] == b else np.int32(0)))
            c2 = np.int32(c2 + (np.int32(1) if b2[j] == b else np.int32(0)))
        histogram[0, b] = c0
        histogram[1, b] = c1
        histogram[2, b] = c2


@njit(**_JIT)
def _byte_histograms(b0: np.ndarray, b1: np.ndarray, b2: np.ndarray, m: int, histogram: np.ndarray) -> None:
    """:func:`_counted_histograms` in one pass, for ``m < 256``: four bins per int32, one byte each.

    Bin ``b`` adds ``1 << 8 * (b % 4)`` to the word of bins ``4 * (b // 4)`` to ``4 * (b // 4) + 3``: three words
    per histogram, nine in all, summed in int32 vector lanes (a byte never reaches 256: no carry into the next). The
    eleven passes of :func:`_counted_histograms` compared every bin eleven times (a sixth of the SPFH, in a cycle
    profile).
    """
    three, zero, one = np.int32(3), np.int32(0), np.int32(1)
    w00 = w01 = w02 = w10 = w11 = w12 = w20 = w21 = w22 = zero
    for j in range(m):
        v0, v1, v2 = b0[j], b1[j], b2[j]
        i0 = np.int32(one << np.int32((v0 & three) << three))
        i1 = np.int32(one << np.int32((v1 & three) << three))
        i2 = np.int32(one << np.int32((v2 & three) << three))
        g0, g1, g2 = v0 >> 2, v1 >> 2, v2 >> 2
        w00 = np.int32(w00 + (i0 if g0 == 0 else zero))
        w01 = np.int32(w01 + (i0 if g0 == 1 else zero))
        w02 = np.int32(w02 + (i0 if g0 == 2 else zero))
        w10 = np.int32(w10 + (i1 if g1 == 0 else zero))
        w11 = np.int32(w11 + (i1 if g1 == 1 else zero))
        w12 = np.int32(w12 + (i1 if g1 == 2 else zero))
        w20 = np.int32(w20 + (i2 if g2 == 0 else zero))
        w21 = np.int32(w21 + (i2 if g2 == 1 else zero))
        w22 = np.int32(w22 + (i2 if g2 == 2 else zero))
    words = ((w00, w01, w02), (w10, w11, w12), (w20, w21, w22))
    for group in range(3):
        for b in range(_NUM_BINS):
            histogram[group, b] = (words[group][b >> 2] >> ((b & 3) << 3)) & 0xFF


@njit(**_JIT)
def _spfh_rows(
    first: int,
    last: int,
    points_normals: np.ndarray,
    neighbours: np.ndarray,
    counts: np.ndarray,
    spfh: np.ndarray,
) -> None:
    """SPFH (Open3D's ``ComputeSPFHFeature``) of the points ``first:last`` into ``spfh`` ``(N, 40)`` (zero padded).

    ``points_normals`` ``(N, 8)`` holds each point and its normal in one row (one cache line, one vector per
    neighbour): :func:`_gather_columns` copies the neighbours' offsets and normals to columns eight at a time.
    """
    width = neighbours.shape[1]
    gathered = np.empty((6, width + _LANES), np.float32)  # offsets and normals of the neighbours
    gx, gy, gz, hx, hy, hz = gathered[0], gathered[1], gathered[2], gathered[3], gathered[4], gathered[5]
    index = np.empty(width + _LANES, np.uint32)  # unsigned: no negative-index wraparound
    ax = np.empty(width, np.float32)
    ay = np.empty(width, np.float32)
    b0 = np.empty(width, np.int32)
    b1 = np.empty(width, np.int32)
    b2 = np.empty(width, np.int32)
    histogram = np.empty((3, _NUM_BINS), np.int32)
    for q in range(first, last):
        own = points_normals[q]
        px, py, pz, n1x, n1y, n1z = own[0], own[1], own[2], own[3], own[4], own[5]
        row = neighbours[q]
        count = counts[q]
        # int32 throughout (the neighbours' type): eight lanes per vector, where int64 sums and compares take four
        q32, zero = np.int32(q), np.int32(0)
        itself = at = zero
        for j in range(count):
            s = row[j]
            index[j] = s
            itself = np.int32(itself + (np.int32(1) if s == q32 else zero))
            at = np.int32(at + (np.int32(j) if s == q32 else zero))
        for j in range(count, count + _LANES):
            index[j] = q  # valid rows for the last block of eight
        _gather_columns(points_normals, index, count, (px, py, pz), gathered)
        m = count - itself
        if itself:  # the point itself is no pair: the last neighbour takes its place
            for c in range(6):
                gathered[c, at] = gathered[c, m]
        # Pair features and their bins: the arithmetic of fpfh_numba._spfh_rows, written out again on purpose: an
        # njit helper that returns the three features as a tuple stops LLVM vectorising the loop (measured with
        # benchmarks/fpfh.py: both kernel families got markedly slower).
        for j in range(m):
            dx, dy, dz = gx[j], gy[j], gz[j]
            n2x, n2y, n2z = hx[j], hy[j], hz[j]
            s = dx * dx + dy * dy + dz * dz
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
            ay[j] = _ZERO if degenerate else numerator  # atan2(0, 1) = 0: the bin of a degenerate pair
            ax[j] = _ONE if degenerate else c * v_norm
            b1[j] = _bin_clamped(f1, -_ONE, _UNIT_SCALE)
            b2[j] = _bin_clamped(f2, -_ONE, _UNIT_SCALE)
        # The angle in a loop of its own: with its constants in the loop above, LLVM runs out of vector registers
        # and reloads constants in every iteration (measured: the split loop is faster).
        for j in range(m):
            b0[j] = _bin_clamped(_atan2_one_division(ay[j], ax[j]), -_PI, _ANGLE_SCALE)
        if m < 256:
            _byte_histograms(b0, b1, b2, m, histogram)
        else:
            _counted_histograms(b0, b1, b2, m, histogram)
        scale = _safe_div(_HUNDRED, _F32(m))
        for group in range(3):
            for b in range(_NUM_BINS):
                spfh[q, group * _NUM_BINS + b] = _F32(histogram[group, b]) * scale
        for b in range(3 * _NUM_BINS, _TABLE_WIDTH):
            spfh[q, b] = _ZERO


@intrinsic
def _weighted_rows(
    typingctx: object,
    table: types.Array,
    index: types.Array,
    weight: types.Array,
    count: types.Integer,
    total: types.Array,
) -> tuple[object, Callable[..., object]]:
    """``total[:40] = Σ weight[j] * table[index[j], :40]`` over ``j < count``, in vector registers.

    The 40 sums (:data:`_TABLE_WIDTH`) stay in five 8-lane registers while the rows are gathered, two rows per
    iteration into two sets of sums (added at the end). Written as LLVM IR because Numba's loops cannot express it:
    LLVM vectorises a loop over the channels, which loads and stores the sums once per row (or per few rows, behind
    run-time checks that the rows do not overlap the sums, since Numba's arrays carry no ``noalias``).

    ``table`` ``(N, >= 40)`` float32 (C order), ``index`` and ``weight`` 1-D C-ordered with valid entries up to
    ``count`` rounded up to even (pad with a zero weight and any valid row), ``total`` at least 40 float32.
    """
    signature = types.void(table, index, weight, count, total)

    def codegen(context: object, builder: ir.IRBuilder, sig: object, args: tuple[object, ...]) -> object:
        table_value, index_value, weight_value, count_value, total_value = args
        rows = context.make_array(sig.args[0])(context, builder, table_value)
        indices = context.make_array(sig.args[1])(context, builder, index_value)
        weights = context.make_array(sig.args[2])(context, builder, weight_value)
        sums = context.make_array(sig.args[4])(context, builder, total_value)
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vector = ir.VectorType(f32, _LANES)
        vectors = _TABLE_WIDTH // _LANES
        stride = builder.extract_value(rows.strides, 0)
        base = builder.bitcast(rows.data, ir.IntType(8).as_pointer())
        count64 = builder.sext(count_value, i64) if count_value.type.width < 64 else count_value
        zero = ir.Constant(vector, [0.0] * _LANES)
        entry = builder.block
        loop = builder.append_basic_block("weighted_rows.loop")
        done = builder.append_basic_block("weighted_rows.done")
        builder.cbranch(builder.icmp_signed(">", count64, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        j.add_incoming(ir.Constant(i64, 0), entry)
        sums_in = [builder.phi(vector) for _ in range(2 * vectors)]
        sums_out = []
        for u in range(2):
            ju = builder.add(j, ir.Constant(i64, u))
            row = builder.load(builder.gep(indices.data, [ju]))
            row = builder.zext(row, i64) if row.type.width < 64 else row
            w = builder.insert_element(ir.Constant(vector, ir.Undefined), builder.load(builder.gep(weights.data, [ju])),
                                       ir.Constant(i32, 0))  # fmt: skip
            w = builder.shuffle_vector(w, ir.Constant(vector, ir.Undefined), ir.Constant(ir.VectorType(i32, _LANES),
                                                                                         [0] * _LANES))  # fmt: skip
            start = builder.bitcast(builder.gep(base, [builder.mul(row, stride)]), f32.as_pointer())
            for c in range(vectors):
                pointer = builder.bitcast(builder.gep(start, [ir.Constant(i64, c * _LANES)]), vector.as_pointer())
                product = builder.fmul(builder.load(pointer, align=4), w, flags=("contract",))
                sums_out.append(builder.fadd(sums_in[u * vectors + c], product, flags=("contract",)))
        j_next = builder.add(j, ir.Constant(i64, 2))
        j.add_incoming(j_next, loop)
        for phi, value in zip(sums_in, sums_out, strict=True):
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", j_next, count64), loop, done)
        builder.position_at_end(done)
        final = []
        for value in sums_out:
            phi = builder.phi(vector)
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
            final.append(phi)
        target = builder.bitcast(sums.data, f32.as_pointer())
        for c in range(vectors):
            pointer = builder.bitcast(builder.gep(target, [ir.Constant(i64, c * _LANES)]), vector.as_pointer())
            builder.store(builder.fadd(final[c], final[vectors + c]), pointer, align=4)
        return context.get_dummy_value()

    return signature, codegen


@njit(**_JIT)
def _point_fpfh(
    q: int,
    neighbours: np.ndarray,
    distances: np.ndarray,
    counts: np.ndarray,
    spfh: np.ndarray,
    weight: np.ndarray,
    index: np.ndarray,
    total: np.ndarray,
    own: np.ndarray,
) -> bool:
    """FPFH of point ``q`` into ``own[:33]`` (zero without neighbours); whether it has any neighbour.

    ``weight`` and ``index`` (``k + 1``) and ``total`` (:data:`_TABLE_WIDTH`) are the caller's work arrays.
    """
    row, row_squared = neighbours[q], distances[q]
    count = counts[q]
    q32, zero = np.int32(q), np.int32(0)  # int32 compares and sums: eight lanes per vector (see _spfh_rows)
    m = zero
    for j in range(count):
        s = row[j]
        d = row_squared[j]
        m = np.int32(m + (zero if s == q32 else np.int32(1)))
        weight[j] = _ONE / d if (d > _ZERO and s != q32) else _ZERO  # the point itself, coincident points: none
        index[j] = s
    weight[count] = _ZERO  # the pair padding of _weighted_rows
    index[count] = q
    _weighted_rows(spfh, index, weight, count, total)
    for group in range(3):
        group_sum = _ZERO
        for b in range(group * _NUM_BINS, (group + 1) * _NUM_BINS):
            group_sum += total[b]
        scale = _safe_div(_HUNDRED, group_sum)
        for b in range(group * _NUM_BINS, (group + 1) * _NUM_BINS):
            own[b] = total[b] * scale + spfh[q, b] if m > 0 else _ZERO
    return m > 0


@njit(**_JIT)
def _fpfh_rows(
    first: int,
    last: int,
    neighbours: np.ndarray,
    distances: np.ndarray,
    counts: np.ndarray,
    spfh: np.ndarray,
    pixel: np.ndarray,
    out: np.ndarray,
) -> None:
    """FPFH (Open3D's ``ComputeFPFHFeature``): own SPFH plus the ``1/d²``-weighted neighbour SPFHs per group.

    ``spfh`` is the padded table ``(N, 40)`` of :func:`_spfh_rows`; :func:`_weighted_rows` sums the weighted rows.
    Point ``q`` is written to pixel ``pixel[q]`` of the output planes ``out`` ``(33, H * W)``: staged point by point
    for :data:`_OUT_BLOCK` points, then written plane by plane, since the planes of a 224² image lie a multiple of
    4 KiB apart and the 33 values of one point would all compete for the same few L1 cache sets.
    """
    channels = 3 * _NUM_BINS
    width = neighbours.shape[1]
    total = np.empty(_TABLE_WIDTH, np.float32)
    weight = np.empty(width + 1, np.float32)
    index = np.empty(width + 1, np.uint32)  # unsigned: no negative-index wraparound
    staged = np.empty((_OUT_BLOCK, channels), np.float32)
    for block in range(first, last, _OUT_BLOCK):
        stop = min(block + _OUT_BLOCK, last)
        for q in range(block, stop):
            _point_fpfh(q, neighbours, distances, counts, spfh, weight, index, total, staged[q - block])
        for b in range(channels):
            plane = out[b]
            for q in range(block, stop):
                plane[pixel[q]] = staged[q - block, b]


@njit(**_JIT)
def _fpfh_pooled_rows(
    first: int,
    last: int,
    neighbours: np.ndarray,
    distances: np.ndarray,
    counts: np.ndarray,
    spfh: np.ndarray,
    pixel: np.ndarray,
    width: int,
    row_cells: np.ndarray,
    row_weights: np.ndarray,
    column_cells: np.ndarray,
    column_weights: np.ndarray,
    chunk_bounds: np.ndarray,
    band_first: np.ndarray,
    bands: np.ndarray,
) -> None:
    """:func:`_fpfh_rows`, each point's FPFH added straight into the patch cells it is pooled into.

    Point ``q`` at pixel ``(y, x)`` adds ``row_weights[y, a] * column_weights[x, b]`` times its FPFH to cell
    ``(row_cells[y, a], column_cells[x, b])`` for every pair of taps (:func:`_pooling_taps`). The chunk that starts
    at ``first`` (its number found in ``chunk_bounds``) owns ``bands[chunk]`` ``(rows, columns, 33)``: cell rows
    from ``band_first[chunk]`` on, so that chunks running at once never add to the same memory.
    """
    channels = 3 * _NUM_BINS
    chunk = np.searchsorted(chunk_bounds, first)
    band, origin = bands[chunk], band_first[chunk]
    k = neighbours.shape[1]
    total = np.empty(_TABLE_WIDTH, np.float32)
    weight = np.empty(k + 1, np.float32)
    index = np.empty(k + 1, np.uint32)  # unsigned: no negative-index wraparound
    own = np.empty(channels, np.float32)
    for q in range(first, last):
        if not _point_fpfh(q, neighbours, distances, counts, spfh, weight, index, total, own):
            continue  # no neighbour: a zero FPFH adds nothing
        y, x = pixel[q] // width, pixel[q] % width
        for a in range(row_cells.shape[1]):
            row_weight = row_weights[y, a]
            if row_weight == _ZERO:
                continue
            cells = band[row_cells[y, a] - origin]
            for b in range(column_cells.shape[1]):
                w = row_weight * column_weights[x, b]
                if w == _ZERO:
                    continue
                cell = cells[column_cells[x, b]]
                for c in range(channels):
                    cell[c] += w * own[c]


def _pooling_taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero entries of each column of a pooling matrix ``(cells, pixels)``: cells and weights ``(pixels, T)``.

    ``T`` is the largest number of cells a pixel is pooled into; shorter columns are padded with weight 0 (and their
    first cell, which keeps the chunks' bands tight).
    """
    matrix = np.asarray(matrix, np.float64)
    nonzero = matrix != 0
    taps = max(int(nonzero.sum(axis=0).max(initial=0)), 1)
    order = np.argsort(~nonzero, axis=0, kind="stable")[:taps]  # the non-zero rows first, in ascending order
    weights = np.take_along_axis(matrix, order, axis=0).T.astype(np.float32)
    cells = np.where(weights != 0, order.T, order.T[:, :1]).astype(np.int32)
    return np.ascontiguousarray(cells), np.ascontiguousarray(weights)


@functools.lru_cache(maxsize=16)
def _cached_taps(shape: tuple[int, ...], dtype: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_pooling_taps` of the matrix with these bytes (shared between calls: never modified)."""
    return _pooling_taps(np.frombuffer(data, dtype).reshape(shape))


def _taps_of(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_pooling_taps` of a pooling matrix, computed once per matrix (0.4 ms of every call at 224²)."""
    array = np.ascontiguousarray(matrix.detach().cpu().numpy())
    return _cached_taps(array.shape, array.dtype.str, array.tobytes())


def _pooled_fpfh(
    neighbours: np.ndarray,
    distances: np.ndarray,
    counts: np.ndarray,
    spfh: np.ndarray,
    pixel: np.ndarray,
    width: int,
    rows: tuple[np.ndarray, np.ndarray],
    columns: tuple[np.ndarray, np.ndarray],
    out: np.ndarray,
) -> None:
    """Pooled FPFH of one cloud into ``out`` ``(33, h, w)``: chunks add into their own bands, which are then summed."""
    n = counts.shape[0]
    # Chunks of the thread-independent size: each chunk sums its points in order and the bands are added in chunk
    # order, so the float32 sums, and the pooled features, are the same on any number of threads.
    bounds = _chunk_bounds(n, _POOLED_CHUNKS)
    row_cells, row_weights = rows
    first_row = pixel[np.asarray(bounds[:-1])] // width
    last_row = pixel[np.asarray(bounds[1:]) - 1] // width
    band_first = row_cells[first_row].min(axis=1).astype(np.int64)
    band_rows = int((row_cells[last_row].max(axis=1) - band_first).max()) + 1
    bands = np.zeros((len(bounds) - 1, band_rows, out.shape[2], out.shape[0]), np.float32)
    _run_chunks(_fpfh_pooled_rows, n, neighbours, distances, counts, spfh, pixel, width, row_cells, row_weights,
                *columns, np.asarray(bounds, np.int64), band_first, bands, bounds=bounds)  # fmt: skip
    for chunk, first in enumerate(band_first):
        stop = min(first + band_rows, out.shape[1])
        out[:, first:stop] += bands[chunk, : stop - first].transpose(2, 0, 1)


def fpfh_knn_numba(
    xyz: torch.Tensor,
    voxel_size: float,
    *,
    max_nn: int,
    normal_max_nn: int,
    normal_orientation: str,
    pooling: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """FPFH of float32 CPU clouds ``(B, 3, H, W)`` over exact k-nearest neighbourhoods (fused kernels).

    Called by :func:`anomalib_btm.features.fpfh_torch.fpfh_torch` (``search="knn"``), which owns the defaults and
    validates the options (``normal_max_nn <= max_nn``).

    Args:
        xyz: Organized clouds, float32 on the CPU, metres, missing points exactly ``(0, 0, 0)``.
        voxel_size: Radius scale: normals within ``2 * voxel_size``, FPFH within ``5 * voxel_size``.
        max_nn: FPFH neighbourhood size including the point itself.
        normal_max_nn: Normal neighbourhood size including the point itself.
        normal_orientation: ``"camera"`` or ``"open3d"``.
        pooling: Separable linear pooling ``(P_rows (h, H), P_columns (w, W))`` applied to the map
            (:func:`anomalib_btm.features.fpfh_math.pool_separable`), fused: each point's FPFH is added into the
            cells it is pooled into and the full map is never written. ``None``: the map itself.

    Returns:
        FPFH ``(B, 33, H, W)`` float32, zero at missing points and points without neighbours; with ``pooling`` the
        pooled map ``(B, 33, h, w)``.
    """
    # NumPy glue only (no torch operation between the kernels, see fpfh_numba); the serial parts are Numba too.
    clouds = np.ascontiguousarray(xyz.detach().cpu().numpy())
    batch, _, height, width = clouds.shape
    if pooling is None:
        out = np.zeros((batch, 3 * _NUM_BINS, height * width), np.float32)
    else:
        rows, columns = (_taps_of(matrix) for matrix in pooling)
        out = np.zeros((batch, 3 * _NUM_BINS, pooling[0].shape[0], pooling[1].shape[0]), np.float32)
    for index in range(batch):
        pixel, points, bounds, spacing = _valid_points(clouds[index])
        n = points.shape[0]
        if n == 0:
            continue
        neighbours, distances, counts, points_normals = _search(points, bounds, spacing, max_nn, 5.0 * voxel_size,
                                                                normal_max_nn, 2.0 * voxel_size,
                                                                normal_orientation == "camera", reuse=True)  # fmt: skip
        spfh = _reused((n, _TABLE_WIDTH), np.float32, "spfh")
        _run_chunks(_spfh_rows, n, points_normals, neighbours, counts, spfh)
        if pooling is None:
            _run_chunks(_fpfh_rows, n, neighbours, distances, counts, spfh, pixel, out[index])
        else:
            _pooled_fpfh(neighbours, distances, counts, spfh, pixel, width, rows, columns, out[index])
    if pooling is None:
        return torch.from_numpy(out.reshape(batch, 3 * _NUM_BINS, height, width))
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------------------------
# Torch twin: brute-force search (CUDA, float64, reference)
# --------------------------------------------------------------------------------------------------------------------

_TORCH_CHUNK = 4096
"""Queries per block of the torch search and the weighted sum (bounds memory to ``chunk × N`` distances)."""


def knn_search_torch(points: torch.Tensor, k: int, radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest neighbours within ``radius`` by brute force, in blocks of queries (any device/dtype).

    Args:
        points: Points ``(N, 3)``.
        k: Neighbours per point, the point itself included.
        radius: Search radius.

    Returns:
        ``neighbours`` ``(N, k')`` int64, squared ``distances`` ``(N, k')`` sorted ascending and ``found``
        ``(N, k')`` bool (within the radius), with ``k' = min(k, N)``.
    """
    n = points.shape[0]
    k = min(k, n)
    neighbours, distances = [], []
    for first in range(0, n, _TORCH_CHUNK):
        queries = points[first : first + _TORCH_CHUNK]
        squared = torch.cdist(queries, points, compute_mode="donot_use_mm_for_euclid_dist").square()
        values, indices = squared.topk(k, dim=1, largest=False, sorted=True)
        neighbours.append(indices)
        distances.append(values)
    neighbours_t = torch.cat(neighbours) if neighbours else points.new_zeros((0, k), dtype=torch.long)
    distances_t = torch.cat(distances) if distances else points.new_zeros((0, k))
    return neighbours_t, distances_t, distances_t <= radius * radius


def _normals_torch(
    points: torch.Tensor, neighbours: torch.Tensor, found: torch.Tensor, k: int, camera: bool
) -> torch.Tensor:
    """Normals ``(N, 3)`` from the first ``k`` (sorted) neighbours that lie within the normal radius."""
    selected = found[:, :k]
    offsets = points[neighbours[:, :k]] - points[:, None]
    offsets = torch.where(selected[..., None], offsets, torch.zeros_like(offsets))
    count = selected.sum(dim=1).to(points.dtype)
    inv = 1 / count.clamp_min(1)
    mean = offsets.sum(dim=1) * inv[:, None]
    second = torch.einsum("nki,nkj->nij", offsets, offsets) * inv[:, None, None]
    cov = second - mean[:, :, None] * mean[:, None, :]
    entries = (cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2])
    one, zero = torch.ones_like(count), torch.zeros_like(count)
    entries = tuple(
        torch.where(count >= 3, e, d) for e, d in zip(entries, (one, zero, zero, one, zero, one), strict=True)
    )
    normals = torch.stack(smallest_eigenvector(entries), dim=1)
    if camera:
        normals = torch.where((normals * points).sum(dim=1, keepdim=True) > 0, -normals, normals)
    return normals


def _fpfh_points_torch(
    points: torch.Tensor, voxel_size: float, max_nn: int, normal_max_nn: int, camera: bool
) -> torch.Tensor:
    """FPFH ``(N, 33)`` of points ``(N, 3)`` with the brute-force search."""
    n = points.shape[0]
    normal_radius, radius = 2.0 * voxel_size, 5.0 * voxel_size
    neighbours, distances, found = knn_search_torch(points, max(max_nn, normal_max_nn), max(radius, normal_radius))
    normal_found = found & (distances <= normal_radius**2)
    normals = _normals_torch(points, neighbours, normal_found, normal_max_nn, camera)
    neighbours, distances = neighbours[:, :max_nn], distances[:, :max_nn]
    itself = neighbours == torch.arange(n, device=points.device)[:, None]
    pairs = found[:, :max_nn] & (distances <= radius**2) & ~itself
    count = pairs.sum(dim=1, keepdim=True).to(points.dtype)
    spfh = points.new_zeros(n, 3 * _NUM_BINS)
    for first in range(0, n, _TORCH_CHUNK):
        rows = slice(first, first + _TORCH_CHUNK)
        index = neighbours[rows]
        d = (points[index] - points[rows, None]).unbind(dim=2)
        n1 = normals[rows, None].unbind(dim=2)
        n2 = normals[index].unbind(dim=2)
        bins = _pair_feature_bins(d, distances[rows], n1, n2)
        weight = pairs[rows].to(points.dtype)
        for group, value in enumerate(bins):
            spfh[rows, group * _NUM_BINS : (group + 1) * _NUM_BINS].scatter_add_(1, value.long(), weight)
    spfh = spfh * torch.where(count > 0, 100 / count.clamp_min(1), torch.zeros_like(count))
    fpfh = torch.zeros_like(spfh)
    for first in range(0, n, _TORCH_CHUNK):
        rows = slice(first, first + _TORCH_CHUNK)
        positive = pairs[rows] & (distances[rows] > 0)
        weight = torch.where(positive, 1 / distances[rows].clamp_min(torch.finfo(points.dtype).tiny), 0.0)
        weighted = (spfh[neighbours[rows]] * weight[..., None]).sum(dim=1).unflatten(1, (3, _NUM_BINS))
        total = weighted.sum(dim=2, keepdim=True)
        weighted = torch.where(total != 0, 100 * weighted / torch.where(total != 0, total, 1.0), 0.0)
        fpfh[rows] = torch.where(count[rows] > 0, weighted.flatten(1) + spfh[rows], 0.0)
    return fpfh


def fpfh_knn_torch(
    xyz: torch.Tensor,
    voxel_size: float,
    *,
    max_nn: int,
    normal_max_nn: int,
    normal_orientation: str,
) -> torch.Tensor:
    """FPFH of organized clouds ``(B, 3, H, W)`` over exact k-nearest neighbourhoods, in torch (brute force).

    Same definition as :func:`fpfh_knn_numba`; runs on the device and in the dtype of ``xyz`` (float64 on the CPU
    reproduces Open3D to float rounding). Memory and time grow with the square of the valid points per cloud: meant
    for GPUs and for reference computations.

    Args:
        xyz: Organized clouds, metres, missing points exactly ``(0, 0, 0)``.
        voxel_size: Radius scale: normals within ``2 * voxel_size``, FPFH within ``5 * voxel_size``.
        max_nn: FPFH neighbourhood size including the point itself.
        normal_max_nn: Normal neighbourhood size including the point itself.
        normal_orientation: ``"camera"`` or ``"open3d"``.

    Returns:
        FPFH ``(B, 33, H, W)`` float32 on the device of ``xyz``.
    """
    batch, _, height, width = xyz.shape
    clouds = xyz.permute(0, 2, 3, 1).reshape(batch, height * width, 3)
    out = torch.zeros(batch, height * width, 3 * _NUM_BINS, dtype=torch.float32, device=xyz.device)
    for index in range(batch):
        valid = (clouds[index] != 0).all(dim=1)
        if valid.any():
            fpfh = _fpfh_points_torch(clouds[index][valid], voxel_size, max_nn, normal_max_nn,
                                      normal_orientation == "camera")  # fmt: skip
            out[index, valid] = fpfh.to(torch.float32)
    return out.reshape(batch, height, width, 3 * _NUM_BINS).permute(0, 3, 1, 2).contiguous()
