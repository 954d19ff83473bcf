# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests of the true k-nearest-neighbour FPFH (``search="knn"``): exact neighbour sets and Open3D parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalib_btm.data.synthetic import render_sample
from anomalib_btm.features import compute_fpfh
from anomalib_btm.features.fpfh_knn import knn_search, knn_search_torch
from anomalib_btm.features.fpfh_torch import FPFHTorch
from anomalib_btm.models.btm.feature_branches import XYZBranch, patch_pooling
from tests.features.test_fpfh import make_cloud, per_point_correlation


def _squared(points: np.ndarray) -> np.ndarray:
    return ((points[:, None].astype(np.float64) - points[None].astype(np.float64)) ** 2).sum(-1)


def _brute_force(points: np.ndarray, k: int, radius: float) -> list[set[int]]:
    """The ``k`` nearest within ``radius`` of every point (float64, the point itself included)."""
    squared = _squared(points)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return [{int(j) for j in row if squared[i, j] <= radius * radius} for i, row in enumerate(order)]


def _steep_cloud(size: int, seed: int) -> np.ndarray:
    """Organized ``(H, W, 3)`` cloud: a plane with a 60° ridge and an 80° step, holes, jitter (no distance ties)."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(-0.05, 0.05, size), np.linspace(-0.05, 0.05, size), indexing="ij")
    height = np.clip(0.012 - np.abs(u) * np.tan(np.radians(60)), 0, None)  # ridge with 60° flanks
    height = height + np.where(v > 0.02, 0.01, 0.0)  # a step (80°+) across the image
    xyz = np.stack([u, v, 0.5 - height], axis=-1) + rng.normal(0, 2e-5, (size, size, 3))
    xyz[rng.random((size, size)) < 0.1] = 0.0
    return xyz.astype(np.float32)


@pytest.mark.parametrize(("k", "radius"), [(30, 0.1), (100, 0.25), (100, 0.004), (7, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_search_equals_brute_force(k: int, radius: float, seed: int) -> None:
    organized = _steep_cloud(40, seed)
    valid, neighbours, distances, counts = knn_search(organized, k, radius)
    points = organized.reshape(-1, 3)[valid]
    expected = _brute_force(points, k, radius)
    squared = _squared(points)
    assert len(expected) == points.shape[0] == counts.shape[0]
    near_ties = 0
    for index, reference in enumerate(expected):
        found = neighbours[index, : counts[index]]
        assert len(found) == len(reference), f"point {index}"
        differ = set(found.tolist()) ^ reference
        if differ:  # only swaps at the k-th distance within float32 resolution (float64 reference)
            kth = max(squared[index, j] for j in reference)
            assert all(abs(squared[index, j] - kth) <= 1e-6 * kth for j in differ), f"point {index}"
            near_ties += 1
        exact = ((points[found] - points[index]) ** 2).sum(-1)
        np.testing.assert_allclose(distances[index, : counts[index]], exact, rtol=1e-5, atol=1e-12)
    assert near_ties <= 0.01 * len(expected)
    if radius < 0.01:  # the radius, not k, bounds some neighbourhoods
        assert (counts < k).any()


def test_knn_search_with_fewer_points_than_k_and_empty_clouds() -> None:
    organized = np.zeros((6, 6, 3), np.float32)
    organized[1, 2] = (0.1, 0.2, 0.5)
    organized[4, 4] = (0.2, 0.1, 0.6)
    organized[5, 0] = (0.1, 0.1, 0.4)
    valid, neighbours, _, counts = knn_search(organized, 10, 1.0)
    assert valid.sum() == 3
    assert counts.tolist() == [3, 3, 3]
    assert all(set(neighbours[i, :3].tolist()) == {0, 1, 2} for i in range(3))
    valid, neighbours, _, counts = knn_search(np.zeros((4, 4, 3), np.float32), 10, 1.0)
    assert not valid.any()
    assert neighbours.shape == (0, 10)
    assert counts.shape == (0,)


def test_knn_search_torch_equals_brute_force() -> None:
    points = _steep_cloud(24, 3).reshape(-1, 3)
    points = points[(points != 0).all(-1)]
    neighbours, distances, found = knn_search_torch(torch.from_numpy(points).double(), 30, 0.01)
    expected = _brute_force(points, 30, 0.01)
    for index, reference in enumerate(expected):
        assert set(neighbours[index][found[index]].tolist()) == reference
    assert (distances[:, 1:] >= distances[:, :-1]).all()  # sorted


def _sensor_cloud(shape: str, size: int | tuple[int, int], seed: int, working: int = 96) -> torch.Tensor:
    """A generated cloud ``(1, 3, working, working)``, resized with nearest from the sensor size (as BTM does)."""
    xyz = torch.from_numpy(render_sample(size, seed=seed, shape=shape).xyz).permute(2, 0, 1)[None]
    return F.interpolate(xyz, size=(working, working), mode="nearest")


GEOMETRIES = [
    ("ring45", 128),
    ("ring60", 128),
    ("ring80", 128),
    ("dome", 128),
    ("box", 128),
    ("bagel", (96, 160)),  # non-square sensor resized to a square
    ("ring60", (160, 96)),
]


@pytest.mark.parametrize(("shape", "size"), GEOMETRIES, ids=[f"{s}-{z}" for s, z in GEOMETRIES])
def test_knn_fpfh_matches_open3d_at_the_tails(shape: str, size: int | tuple[int, int]) -> None:
    # Steep walls, silhouettes, holes and resized non-square sensors: the pixel window misses Open3D's
    # neighbourhoods there; the k-NN search finds them, so with Open3D's normal signs every descriptor agrees.
    xyz = _sensor_cloud(shape, size, seed=5)
    reference = compute_fpfh(xyz, backend="open3d")
    ours = compute_fpfh(xyz, backend="torch", normal_orientation="open3d")  # search="knn" is the default
    valid = (xyz != 0).all(dim=1)
    assert torch.equal(valid, (reference != 0).any(dim=1))
    assert torch.equal((ours == 0).all(dim=1), (reference == 0).all(dim=1))
    a, b = reference.permute(0, 2, 3, 1)[valid].T, ours.permute(0, 2, 3, 1)[valid].T
    correlation = per_point_correlation(a, b)
    assert torch.quantile(correlation, 0.05) >= 0.99
    assert torch.quantile(correlation, 0.01) >= 0.95
    # The window search is measurably worse on the same cloud (what the k-NN search fixes).
    window = compute_fpfh(xyz, backend="torch", search="window", normal_orientation="open3d")
    window_correlation = per_point_correlation(a, window.permute(0, 2, 3, 1)[valid].T)
    assert torch.quantile(window_correlation, 0.05) < torch.quantile(correlation, 0.05)


def test_knn_kernels_equal_the_torch_twin_and_float64_equals_open3d() -> None:
    xyz = torch.cat([_sensor_cloud("ring60", 96, seed=1, working=64), make_cloud(64, seed=2)[None]])
    kernel = compute_fpfh(xyz, backend="torch")
    twin = compute_fpfh(xyz, backend="torch", cpu_kernel=False)
    valid = (xyz != 0).all(dim=1)
    a, b = kernel.permute(0, 2, 3, 1)[valid].T, twin.permute(0, 2, 3, 1)[valid].T
    # Same neighbours and arithmetic up to float32 rounding (a pair feature at a bin edge may change bins).
    assert per_point_correlation(a, b).median() > 0.99999
    assert ((a - b).abs().amax(dim=0) > 1).float().mean() < 0.01
    # In float64 the torch twin is Open3D's computation: equal up to rounding, but for a handful of points whose
    # k-th neighbours tie (a regular grid has exact ties: Open3D keeps whichever its tree visits first) or whose pair
    # features sit on a bin edge.
    reference = compute_fpfh(xyz, backend="open3d")
    exact = compute_fpfh(xyz.double(), backend="torch")
    off = (exact - reference).abs().amax(dim=1)[valid]
    assert (off > 1e-2).float().mean() < 1e-2
    c, d = reference.permute(0, 2, 3, 1)[valid].T, exact.permute(0, 2, 3, 1)[valid].T
    assert per_point_correlation(c, d).min() > 0.99


def test_knn_camera_orientation_and_small_radius() -> None:
    xyz = _sensor_cloud("dome", 96, seed=2, working=64)
    camera = compute_fpfh(xyz, backend="torch", normal_orientation="camera")
    twin = compute_fpfh(xyz, backend="torch", normal_orientation="camera", cpu_kernel=False)
    valid = (xyz != 0).all(dim=1)
    a, b = camera.permute(0, 2, 3, 1)[valid].T, twin.permute(0, 2, 3, 1)[valid].T
    assert per_point_correlation(a, b).median() > 0.99999
    # Radii smaller than the neighbourhoods: the radius bounds them, points without neighbours are zero (Open3D too).
    small = compute_fpfh(xyz, backend="torch", voxel_size=0.0002)
    reference = compute_fpfh(xyz, backend="open3d", voxel_size=0.0002)
    assert torch.equal((small == 0).all(dim=1), (reference == 0).all(dim=1))
    assert (small == 0).all(dim=1)[valid].any()


def test_a_knn_module_exports_the_window_graph(tmp_path: Path) -> None:
    # k-NN neighbourhoods are not a fixed-shape graph: exporting FPFHTorch(search="knn") traces the pixel-window
    # graph with the same options, which OpenVINO runs.
    from tests.features.test_fpfh import _export_to_openvino

    module = FPFHTorch(window=5, normal_window=3, cpu_kernel=False).eval()  # search="knn" by default
    cloud = make_cloud(32, seed=7)[None]
    run = _export_to_openvino(module, cloud, tmp_path)
    window = FPFHTorch(search="window", window=5, normal_window=3, cpu_kernel=False)(cloud)
    torch.testing.assert_close(run(cloud), window, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(module(cloud), window)  # eagerly the module computes the k-NN descriptors


def test_valid_points_and_bounds_equal_numpy() -> None:
    from anomalib_btm.features.fpfh_knn import _valid_points

    organized = _steep_cloud(40, 4)
    organized[3, :, 1] = 0.0  # a point is missing when any coordinate is zero
    pixel, points, bounds, spacing = _valid_points(np.ascontiguousarray(organized.transpose(2, 0, 1)))
    valid = (organized != 0).all(axis=-1).reshape(-1)
    np.testing.assert_array_equal(pixel, np.flatnonzero(valid))
    np.testing.assert_array_equal(points, organized.reshape(-1, 3)[valid])
    np.testing.assert_array_equal(bounds, np.stack([points.min(axis=0), points.max(axis=0)]))
    assert 0 < spacing < 0.01
    empty = _valid_points(np.zeros((3, 4, 4), np.float32))
    assert empty[0].shape == (0,)
    assert empty[3] == -1.0


def test_knn_fpfh_results_do_not_share_the_reused_buffers() -> None:
    # The kernels keep their large work arrays from call to call: results must not change with later calls.
    first_cloud = _sensor_cloud("dome", 96, seed=1, working=48)
    first = compute_fpfh(first_cloud, backend="torch")
    kept = first.clone()
    second = compute_fpfh(torch.cat([_sensor_cloud("ring45", 96, seed=2, working=64)] * 2), backend="torch")
    assert torch.equal(first, kept)
    assert torch.equal(second[0], second[1])
    torch.testing.assert_close(compute_fpfh(first_cloud, backend="torch"), first, rtol=0, atol=0)


@pytest.mark.parametrize("ties", [False, True])
def test_kth_distance_is_a_threshold_that_holds_the_take_nearest(ties: bool) -> None:
    # The normal's neighbourhood is cut at this threshold: exactly the take smallest admissible values are at most
    # it, or, when values tie at the take-th, it is that value (the caller drops the excess ties).
    from anomalib_btm.features.fpfh_knn import _kth_distance

    rng = np.random.default_rng(5)
    scratch = np.empty(200, np.float32)
    guess, tied = 0.0, 0
    for trial in range(300):
        m = int(rng.integers(1, 150))
        values = rng.random(m).astype(np.float32)
        if ties:
            values = np.round(values * 12).astype(np.float32) / 12  # many exact ties
        k, limit = int(rng.integers(1, 40)), float(rng.choice([2.0, 0.5, 0.05]))
        threshold, take = _kth_distance(values.copy(), m, k, limit, guess, scratch)
        admissible = np.sort(values[values <= limit])
        assert take == min(k, admissible.size), trial
        if take == 0:
            assert threshold == 0.0
            continue
        assert threshold <= limit
        exact = (values <= threshold).sum() == take
        assert exact or threshold == admissible[take - 1], trial
        tied += 0 if exact else 1
        guess = threshold * float(rng.uniform(0.5, 2.0))
    assert (tied > 0) == ties


def test_knn_fpfh_does_not_depend_on_the_threads() -> None:
    # Each phase runs in row chunks per thread; the search's starting reach follows the previous cell of the chunk.
    xyz = torch.cat([_sensor_cloud("ring60", 96, seed=3, working=64), make_cloud(64, seed=4)[None]])
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(compute_fpfh(xyz, backend="torch"))
    finally:
        torch.set_num_threads(threads)
    assert (results[0] != 0).any()
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], results[2])


def test_weighted_rows_sum_equals_numpy() -> None:
    # The FPFH sum in vector registers (LLVM IR): rows gathered by index, two per step (odd counts padded by the
    # caller with a zero weight), the 40 sums of the padded SPFH table.
    from numba import njit

    from anomalib_btm.features.fpfh_knn import _TABLE_WIDTH, _weighted_rows

    @njit(cache=False)
    def weighted(table: np.ndarray, index: np.ndarray, weight: np.ndarray, count: int) -> np.ndarray:
        total = np.full(_TABLE_WIDTH, np.float32(7.0))
        _weighted_rows(table, index, weight, count, total)
        return total

    rng = np.random.default_rng(3)
    table = rng.random((50, _TABLE_WIDTH)).astype(np.float32)
    for count in (0, 1, 2, 7, 100):
        index = rng.integers(0, 50, count + 1).astype(np.uint32)
        weight = rng.random(count + 1).astype(np.float32)
        weight[count] = 0.0  # the pair padding
        expected = (table[index[:count]].astype(np.float64) * weight[:count, None]).sum(axis=0)
        np.testing.assert_allclose(weighted(table, index, weight, count), expected, rtol=1e-5, atol=1e-6)


def test_gather_columns_equals_numpy() -> None:
    # The SPFH gather (LLVM IR): eight rows of (point, normal, padding) loaded as vectors and transposed to columns,
    # the point's offsets from the origin in the first three.
    from numba import njit

    from anomalib_btm.features.fpfh_knn import _gather_columns

    @njit(cache=False)
    def gather(table: np.ndarray, index: np.ndarray, count: int, origin: np.ndarray) -> np.ndarray:
        columns = np.full((6, index.shape[0]), np.float32(7.0))
        _gather_columns(table, index, count, (origin[0], origin[1], origin[2]), columns)
        return columns

    rng = np.random.default_rng(4)
    table = rng.random((60, 8)).astype(np.float32)
    origin = rng.random(3).astype(np.float32)
    for count in (0, 1, 5, 8, 13, 100):
        index = rng.integers(0, 60, count + 8).astype(np.uint32)  # valid rows up to count rounded up to 8
        columns = gather(table, index, count, origin)
        expected = table[index[:count], :6].T.copy()
        expected[:3] -= origin[:, None]
        np.testing.assert_array_equal(columns[:, :count], expected)


def test_byte_histograms_equal_bincount() -> None:
    # The SPFH's histograms: one pass with four bins per int32 word (counts below 256), or one pass per bin.
    from anomalib_btm.features.fpfh_knn import _byte_histograms, _counted_histograms

    rng = np.random.default_rng(7)
    for m in (0, 1, 7, 99, 255, 300):
        bins = [rng.integers(0, 11, m + 3).astype(np.int32) for _ in range(3)]
        bins[1][:m] = 10  # one bin counts all m (255: the largest byte)
        expected = np.stack([np.bincount(b[:m], minlength=11) for b in bins])
        for histograms in ((_byte_histograms,) if m < 256 else ()) + (_counted_histograms,):
            histogram = np.full((3, 11), -1, np.int32)
            histograms(*bins, m, histogram)
            np.testing.assert_array_equal(histogram, expected)


def test_nearest_keeps_the_first_ties_with_their_indices_and_offsets() -> None:
    # The selection with ties at the take-th value (the compaction then keeps more than take): the values below it and
    # the first ties in storage order stay, each with its own index and offsets, in order.
    from numba import njit

    from anomalib_btm.features.fpfh_knn import _nearest

    @njit(cache=False)
    def nearest(
        values: np.ndarray, m: int, k: int, index: np.ndarray, points: np.ndarray, query: np.ndarray
    ) -> tuple[float, int, np.ndarray, np.ndarray]:
        scratch = np.empty(m, np.float32)
        out_index = np.full(m + 8, -7, np.int32)
        out_offsets = np.full((3, m + 8), np.float32(7.0))
        kth, take = _nearest(values, m, k, 1e9, 0.0, scratch, index, points, (query[0], query[1], query[2]),
                             out_index, out_offsets)  # fmt: skip
        return kth, take, out_index, out_offsets

    rng = np.random.default_rng(8)
    query = rng.random(3).astype(np.float32)
    for m, k in ((60, 10), (61, 30), (200, 100), (9, 9)):
        values = np.full(m + 8, np.nan, np.float32)
        values[:m] = rng.integers(0, 12, m).astype(np.float32)  # many ties at every value
        index = rng.permutation(5000)[: m + 8].astype(np.int32)
        points = rng.random((3, m + 8)).astype(np.float32)
        kth_value = np.sort(values[:m])[k - 1]
        below = np.flatnonzero(values[:m] < kth_value)
        ties = np.flatnonzero(values[:m] == kth_value)[: k - below.size]
        kept = np.sort(np.concatenate([below, ties]))
        selected = values.copy()
        kth, take, out_index, out_offsets = nearest(selected, m, k, index, points, query)
        assert take == k
        assert kth >= kth_value  # a bound at least the take-th value, below what is left out (ties: the value itself)
        left_out = np.setdiff1d(np.arange(m), kept)
        assert (values[left_out] > kth).all() or (kth == kth_value and (values[left_out] >= kth).all())
        np.testing.assert_array_equal(selected[:take], values[kept])
        np.testing.assert_array_equal(out_index[:take], index[kept])
        np.testing.assert_array_equal(out_offsets[:, :take], points[:, kept] - query[:, None])


@pytest.mark.parametrize("avx2", [None, False])
def test_compact_neighbours_equals_numpy(avx2: bool | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The selection's compaction (LLVM IR): eight comparisons as a mask, whose left-packed lanes permute the values,
    # indices and offsets of the eight candidates (AVX2 where the target has it, else lane by lane: both checked).
    from numba import njit

    from anomalib_btm.features import fpfh_knn
    from anomalib_btm.features.fpfh_knn import _PACKED_LANES, _compact_neighbours

    monkeypatch.setattr(fpfh_knn, "_AVX2_PERMUTE", avx2)

    @njit(cache=False)
    def compact(
        values: np.ndarray, m: int, threshold: np.float32, index: np.ndarray, points: np.ndarray, query: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray]:
        out_index = np.full(values.shape[0], -7, np.int32)
        out_offsets = np.full((3, values.shape[0]), np.float32(7.0))
        written = _compact_neighbours(values, m, threshold, _PACKED_LANES, index, points,
                                      (query[0], query[1], query[2]), out_index, out_offsets)  # fmt: skip
        return written, out_index, out_offsets

    rng = np.random.default_rng(6)
    query = rng.random(3).astype(np.float32)
    for m in (0, 1, 7, 8, 9, 100, 353):
        values = np.full(m + 8, np.nan, np.float32)
        values[:m] = np.round(rng.random(m) * 20) / 20  # ties at the threshold
        index = rng.permutation(1000)[: m + 8].astype(np.int32)
        points = rng.random((3, m + 8)).astype(np.float32)
        for threshold in (-1.0, 0.0, 0.5, 1.0, np.inf):
            kept = np.flatnonzero(values[:m] <= threshold)
            compacted = values.copy()
            written, out_index, out_offsets = compact(compacted, m, np.float32(threshold), index, points, query)
            assert written == kept.size
            np.testing.assert_array_equal(compacted[:written], values[kept])
            np.testing.assert_array_equal(out_index[:written], index[kept])
            np.testing.assert_array_equal(out_offsets[:, :written], points[:, kept] - query[:, None])


@pytest.mark.parametrize(("size", "grid", "padding"), [((64, 64), (8, 8), True), ((72, 56), (9, 7), False),
                                                       ((60, 50), (13, 11), True)])  # fmt: skip
def test_pooled_knn_fpfh_equals_the_pooled_map(size: tuple[int, int], grid: tuple[int, int], padding: bool) -> None:
    # The fused kernels add each point into its patch cells (chunk bands summed after); the map pooled after agrees.
    xyz = torch.cat([_sensor_cloud("ring60", 96, seed=5, working=size[0]), _sensor_cloud("dome", 96, seed=6,
                                                                                         working=size[0])])  # fmt: skip
    xyz = F.interpolate(xyz, size=size, mode="nearest")
    xyz[1, :, : size[0] // 3] = 0  # missing rows: empty chunk bands and cells
    pooling = patch_pooling(size, grid, padding)
    expected = XYZBranch(patch_padding=padding).pool(compute_fpfh(xyz), grid)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(compute_fpfh(xyz, pooling=pooling))
    finally:
        torch.set_num_threads(threads)
    assert results[0].shape == (2, 33, *grid)
    torch.testing.assert_close(results[0], expected, rtol=1e-5, atol=1e-4)
    # The same float sums on any number of threads (DDP ranks run one thread each and must build the same bank).
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], results[2])
    assert (expected[1, :, 0] == 0).all()
    assert (expected[1] != 0).any()


def test_pooling_applies_to_every_fpfh_path() -> None:
    xyz = make_cloud(32, seed=7)[None]
    pooling = patch_pooling((32, 32), (4, 4))
    for backend, options in [("torch", {"cpu_kernel": False}), ("torch", {"search": "window"}), ("open3d", {})]:
        maps = compute_fpfh(xyz, backend=backend, **options)
        pooled = compute_fpfh(xyz, backend=backend, pooling=pooling, **options)
        assert pooled.shape == (1, 33, 4, 4)
        # The model's own pooling (AvgPool2d 3 × 3, then the pooling to the grid), not the same einsum again.
        torch.testing.assert_close(pooled, XYZBranch().pool(maps, (4, 4)), rtol=1e-5, atol=1e-4)
        assert (pooled != 0).any()
    with pytest.raises(ValueError, match=r"matrices take maps of 64×64 pixels but the clouds are 32×32"):
        compute_fpfh(xyz, pooling=patch_pooling((64, 64), (8, 8)))
