# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Greedy k-center with triangle-inequality pruning: Numba kernels of :class:`~.coreset.PrunedKCenterState`.

Every point belongs to the cluster of its nearest center; each cluster is a linked list of its points and knows its
radius (the largest distance of a member to the center) and the member at that radius. When a new center ``c`` is
added, a point ``p`` of cluster ``a`` can only get nearer to ``c`` than to ``a`` if ``d(a, c) < 2 d(p, a)``
(triangle inequality: ``d(p, c) >= d(a, c) - d(p, a)``). So a cluster with ``d(a, c) >= 2 radius(a)`` is skipped
whole, and inside the others only the points that pass the test are measured. The minimum distances are those of
the plain greedy loop (up to float rounding: the distances are Numba sums, not torch's norm kernel); the farthest
point is found among the cluster radii instead of all points.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy", "boundscheck": False}
_SUM = {**_JIT, "fastmath": {"reassoc", "nsz", "arcp", "contract"}}
"""Distance sums may be reordered (vectorised); the compiled order is fixed, so the same inputs give the same bits."""


@njit(**_SUM)
def _distance(features: np.ndarray, row: int, center: np.ndarray) -> float:
    """Euclidean distance of ``features[row]`` to ``center`` (float32 accumulation, fixed order)."""
    total = np.float32(0.0)
    for j in range(center.shape[0]):
        diff = features[row, j] - center[j]
        total += diff * diff
    return math.sqrt(total)


@njit(**_SUM)
def _center_distances(centers: np.ndarray, count: int, center: np.ndarray, out: np.ndarray) -> None:
    """``out[a] = d(centers[a], center)`` for the first ``count`` centers."""
    for a in range(count):
        total = np.float32(0.0)
        for j in range(center.shape[0]):
            diff = centers[a, j] - center[j]
            total += diff * diff
        out[a] = math.sqrt(total)


@njit(**_JIT)
def _first_center(
    features: np.ndarray,
    center: np.ndarray,
    min_distances: np.ndarray,
    nearest: np.ndarray,
    head: np.ndarray,
    link: np.ndarray,
    radius: np.ndarray,
    farthest: np.ndarray,
    order: np.ndarray,
) -> None:
    """Put every point in cluster 0 (the first center) and measure its distance.

    ``order[row]`` is the row's global index: of equally far points the smallest index is the cluster's farthest.
    """
    n = features.shape[0]
    best = -1.0
    best_row = -1
    for row in range(n):
        d = _distance(features, row, center)
        min_distances[row] = d
        nearest[row] = 0
        link[row] = row + 1 if row + 1 < n else -1
        if d > best or (d == best and order[row] < order[best_row]):
            best = d
            best_row = row
    head[0] = 0 if n > 0 else -1
    radius[0] = best if n > 0 else -math.inf
    farthest[0] = best_row


@njit(**_JIT)
def _add_center(
    features: np.ndarray,
    center: np.ndarray,
    new_id: int,
    center_distances: np.ndarray,
    min_distances: np.ndarray,
    nearest: np.ndarray,
    head: np.ndarray,
    link: np.ndarray,
    radius: np.ndarray,
    farthest: np.ndarray,
    order: np.ndarray,
) -> int:
    """Fold center ``new_id`` (row vector ``center``) into the clusters; return the number of points measured.

    ``order[row]`` is the row's global index, used to break ties of the farthest point (smallest index wins, as
    ``torch.max`` does).
    """
    measured = 0
    new_head = -1
    new_radius = -math.inf
    new_far = -1
    for a in range(new_id):
        if radius[a] < 0.0 or center_distances[a] >= 2.0 * radius[a]:
            continue
        bound = 0.5 * center_distances[a]
        prev = -1
        row = head[a]
        best = -math.inf
        best_row = -1
        while row != -1:
            nxt = link[row]
            d_old = min_distances[row]
            moved = False
            if d_old > bound:
                measured += 1
                d = _distance(features, row, center)
                if d < d_old:
                    min_distances[row] = d
                    nearest[row] = new_id
                    if prev == -1:
                        head[a] = nxt
                    else:
                        link[prev] = nxt
                    link[row] = new_head
                    new_head = row
                    if d > new_radius or (d == new_radius and order[row] < order[new_far]):
                        new_radius = d
                        new_far = row
                    moved = True
            if not moved:
                if d_old > best or (d_old == best and order[row] < order[best_row]):
                    best = d_old
                    best_row = row
                prev = row
            row = nxt
        radius[a] = best
        farthest[a] = best_row
    head[new_id] = new_head
    radius[new_id] = new_radius
    farthest[new_id] = new_far
    return measured


@njit(**_JIT)
def _farthest(radius: np.ndarray, farthest: np.ndarray, count: int, order: np.ndarray) -> int:
    """Row of the farthest point over the first ``count`` clusters (ties: smallest global index); -1 if none."""
    best = -math.inf
    best_row = -1
    for a in range(count):
        r = radius[a]
        if r < 0.0:
            continue
        row = farthest[a]
        if r > best or (r == best and order[row] < order[best_row]):
            best = r
            best_row = row
    return best_row
