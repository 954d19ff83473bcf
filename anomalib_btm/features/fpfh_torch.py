# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""FPFH of organized point clouds in torch (batched, CPU/CUDA; the pixel-window graph traces and exports).

The computation follows Open3D's definitions (``EstimateNormals`` + ``ComputeFPFHFeature``, reference document
§4). ``search`` chooses the neighbourhoods:

* ``"knn"`` (default): Open3D's own, the ``max_nn`` nearest valid points in 3D within the radius
  (:mod:`anomalib_btm.features.fpfh_knn`: an exact voxel-grid search in fused Numba kernels for CPU input, a
  brute-force torch search on CUDA and for float64). Not a fixed-shape graph: exports and ``torch.compile`` use the
  pixel window below instead (the exported model documents it).
* ``"window"``: the nearest valid points inside a fixed pixel window of the organized grid — the fixed-shape graph
  described in the rest of this docstring, which traces, compiles and exports.

With ``search="window"`` neighbours are searched in a fixed pixel window of the organized grid instead
of a KD-tree. For every pixel the candidates are the valid points of a ``window × window`` patch around it; among
those within the search radius the ``max_nn`` nearest (the point itself included, as Open3D counts it) are kept.
Every tensor has a fixed shape and every selection is a mask, so the code traces, compiles and exports (ONNX via
``torch.onnx.export(..., dynamo=True)``, OpenVINO). With a window large enough to hold the neighbourhoods,
``selection="exact"``, ``normal_orientation="open3d"`` and float64 input the result equals Open3D's to float
rounding (tested).

The work is split into stages (neighbour covariances, normals, SPFH, weighted FPFH sum), each reducing over the
``P = window**2`` candidates of every pixel. Four execution paths compute the same arithmetic:

* CPU default (``cpu_kernel=True``): the fused kernels of :mod:`anomalib_btm.features.fpfh_numba` (Numba), pixel
  row by pixel row with every per-candidate value in registers, rows on ``torch.get_num_threads()`` threads; used
  for float32 CPU input whenever no graph is needed (not compiling, exporting or tracing, no autograd);
* eager torch graph (``cpu_kernel=False``, CUDA, float64, autograd): each stage runs band by band of 8 output
  rows, so the per-candidate ``(B, P, 8, W)`` intermediates stay in the CPU caches; histograms are counted by
  scatter-adding candidates into their bins and the weighted neighbour sum accumulates in place;
* ``compile=True``: each stage on the whole map through ``torch.compile`` with Inductor options that keep
  per-candidate values in registers (fused, vectorised C++ loops on CPU, one pass per reduction);
* export (``torch.compiler.is_exporting()``): the whole-map graph with fixed shapes, masks and 33 bin reductions,
  which ONNX and OpenVINO accept.

``benchmarks/fpfh.py`` measures them against Open3D.

Differences to Open3D (measured in ``benchmarks/fpfh.py``):

* Window-limited neighbourhoods: the 100 nearest points of a surface seen frontally lie within about 5.7 pixels,
  inside the default 11×11 window; on steep slopes (the pixel spacing grows with 1/cos of the slope) or next to
  missing regions a KD-tree reaches further than the window (``window=13`` or ``15`` follows further).
* Normal signs: Open3D does not orient normals; the sign is whatever its closed-form 3×3 eigen solver
  (``FastEigen3x3``, after Eberly's robust symmetric eigen solver) yields, which depends on the frame (not
  rotation invariant). ``normal_orientation="camera"`` orients normals toward the camera at the
  origin: well defined and invariant to moving the object in front of the camera. ``"open3d"`` reproduces the
  solver step by step and with it Open3D's signs (up to float32 rounding in near-degenerate neighbourhoods).
* Neighbour selection: ``selection="fast"`` (default) estimates the k-th nearest squared distance from the local
  pixel spacing and corrects it with a few counting passes (count ∝ squared radius on a surface), keeping every
  candidate below it: about ``max_nn`` points, not exactly. ``"exact"`` bisects the k-th distance (log scale, 24
  counting passes); ties and near-ties (relative gap below about ``1e-6``) are all kept where Open3D keeps exactly
  ``max_nn``. Histograms are normalised per point, so counts off by a few change descriptors little.
* Float32 arithmetic (Open3D: float64): pair features within rounding of a bin edge may land in the next bin.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_btm.features.fpfh_math import (
    _NUM_BINS,
    _dot,
    _pair_feature_bins,
    _safe_div,
    _select,
    pool_separable,
    smallest_eigenvector,
)
from anomalib_btm.tracing import capturing_graph

__all__ = [
    "NORMAL_ORIENTATIONS",
    "SEARCHES",
    "SELECTIONS",
    "TORCH_OPTIONS",
    "FPFHTorch",
    "check_torch_options",
    "fpfh_torch",
    "smallest_eigenvector",
]

NORMAL_ORIENTATIONS = ("camera", "open3d")
"""Accepted values of ``normal_orientation``."""

SELECTIONS = ("fast", "exact")
"""Accepted values of ``selection``."""

SEARCHES = ("knn", "window")
"""Accepted values of ``search``: true k-nearest neighbours (Open3D's) or the pixel window (exportable graph)."""

TORCH_OPTIONS = (
    "search",
    "window",
    "normal_window",
    "max_nn",
    "normal_max_nn",
    "normal_orientation",
    "selection",
    "passes",
    "compile",
    "batch_chunk",
    "cpu_kernel",
)
"""Keyword options of :func:`fpfh_torch` besides ``voxel_size`` (what ``BTM(fpfh_options=...)`` accepts)."""

_EXACT_STEPS = 24
_MAX_STEP_FACTOR = 16.0


def _window(padded: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Candidates of a ``window × window`` patch around each pixel, as a leading candidate axis.

    Args:
        padded: Maps ``(B, C, height + window - 1, width + window - 1)`` padded by ``window // 2`` on every side.
        window: Odd patch size.
        height: Height of the unpadded map.
        width: Width of the unpadded map.

    Returns:
        Tensor ``(B, C, P, height, width)`` with ``P = window**2``; candidate ``i * window + j`` is the pixel at
        offset ``(i - window // 2, j - window // 2)``, candidate ``P // 2`` the pixel itself.
    """
    if torch.compiler.is_exporting():
        # im2col lays the candidates out as (C, window, window) channels: no transpose of a 6-d view, which took
        # a large share of OpenVINO's time. Eagerly im2col is slower than the strided view below.
        return F.unfold(padded, window).reshape(padded.shape[0], padded.shape[1], window * window, height, width)
    patches = padded.unfold(2, window, 1).unfold(3, window, 1)  # (B, C, H, W, window, window)
    return patches.permute(0, 1, 4, 5, 2, 3).reshape(padded.shape[0], padded.shape[1], window * window, height, width)


def _pad(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad maps ``(B, C, H, W)`` by ``window // 2`` on every side."""
    radius = window // 2
    return F.pad(x, (radius, radius, radius, radius))


def _initial_threshold(squared_distance: torch.Tensor, admissible: torch.Tensor, window: int, k: int) -> torch.Tensor:
    """Guess of the k-th nearest squared distance from the spacing to the four grid neighbours.

    On a surface the k nearest points fill a disc of area ``k * a`` with ``a`` the surface area per pixel, so the
    k-th squared distance is about ``k * a / pi``; ``a`` is estimated as the product of the horizontal and the
    vertical spacing (the shorter of the two sides each, robust to depth edges).

    Args:
        squared_distance: Squared distances ``(B, P, H, W)`` to the window candidates.
        admissible: Admissible candidates ``(B, P, H, W)``.
        window: Window size (``P = window**2``).
        k: Neighbourhood size.

    Returns:
        Squared distance guess ``(B, 1, H, W)`` (infinite where no grid neighbour is admissible).
    """
    centre = window * window // 2
    inf = torch.full_like(squared_distance[:, :1], torch.inf)

    def spacing(offset: int) -> torch.Tensor:
        # Squared distance to the nearer of the two grid neighbours along one axis; duplicates (distance 0) and
        # missing neighbours do not count.
        sides = [squared_distance[:, centre + step : centre + step + 1] for step in (-offset, offset)]
        usable = [admissible[:, centre + step : centre + step + 1] for step in (-offset, offset)]
        before, after = (torch.where(ok & (side > 0), side, inf) for side, ok in zip(sides, usable, strict=True))
        return torch.minimum(before, after)

    horizontal, vertical = spacing(1), spacing(window)
    both = torch.isfinite(horizontal) & torch.isfinite(vertical)
    area = torch.where(both, torch.sqrt(horizontal * vertical), torch.minimum(horizontal, vertical))
    return area * (k / math.pi)


def _kth_threshold(
    squared_distance: torch.Tensor,
    admissible: torch.Tensor,
    k: int,
    window: int,
    selection: str,
    passes: int,
) -> torch.Tensor:
    """Per-pixel squared-distance threshold that keeps about (``"fast"``) or at least (``"exact"``) k candidates.

    Args:
        squared_distance: Squared distances ``(B, P, H, W)`` to the window candidates.
        admissible: Admissible candidates ``(B, P, H, W)``.
        k: Neighbourhood size (the point itself included).
        window: Window size.
        selection: ``"fast"`` (spacing guess and proportional corrections) or ``"exact"`` (log-scale bisection).
        passes: Correction passes of ``"fast"``.

    Returns:
        Threshold ``(B, 1, H, W)``: keep candidates with ``squared_distance <= threshold``. Infinite where at most
        ``k`` candidates are admissible (all are kept, as Open3D keeps all points within the radius).
    """
    dtype = squared_distance.dtype
    zero = torch.zeros((), dtype=dtype, device=squared_distance.device)
    inf = torch.full((), torch.inf, dtype=dtype, device=squared_distance.device)
    distance = torch.where(admissible, squared_distance, inf)
    total = admissible.to(dtype).sum(dim=1, keepdim=True)
    largest = torch.where(admissible, squared_distance, zero).amax(dim=1, keepdim=True)

    def count(threshold: torch.Tensor) -> torch.Tensor:
        return (distance <= threshold).to(dtype).sum(dim=1, keepdim=True)

    if selection == "exact":
        tiny = torch.finfo(dtype).tiny
        smallest = torch.where(admissible & (squared_distance > 0), squared_distance, inf).amin(dim=1, keepdim=True)
        log_hi = torch.log(largest.clamp_min(tiny))
        log_lo = torch.log(torch.where(torch.isinf(smallest), largest, smallest).clamp_min(tiny)) - 1e-3
        for _ in range(_EXACT_STEPS):
            log_mid = 0.5 * (log_lo + log_hi)
            enough = count(torch.exp(log_mid)) >= k
            log_hi = torch.where(enough, log_mid, log_hi)
            log_lo = torch.where(enough, log_lo, log_mid)
        threshold = torch.exp(log_hi)
    else:
        threshold = _initial_threshold(squared_distance, admissible, window, k)
        threshold = torch.where(torch.isfinite(threshold) & (threshold > 0), threshold, largest)
        for _ in range(passes):
            factor = (k / count(threshold).clamp_min(1.0)).clamp(1 / _MAX_STEP_FACTOR, _MAX_STEP_FACTOR)
            threshold = threshold * factor
    return torch.where(total > k, threshold, inf)


def _covariance_stage(
    padded: torch.Tensor,
    xyz: torch.Tensor,
    valid: torch.Tensor,
    *,
    window: int,
    radius: float,
    k: int,
    selection: str,
    passes: int,
) -> torch.Tensor:
    """Covariance of each point's nearest window neighbours (the neighbourhood of Open3D's ``EstimateNormals``).

    Args:
        padded: Points and validity ``(B, 4, H + window - 1, W + window - 1)``, zero padded.
        xyz: Points ``(B, 3, H, W)``.
        valid: Validity ``(B, 1, H, W)``.
        window: Odd window size.
        radius: Search radius.
        k: Neighbourhood size including the point itself.
        selection: ``"fast"`` or ``"exact"`` (see :func:`_kth_threshold`).
        passes: Correction passes of the fast selection.

    Returns:
        Covariance entries ``(c00, c01, c02, c11, c12, c22)`` as ``(B, 6, H, W)``; the identity where fewer than 3
        points (the point itself included) are found, as in Open3D.
    """
    height, width = xyz.shape[-2:]
    candidates = _window(padded, window, height, width)
    d = tuple(candidates[:, i] - xyz[:, i : i + 1] for i in range(3))  # local coordinates keep float32 precise
    squared_distance = _dot(d, d)
    admissible = (candidates[:, 3] > 0) & valid & (squared_distance <= radius * radius)
    threshold = _kth_threshold(squared_distance, admissible, k, window, selection, passes)
    selected = admissible & (squared_distance <= threshold)
    zero = torch.zeros_like(squared_distance)
    dx, dy, dz = (torch.where(selected, component, zero) for component in d)
    count = selected.to(xyz.dtype).sum(dim=1)
    inv_count = 1 / count.clamp_min(1)
    mx, my, mz = dx.sum(1) * inv_count, dy.sum(1) * inv_count, dz.sum(1) * inv_count
    cov = (
        (dx * dx).sum(1) * inv_count - mx * mx,
        (dx * dy).sum(1) * inv_count - mx * my,
        (dx * dz).sum(1) * inv_count - mx * mz,
        (dy * dy).sum(1) * inv_count - my * my,
        (dy * dz).sum(1) * inv_count - my * mz,
        (dz * dz).sum(1) * inv_count - mz * mz,
    )
    one, nil = torch.ones_like(count), torch.zeros_like(count)
    return torch.stack(_select(count >= 3, cov, (one, nil, nil, one, nil, one)), dim=1)


def _normal_stage(cov: torch.Tensor, xyz: torch.Tensor, *, orientation: str) -> torch.Tensor:
    """Normals from covariances: smallest-eigenvalue eigenvector, optionally oriented toward the camera.

    Args:
        cov: Covariance entries ``(B, 6, H, W)`` from :func:`_covariance_stage`.
        xyz: Points ``(B, 3, H, W)``.
        orientation: ``"camera"`` (flip normals to face the origin) or ``"open3d"`` (keep the solver's sign).

    Returns:
        Unit normals ``(B, 3, H, W)``.
    """
    nx, ny, nz = smallest_eigenvector(tuple(cov.unbind(dim=1)))
    if orientation == "camera":
        one = torch.ones_like(nx)
        sign = torch.where(_dot((nx, ny, nz), (xyz[:, 0], xyz[:, 1], xyz[:, 2])) > 0, -one, one)
        nx, ny, nz = nx * sign, ny * sign, nz * sign
    return torch.stack([nx, ny, nz], dim=1)


def _fpfh_neighbours(
    padded: torch.Tensor,
    xyz: torch.Tensor,
    valid: torch.Tensor,
    window: int,
    radius: float,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Window candidates of the FPFH search: offsets, squared distances, admissibility.

    Args:
        padded: Maps ``(B, C >= 4, H + window - 1, W + window - 1)`` whose channels 0-2 are the points and the last
            channel the validity, zero padded.
        xyz: Points ``(B, 3, H, W)``.
        valid: Validity ``(B, 1, H, W)``.
        window: Odd window size.
        radius: Search radius.

    Returns:
        ``d`` (components ``(B, P, H, W)`` of the offsets), squared distances and admissibility ``(B, P, H, W)``,
        and the candidates ``(B, C, P, H, W)``.
    """
    height, width = xyz.shape[-2:]
    candidates = _window(padded, window, height, width)
    d = tuple(candidates[:, i] - xyz[:, i : i + 1] for i in range(3))  # local coordinates keep float32 precise
    squared_distance = _dot(d, d)
    admissible = (candidates[:, -1] > 0) & valid & (squared_distance <= radius * radius)
    return d, squared_distance, admissible, candidates


def _not_centre(window: int, device: torch.device) -> torch.Tensor:
    """Mask ``(P, 1, 1)`` that excludes the window centre (the point itself)."""
    mask = torch.ones(window * window, 1, 1, dtype=torch.bool, device=device)
    mask[window * window // 2] = False
    return mask


def _scatter_histograms(bins: tuple[torch.Tensor, ...], neighbour: torch.Tensor) -> torch.Tensor:
    """The three 11-bin histograms of every pixel by scatter-adding the selected candidates into their bins.

    Args:
        bins: Float bins ``(B, P, H, W)`` in ``[0, 10]`` of the three pair features.
        neighbour: Selected candidates ``(B, P, H, W)``.

    Returns:
        Counts ``(B, 33, H, W)`` in the dtype of ``bins``.
    """
    batch, _, height, width = neighbour.shape
    selected = neighbour.to(bins[0].dtype)
    counts = torch.zeros(batch, 3 * _NUM_BINS, height, width, dtype=selected.dtype, device=selected.device)
    for group, value in enumerate(bins):
        counts[:, group * _NUM_BINS : (group + 1) * _NUM_BINS].scatter_add_(1, value.long(), selected)
    return counts


def _spfh_stage(
    padded: torch.Tensor,
    xyz: torch.Tensor,
    normals: torch.Tensor,
    valid: torch.Tensor,
    *,
    window: int,
    radius: float,
    k: int,
    selection: str,
    passes: int,
    counting: str = "reduce",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour selection of the FPFH search and SPFH (Open3D's ``ComputeSPFHFeature``).

    With ``counting="reduce"`` each of the 33 bins is its own reduction over the candidates so that
    ``torch.compile`` fuses them into one loop that computes every pair feature once, without a ``(B, P, H, W)``
    intermediate in memory (and the graph exports). ``"scatter"`` scatter-adds the selected candidates into their
    bins, one pass per feature instead of 33 comparisons (eager execution; same counts).

    Args:
        padded: Points, normals and validity ``(B, 7, H + window - 1, W + window - 1)``, zero padded.
        xyz: Points ``(B, 3, H, W)``.
        normals: Normals ``(B, 3, H, W)``.
        valid: Validity ``(B, 1, H, W)``.
        window: Odd window size.
        radius: Search radius.
        k: Neighbourhood size including the point itself.
        selection: ``"fast"`` or ``"exact"``.
        passes: Correction passes of the fast selection.
        counting: ``"reduce"`` (compile, export) or ``"scatter"`` (eager).

    Returns:
        SPFH ``(B, 33, H, W)`` (each group sums to 100, zero without neighbours), the neighbour count
        ``(B, 1, H, W)`` (the point itself excluded) and the squared-distance threshold of the selection.
    """
    d, squared_distance, admissible, candidates = _fpfh_neighbours(padded, xyz, valid, window, radius)
    threshold = _kth_threshold(squared_distance, admissible, k, window, selection, passes)
    neighbour = admissible & (squared_distance <= threshold) & _not_centre(window, xyz.device)
    count = neighbour.to(xyz.dtype).sum(dim=1, keepdim=True)
    n1 = tuple(normals[:, i : i + 1] for i in range(3))
    n2 = tuple(candidates[:, 3 + i] for i in range(3))
    bins = _pair_feature_bins(d, squared_distance, n1, n2)
    if counting == "scatter":
        histograms = _scatter_histograms(bins, neighbour)
    else:
        outside = torch.full_like(squared_distance, -1.0)
        histogram = [
            (torch.where(neighbour, group, outside) == level).to(xyz.dtype).sum(dim=1)
            for group in bins
            for level in range(_NUM_BINS)
        ]
        histograms = torch.stack(histogram, dim=1)
    spfh = histograms * _safe_div(torch.full_like(count, 100.0), count)
    return spfh, count, threshold


def _fpfh_stage(
    padded: torch.Tensor,
    spfh: torch.Tensor,
    spfh_padded: torch.Tensor,
    xyz: torch.Tensor,
    valid: torch.Tensor,
    threshold: torch.Tensor,
    count: torch.Tensor,
    *,
    window: int,
    radius: float,
    fused: bool,
) -> torch.Tensor:
    """FPFH: own SPFH plus the ``1/d²``-weighted neighbour SPFHs, each group of the latter rescaled to sum to 100.

    Args:
        padded: Points and validity ``(B, 4, H + window - 1, W + window - 1)``, zero padded.
        spfh: SPFH ``(B, 33, H, W)``.
        spfh_padded: The rows of the zero-padded SPFH map (padded by ``window // 2``) that these ``H`` output rows
            read: ``(B, 33, H + window - 1, W + window - 1)``.
        xyz: Points ``(B, 3, H, W)``.
        valid: Validity ``(B, 1, H, W)``.
        threshold: Squared-distance threshold of the neighbour selection ``(B, 1, H, W)``.
        count: Neighbour count ``(B, 1, H, W)``.
        window: Odd window size.
        radius: Search radius.
        fused: One reduction per bin over all candidates (for ``torch.compile``, which fuses them into one loop)
            instead of accumulating one shifted SPFH map per candidate (eager and export: bounded memory).

    Returns:
        FPFH ``(B, 33, H, W)``, zero at invalid points and points without neighbours.
    """
    height, width = xyz.shape[-2:]
    _, squared_distance, admissible, _ = _fpfh_neighbours(padded, xyz, valid, window, radius)
    positive = admissible & (squared_distance <= threshold) & _not_centre(window, xyz.device) & (squared_distance > 0)
    ones = torch.ones_like(squared_distance)
    weight = torch.where(positive, ones / torch.where(positive, squared_distance, ones), torch.zeros_like(ones))
    if fused:
        weighted = torch.stack(
            [
                (_window(spfh_padded[:, index : index + 1], window, height, width)[:, 0] * weight).sum(dim=1)
                for index in range(3 * _NUM_BINS)
            ],
            dim=1,
        )
    elif torch.compiler.is_exporting():
        weighted = torch.zeros_like(spfh)
        for index in range(window * window):
            i, j = divmod(index, window)
            weighted = weighted + spfh_padded[:, :, i : i + height, j : j + width] * weight[:, index : index + 1]
    else:
        weighted = torch.zeros_like(spfh)
        for index in range(window * window):
            i, j = divmod(index, window)
            weighted.addcmul_(spfh_padded[:, :, i : i + height, j : j + width], weight[:, index : index + 1])
    groups = weighted.unflatten(1, (3, _NUM_BINS))
    total = groups.sum(dim=2, keepdim=True)
    groups = _safe_div(100.0 * groups, total.expand_as(groups))
    fpfh = groups.flatten(1, 2) + spfh
    return torch.where(valid & (count > 0), fpfh, torch.zeros_like(fpfh))


def _check_options(
    window: int,
    normal_window: int,
    max_nn: int,
    normal_max_nn: int,
    orientation: str,
    selection: str,
    search: str = "knn",
) -> None:
    """Validate the options of :func:`fpfh_torch`.

    Raises:
        ValueError: On even or non-positive windows, non-positive neighbourhood sizes, a normal neighbourhood
            larger than the FPFH one with ``search="knn"``, or unknown names.
    """
    if search not in SEARCHES:
        msg = f"Unknown search {search!r}; choose one of {SEARCHES}."
        raise ValueError(msg)
    if search == "knn" and normal_max_nn > max_nn:
        msg = (
            f"`normal_max_nn` ({normal_max_nn}) must not exceed `max_nn` ({max_nn}) with search='knn' (the normal "
            "neighbourhood is taken from the FPFH one); use search='window' for other combinations."
        )
        raise ValueError(msg)
    for name, value in (("window", window), ("normal_window", normal_window)):
        if value < 1 or value % 2 == 0:
            msg = f"`{name}` must be a positive odd number of pixels, got {value}."
            raise ValueError(msg)
    if max_nn < 1 or normal_max_nn < 1:
        msg = f"`max_nn` and `normal_max_nn` must be positive, got {max_nn} and {normal_max_nn}."
        raise ValueError(msg)
    if orientation not in NORMAL_ORIENTATIONS:
        msg = f"Unknown normal_orientation {orientation!r}; choose one of {NORMAL_ORIENTATIONS}."
        raise ValueError(msg)
    if selection not in SELECTIONS:
        msg = f"Unknown selection {selection!r}; choose one of {SELECTIONS}."
        raise ValueError(msg)


def check_torch_options(options: dict[str, object]) -> None:
    """Validate options of :func:`fpfh_torch` before any cloud is processed.

    Args:
        options: Keyword options (names from :data:`TORCH_OPTIONS`).

    Raises:
        ValueError: On unknown names or invalid values, naming the option.
    """
    unknown = sorted(set(options) - set(TORCH_OPTIONS))
    if unknown:
        msg = f"Unknown torch FPFH option(s) {unknown}; valid options are {list(TORCH_OPTIONS)}."
        raise ValueError(msg)
    parameters = inspect.signature(fpfh_torch).parameters
    numbers = {
        name: options.get(name, parameters[name].default)
        for name in ("window", "normal_window", "max_nn", "normal_max_nn")
    }
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"Torch FPFH option `{name}` must be an integer, got {value!r}."
            raise ValueError(msg)
    _check_options(
        numbers["window"],
        numbers["normal_window"],
        numbers["max_nn"],
        numbers["normal_max_nn"],
        str(options.get("normal_orientation", parameters["normal_orientation"].default)),
        str(options.get("selection", parameters["selection"].default)),
        str(options.get("search", parameters["search"].default)),
    )


# The SPFH and FPFH stages must recompute per-candidate values inside their reduction loops instead of writing
# (B, P, H, W) buffers (each pass over such a buffer is memory bound); raising Inductor's realisation
# thresholds does that and lets the 33 histogram reductions share one loop. The covariance stage gains nothing
# measurable from it but compiles much longer, and the eigen solver is a large pointwise graph whose shared
# subexpressions must stay realised: both use the defaults.
_FUSE_OPTIONS = {
    "realize_reads_threshold": 1000,
    "realize_opcount_threshold": 100000,
    "realize_acc_reads_threshold": 1000,
}


@functools.cache
def _compiled(stage: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``torch.compile`` of a stage, created once per stage (options are static and specialise the graph)."""
    options = _FUSE_OPTIONS if stage in (_spfh_stage, _fpfh_stage) else None
    return torch.compile(stage, dynamic=False, options=options)


def fpfh_torch(
    xyz: torch.Tensor,
    voxel_size: float = 0.05,
    *,
    search: Literal["knn", "window"] = "knn",
    window: int = 11,
    normal_window: int = 7,
    max_nn: int = 100,
    normal_max_nn: int = 30,
    normal_orientation: Literal["camera", "open3d"] = "open3d",
    selection: Literal["fast", "exact"] = "fast",
    passes: int = 3,
    compile: bool = False,
    batch_chunk: int | None = None,
    cpu_kernel: bool = True,
    pooling: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """FPFH of organized clouds: Open3D's definition, with its k-nearest neighbourhoods or pixel windows.

    Args:
        xyz: Organized clouds ``(B, 3, H, W)``, metres, missing points exactly ``(0, 0, 0)``; not validated here
            (use :func:`anomalib_btm.features.compute_fpfh`). Computed in float32, or float64 for float64 input.
        voxel_size: Radius scale: normals within ``2 * voxel_size``, FPFH within ``5 * voxel_size`` (BTF: 0.05).
        search: ``"knn"``: Open3D's neighbourhoods, the ``max_nn`` nearest valid points within the radius (exact;
            fused kernels on the CPU, brute force in torch on CUDA and for float64); while exporting or compiling
            the graph uses the pixel window instead (``window``, ``normal_window``, ``selection``). ``"window"``:
            the nearest valid points inside a pixel window (the exportable graph everywhere).
        window: Odd pixel window of the FPFH neighbour search. The 100 nearest points of a frontal surface lie
            within 5.7 pixels (a disc of 101 pixels, which 11×11 holds); larger windows follow steep slopes and
            depth edges further (13 or 15), at a cost that grows with ``window**2``.
        normal_window: Odd pixel window of the normal neighbour search (30 nearest: radius 3.1 pixels frontally).
        max_nn: FPFH neighbourhood size including the point itself (Open3D/BTF: 100).
        normal_max_nn: Normal neighbourhood size including the point itself (Open3D/BTF: 30).
        normal_orientation: ``"open3d"`` (default): the sign of Open3D's closed-form eigen solver, reproducing
            BTF's descriptors (the paper's); ``"camera"``: normals face the camera at the origin.
        selection: ``"fast"``: about ``max_nn`` nearest from a spacing guess corrected by ``passes`` counting
            passes; ``"exact"``: the ``max_nn`` nearest (ties kept) by bisection, 24 counting passes.
        passes: Correction passes of the fast selection.
        compile: Run every stage through ``torch.compile`` (static shapes: the first call per input shape compiles,
            which takes minutes on a small CPU; Dynamo's recompile limit applies, keep the input shape fixed).
        batch_chunk: Process at most this many clouds at once (bounds the memory of eager execution, where
            intermediates of shape ``(chunk, window**2, H, W)`` are materialised). ``None``: the whole batch.
        cpu_kernel: Compute CPU input with the fused kernels of :mod:`anomalib_btm.features.fpfh_numba` (same
            arithmetic, faster than the eager torch graph: ``benchmarks/fpfh.py`` measures both). Applies
            only where the graph is not needed: float32 (or lower precision) CPU input, no ``compile``, not while
            exporting, compiling or tracing, no gradient required. ``False``: always the torch graph.
        pooling: A separable linear pooling ``(P_rows (h, H), P_columns (w, W))`` of the map
            (:func:`~anomalib_btm.features.fpfh_math.pool_separable`): the k-NN kernels add each point into its
            cells without writing the full map; elsewhere the map is pooled after. ``None``: the map itself.

    Returns:
        Float32 tensor ``(B, 33, H, W)`` on the device of ``xyz``: zeros at missing points and at points without
        neighbours, else the FPFH (each 11-bin group sums to 200); ``(B, 33, h, w)`` with ``pooling``.

    Raises:
        ValueError: On invalid options, or ``compile=True`` with ``search="knn"``.
    """
    _check_options(window, normal_window, max_nn, normal_max_nn, normal_orientation, selection, search)
    if compile and search == "knn":
        msg = "`compile=True` compiles the pixel-window graph: pass search='window' with it."
        raise ValueError(msg)
    options: dict[str, Any] = {
        "window": window,
        "normal_window": normal_window,
        "max_nn": max_nn,
        "normal_max_nn": normal_max_nn,
        "normal_orientation": normal_orientation,
        "selection": selection,
        "passes": passes,
    }
    if batch_chunk is not None and 0 < batch_chunk < xyz.shape[0]:
        return torch.cat(
            [
                fpfh_torch(
                    chunk, voxel_size, search=search, **options, compile=compile, cpu_kernel=cpu_kernel, pooling=pooling
                )
                for chunk in xyz.split(batch_chunk)
            ]
        )
    if xyz.dtype != torch.float64:
        xyz = xyz.float()
    graph = compile or capturing_graph()
    if search == "knn" and not graph and cpu_kernel and _kernel_applies(xyz, compile):
        from anomalib_btm.features.fpfh_knn import fpfh_knn_numba

        return fpfh_knn_numba(xyz, voxel_size, max_nn=max_nn, normal_max_nn=normal_max_nn,
                              normal_orientation=normal_orientation, pooling=pooling)  # fmt: skip
    if pooling is not None:
        maps = fpfh_torch(xyz, voxel_size, search=search, **options, compile=compile, cpu_kernel=cpu_kernel)
        return pool_separable(maps, pooling)
    if search == "knn" and not graph:
        from anomalib_btm.features.fpfh_knn import fpfh_knn_torch

        return fpfh_knn_torch(xyz, voxel_size, max_nn=max_nn, normal_max_nn=normal_max_nn,
                              normal_orientation=normal_orientation)  # fmt: skip
    if cpu_kernel and _kernel_applies(xyz, compile):
        from anomalib_btm.features.fpfh_numba import fpfh_numba

        return fpfh_numba(xyz, voxel_size, **options)

    # Compiled and exported graphs take the whole map at once; eagerly, stages run band by band (same arithmetic).
    whole = compile or torch.compiler.is_exporting()
    return _fpfh_stages(
        xyz,
        voxel_size,
        **options,
        compile=compile,
        band_rows=None if whole else _BAND_ROWS,
    )


def _kernel_applies(xyz: torch.Tensor, compile: bool) -> bool:
    """Whether the fused CPU kernels may replace the torch graph for this call (see ``cpu_kernel``)."""
    return (
        xyz.device.type == "cpu"
        and xyz.dtype == torch.float32
        and not compile
        and not capturing_graph()
        and not (torch.is_grad_enabled() and xyz.requires_grad)
    )


_BAND_ROWS = 8
"""Output rows per band of the eager path: per-candidate intermediates of a band, ``(B, window**2, 8, W)``, stay
in the CPU caches instead of streaming ``(B, window**2, H, W)`` buffers through memory."""


def _halo(band: slice, window: int) -> slice:
    """Rows of a map padded by ``window // 2`` that a band of output rows reads."""
    return slice(band.start, band.stop + window - 1)


def _fpfh_stages(
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
    compile: bool,
    band_rows: int | None,
) -> torch.Tensor:
    """Covariances, normals, SPFH and FPFH, each stage over the whole map or band by band of output rows.

    Every stage reads its inputs within ``window // 2`` rows, so a stage finishes for the whole map before the
    next starts and no band recomputes another's rows. ``band_rows=None`` (compile, export) runs each stage once on
    the whole map with the 33 bin reductions and the shifted-map sum that compile and export; with bands (eager)
    histograms are scatter-added and the weighted sum accumulates in place.
    """
    height = xyz.shape[-2]
    step = band_rows or max(height, 1)
    bands = [slice(start, min(start + step, height)) for start in range(0, height, step)] or [slice(0, 0)]
    eager_bands = band_rows is not None

    def run(stage: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return _compiled(stage) if compile else stage

    def by_band(stage: Callable[..., torch.Tensor], make_args: Callable[[slice], tuple], **options: object) -> list:
        """``stage`` on each band; ``make_args(band)`` gives its positional inputs, ``options`` its keywords."""
        return [run(stage)(*make_args(band), **options) for band in bands]

    valid = (xyz != 0).all(dim=1, keepdim=True)
    valid_map = valid.to(xyz.dtype)
    padded = _pad(torch.cat([xyz, valid_map], dim=1), normal_window)
    cov = torch.cat(
        by_band(
            _covariance_stage,
            lambda band: (padded[:, :, _halo(band, normal_window)], xyz[:, :, band], valid[:, :, band]),
            window=normal_window,
            radius=2.0 * voxel_size,
            k=normal_max_nn,
            selection=selection,
            passes=passes,
        ),
        dim=2,
    )
    normals = run(_normal_stage)(cov, xyz, orientation=normal_orientation)
    padded = _pad(torch.cat([xyz, normals, valid_map], dim=1), window)
    parts = by_band(
        _spfh_stage,
        lambda band: (padded[:, :, _halo(band, window)], xyz[:, :, band], normals[:, :, band], valid[:, :, band]),
        window=window,
        radius=5.0 * voxel_size,
        k=max_nn,
        selection=selection,
        passes=passes,
        counting="scatter" if eager_bands else "reduce",
    )
    spfh, count, threshold = (torch.cat(list(part), dim=2) for part in zip(*parts, strict=True))
    padded = _pad(torch.cat([xyz, valid_map], dim=1), window)
    spfh_padded = _pad(spfh, window)
    fpfh = torch.cat(
        by_band(
            _fpfh_stage,
            lambda band: (
                padded[:, :, _halo(band, window)],
                spfh[:, :, band],
                spfh_padded[:, :, _halo(band, window)],
                xyz[:, :, band],
                valid[:, :, band],
                threshold[:, :, band],
                count[:, :, band],
            ),
            window=window,
            radius=5.0 * voxel_size,
            fused=compile,
        ),
        dim=2,
    )
    return fpfh.to(torch.float32)


class FPFHTorch(nn.Module):
    """Module wrapper of :func:`fpfh_torch` (eager graph), for ``torch.compile`` or ONNX/OpenVINO export.

    Args:
        voxel_size: Radius scale.
        search: ``"knn"`` (Open3D's neighbourhoods eagerly; the pixel window while exporting or compiling) or
            ``"window"``.
        window: Odd pixel window of the FPFH neighbour search.
        normal_window: Odd pixel window of the normal neighbour search.
        max_nn: FPFH neighbourhood size including the point itself.
        normal_max_nn: Normal neighbourhood size including the point itself.
        normal_orientation: ``"open3d"`` or ``"camera"``.
        selection: ``"fast"`` or ``"exact"``.
        passes: Correction passes of the fast selection.
        cpu_kernel: Eager CPU calls use the fused kernels (see :func:`fpfh_torch`); exporting and compiling
            always trace the torch graph.

    Example:
        >>> module = FPFHTorch()
        >>> module(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 33, 32, 32])
    """

    def __init__(
        self,
        voxel_size: float = 0.05,
        search: Literal["knn", "window"] = "knn",
        window: int = 11,
        normal_window: int = 7,
        max_nn: int = 100,
        normal_max_nn: int = 30,
        normal_orientation: Literal["camera", "open3d"] = "open3d",
        selection: Literal["fast", "exact"] = "fast",
        passes: int = 3,
        cpu_kernel: bool = True,
    ) -> None:
        super().__init__()
        _check_options(window, normal_window, max_nn, normal_max_nn, normal_orientation, selection, search)
        self.voxel_size = voxel_size
        self.search = search
        self.window = window
        self.normal_window = normal_window
        self.max_nn = max_nn
        self.normal_max_nn = normal_max_nn
        self.normal_orientation = normal_orientation
        self.selection = selection
        self.passes = passes
        self.cpu_kernel = cpu_kernel

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """Compute the FPFH map ``(B, 33, H, W)`` of organized clouds ``(B, 3, H, W)``."""
        return fpfh_torch(
            xyz,
            self.voxel_size,
            search=self.search,  # type: ignore[arg-type]
            window=self.window,
            normal_window=self.normal_window,
            max_nn=self.max_nn,
            normal_max_nn=self.normal_max_nn,
            normal_orientation=self.normal_orientation,  # type: ignore[arg-type]
            selection=self.selection,  # type: ignore[arg-type]
            passes=self.passes,
            cpu_kernel=self.cpu_kernel,
        )
