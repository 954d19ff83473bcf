# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests of the fused CPU kernels of the pixel-window search (``search="window"``) against the torch graph."""

from __future__ import annotations

import math
import multiprocessing

import numpy as np
import pytest
import torch

from anomalib_btm.features import compute_fpfh
from anomalib_btm.features import fpfh_numba as kernels
from anomalib_btm.features.fpfh_torch import smallest_eigenvector
from tests.features.test_fpfh import make_cloud, per_point_correlation


def _clouds() -> torch.Tensor:
    """Two 64×80 clouds (non-square, holes, a missing disc border), one of them tilted and moved."""
    first = make_cloud(80, seed=11)[:, :64]
    second = make_cloud(80, seed=12, hole_fraction=0.05)[:, 8:72] * 1.3
    return torch.stack([first, second])


def _agreement(kernel: torch.Tensor, graph: torch.Tensor, xyz: torch.Tensor) -> tuple[float, float, float]:
    """Median per-point correlation, share of points off by > 1e-3 and share off by > 1 (of 200 per group)."""
    valid = (xyz != 0).all(dim=1)
    a, b = kernel.permute(0, 2, 3, 1)[valid].T, graph.permute(0, 2, 3, 1)[valid].T
    off = (a - b).abs().amax(dim=0)
    return (
        float(per_point_correlation(a, b).median()),
        float((off > 1e-3).float().mean()),
        float((off > 1).float().mean()),
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normal_orientation": "open3d"},
        {"selection": "exact"},
        {"window": 5, "normal_window": 3},
        {"window": 13, "normal_window": 9, "max_nn": 140, "normal_max_nn": 50},
        {"voxel_size": 0.002},  # radii inside the neighbourhoods: the radius, not max_nn, bounds them
        {"window": 33, "normal_window": 3, "max_nn": 900},  # 1089 candidates: three words of histogram fields
    ],
    ids=["defaults", "open3d-signs", "exact", "small-windows", "large-windows", "small-radius", "huge-window"],
)
def test_kernels_equal_the_torch_graph(options: dict) -> None:
    xyz = _clouds()
    options = {"search": "window", "normal_orientation": "camera", **options}
    kernel = compute_fpfh(xyz, backend="torch", cpu_kernel=True, **options)
    graph = compute_fpfh(xyz, backend="torch", cpu_kernel=False, **options)
    assert kernel.shape == graph.shape
    assert kernel.dtype == torch.float32
    assert graph.abs().sum() > 0
    # Same zeros (missing points, points without neighbours).
    assert torch.equal((kernel == 0).all(dim=1), (graph == 0).all(dim=1))
    # Same arithmetic up to float32 rounding: a pair feature within rounding of a bin edge may change bins (and
    # move the neighbours' weighted sums a little); nothing else differs.
    correlation, off_rounding, off_a_bin = _agreement(kernel, graph, xyz)
    assert correlation > 0.99999
    assert off_rounding < 0.05
    assert off_a_bin < 0.01


def test_kernels_are_the_default_for_float32_cpu_input(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.Size] = []
    original = kernels.fpfh_numba

    def spy(xyz: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(xyz.shape)
        return original(xyz, *args, **kwargs)

    monkeypatch.setattr(kernels, "fpfh_numba", spy)
    xyz = make_cloud(24, seed=3)[None]
    compute_fpfh(xyz, backend="torch", search="window")
    compute_fpfh(xyz.half(), backend="torch", search="window")  # computed in float32
    assert len(calls) == 2
    # The graph where it is needed: float64, autograd, explicitly off.
    compute_fpfh(xyz.double(), backend="torch", search="window")
    compute_fpfh(xyz.clone().requires_grad_(), backend="torch", search="window")
    compute_fpfh(xyz, backend="torch", cpu_kernel=False, search="window")
    assert len(calls) == 2


def test_thread_count_does_not_change_the_result() -> None:
    xyz = _clouds()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = compute_fpfh(xyz, backend="torch")
        torch.set_num_threads(3)  # more chunks than rows of some clouds do not matter either
        several = compute_fpfh(xyz, backend="torch")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, several)  # rows are independent: bit-identical


def _child(queue: multiprocessing.Queue) -> None:
    features = compute_fpfh(make_cloud(24, seed=5)[None], backend="torch")
    queue.put(float(features.sum()))


def test_works_in_a_forked_child_after_the_parent_used_the_pool() -> None:
    # DataLoader workers fork: the parent's pool threads do not exist in the child, the child must not wait on them.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = float(compute_fpfh(make_cloud(24, seed=5)[None], backend="torch").sum())
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child, args=(queue,))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == 0, "the forked child did not finish"
        assert queue.get(timeout=5) == pytest.approx(expected, rel=1e-6)
    finally:
        torch.set_num_threads(threads)


def _random_covariances(count: int, seed: int) -> np.ndarray:
    """Symmetric positive semi-definite 3×3 matrices: random, rank one and two, diagonal, zero, identity."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(count, 12, 3)) * rng.uniform(1e-4, 1.0, size=(count, 1, 3))
    points[: count // 8, :, 2] = 0.0  # planar neighbourhoods (rank two)
    points[count // 8 : count // 4, :, 1:] = 0.0  # lines (rank one)
    centred = points - points.mean(axis=1, keepdims=True)
    matrices = np.einsum("nki,nkj->nij", centred, centred) / 12
    matrices[-4] = np.diag([3.0, 1.0, 2.0])
    matrices[-3] = np.diag([1.0, 1.0, 1.0])
    matrices[-2] = 0.0
    matrices[-1] = np.diag([2.0, 2.0, 1.0])
    return matrices.astype(np.float32)


def test_eigen_solver_equals_the_tensor_solver() -> None:
    matrices = _random_covariances(2000, seed=0)
    entries = np.stack([matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2], matrices[:, 1, 1], matrices[:, 1, 2],
                        matrices[:, 2, 2]])  # fmt: skip
    expected = torch.stack(smallest_eigenvector(tuple(torch.from_numpy(e) for e in entries)), dim=1).numpy()
    ours = np.empty((3, len(matrices)), np.float32)
    kernels._smallest_eigenvectors(np.ascontiguousarray(entries), ours)  # vectorised across the matrices
    ours = ours.T
    # Same construction, same sign (Open3D's): equal to float32 rounding (amplified where two eigenvalues are
    # close; acos, sin and cos are float32 polynomials here), the special cases (diagonal, identity, zero, a repeated
    # largest eigenvalue) exactly.
    values, vectors = np.linalg.eigh(matrices[:-4].astype(np.float64))
    distinct = values[:, 1] - values[:, 0] > 1e-3 * values[:, 2]
    separated = values[:, 1] - values[:, 0] > 1e-2 * values[:, 2]  # closer: both solvers err alike, ~1e-3
    assert separated.mean() > 0.75
    np.testing.assert_allclose(ours[:-4][separated], expected[:-4][separated], atol=1e-4)
    assert (np.abs(ours - expected)[:-4][separated].max(axis=1) > 1e-5).mean() < 0.01
    np.testing.assert_array_equal(ours[-4:], expected[-4:])
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # And it is the smallest eigenvector.
    alignment = np.abs(np.einsum("ni,ni->n", vectors[:, :, 0], ours[:-4]))
    assert (alignment[distinct] > 0.999).all()


def test_polynomial_atan2_matches_the_library_function() -> None:
    angles = np.linspace(-math.pi, math.pi, 20001)
    radii = np.geomspace(1e-6, 1e3, 7)
    for radius in radii:
        y, x = (radius * np.sin(angles)).astype(np.float32), (radius * np.cos(angles)).astype(np.float32)
        ours = np.array([kernels._atan2(a, b) for a, b in zip(y, x, strict=True)])
        np.testing.assert_allclose(ours, np.arctan2(y, x), rtol=0, atol=1e-6)
    # Signed zeros as torch.atan2 treats them: -0.0 over a negative x is -pi (the first bin), +0.0 is +pi.
    for y, x in [(-0.0, -1.0), (0.0, -1.0), (-0.0, 1.0), (0.0, 0.0), (-0.0, 0.0)]:
        expected = float(torch.atan2(torch.tensor(y), torch.tensor(x)))
        assert kernels._atan2(np.float32(y), np.float32(x)) == expected
