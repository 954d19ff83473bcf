# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests of the FPFH features (Open3D reference backend and torch backend)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalib_btm.features import FPFH_DIM, compute_fpfh
from anomalib_btm.features.fpfh_torch import FPFHTorch


def make_cloud(
    size: int = 64,
    seed: int = 0,
    depth: float = 0.5,
    width_m: float = 0.15,
    hole_fraction: float = 0.01,
    disc: bool = True,
    bumps: int = 6,
) -> torch.Tensor:
    """Organized cloud ``(3, size, size)`` of a bumpy, tilted height field seen by a pinhole camera at the origin.

    ``width_m`` metres of surface span the image at ``depth`` metres. Points outside a centred disc (if ``disc``)
    and a random ``hole_fraction`` of pixels are missing, i.e. exactly (0, 0, 0).
    """
    rng = np.random.default_rng(seed)
    focal = size * depth / width_m
    centre = (size - 1) / 2
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    xn, yn = (u - centre) / focal, (v - centre) / focal
    x0, y0 = xn * depth, yn * depth
    z = depth + 0.2 * x0 + 0.1 * y0
    for _ in range(bumps):
        cx, cy = rng.uniform(-width_m / 3, width_m / 3, 2)
        sigma = rng.uniform(0.01, 0.03)
        amplitude = rng.uniform(-0.01, 0.01)
        z = z + amplitude * np.exp(-((x0 - cx) ** 2 + (y0 - cy) ** 2) / (2 * sigma**2))
    xyz = np.stack([xn * z, yn * z, z]).astype(np.float32)
    valid = rng.random((size, size)) > hole_fraction
    if disc:
        valid &= (u - centre) ** 2 + (v - centre) ** 2 < (0.45 * size) ** 2
    return torch.from_numpy(xyz * valid)


def rigid_transform(
    xyz: torch.Tensor, angle: float, axis: tuple[float, float, float], shift: tuple[float, ...]
) -> torch.Tensor:
    """Rotate (Rodrigues) and translate the valid points of ``(B, 3, H, W)`` clouds; missing points stay zero."""
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    cross = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    rotation = torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    mask = (xyz != 0).all(dim=1, keepdim=True)
    moved = torch.einsum("ij,bjhw->bihw", rotation, xyz.double()) + torch.tensor(shift, dtype=torch.float64).view(
        1, 3, 1, 1
    )
    return (moved * mask).float()


def per_point_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the 33-d descriptors ``(33, N)`` point by point."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)


@pytest.fixture(scope="module")
def cloud() -> torch.Tensor:
    return make_cloud(96, seed=1)[None]


@pytest.fixture(scope="module")
def open3d_fpfh(cloud: torch.Tensor) -> torch.Tensor:
    return compute_fpfh(cloud, backend="open3d")


# --------------------------------------------------------------------------------------------- open3d backend


def test_open3d_shape_dtype_and_group_sums(cloud: torch.Tensor, open3d_fpfh: torch.Tensor) -> None:
    assert open3d_fpfh.shape == (1, FPFH_DIM, 96, 96)
    assert open3d_fpfh.dtype == torch.float32
    assert open3d_fpfh.device == cloud.device
    valid = (cloud != 0).all(dim=1)[0]
    groups = open3d_fpfh[0].reshape(3, 11, 96, 96).sum(dim=1)
    torch.testing.assert_close(groups[:, valid], torch.full_like(groups[:, valid], 200.0), rtol=0, atol=1e-3)
    assert (open3d_fpfh >= 0).all()


def test_open3d_invalid_points_are_zero(cloud: torch.Tensor, open3d_fpfh: torch.Tensor) -> None:
    invalid = ~(cloud != 0).all(dim=1)[0]
    assert invalid.sum() > 100
    assert (open3d_fpfh[0][:, invalid] == 0).all()


@pytest.mark.parametrize("backend", ["open3d", "torch"])
def test_point_with_one_zero_coordinate_is_invalid(backend: str) -> None:
    xyz = make_cloud(32, seed=2, disc=False, hole_fraction=0.0)[None]
    xyz[0, 0, 10, 10] = 0.0  # x = 0 only: the point counts as missing (BTF tests all(p != 0))
    features = compute_fpfh(xyz, backend=backend)
    assert (features[0, :, 10, 10] == 0).all()
    assert (features[0, :, 10, 11] != 0).any()


def test_open3d_batch_equals_single_clouds() -> None:
    clouds = torch.stack([make_cloud(64, seed=s) for s in range(3)])
    clouds[1] = 0.0  # an empty cloud inside the batch
    batched = compute_fpfh(clouds, backend="open3d")
    for index in range(3):
        single = compute_fpfh(clouds[index : index + 1], backend="open3d")
        torch.testing.assert_close(batched[index : index + 1], single, rtol=0, atol=0)
    assert (batched[1] == 0).all()


def test_open3d_translation_invariance(cloud: torch.Tensor, open3d_fpfh: torch.Tensor) -> None:
    # Normals and neighbourhoods do not change; only float32 rounding of the moved input can push a pair feature
    # over a bin edge, so descriptors agree almost everywhere and correlate everywhere.
    moved = rigid_transform(cloud, 0.0, (0.0, 0.0, 1.0), (0.05, -0.03, 0.1))
    valid = (cloud != 0).all(dim=1)[0]
    a, b = open3d_fpfh[0][:, valid], compute_fpfh(moved, backend="open3d")[0][:, valid]
    close = ((a - b).abs().amax(dim=0) < 1e-2).float().mean()
    assert close > 0.9
    assert per_point_correlation(a, b).min() > 0.95


@pytest.mark.parametrize("angle", [0.4, 2.0])
def test_open3d_rotation_invariance(cloud: torch.Tensor, open3d_fpfh: torch.Tensor, angle: float) -> None:
    # FPFH is rotation invariant for fixed normals, but Open3D leaves the normal sign to its closed-form eigen
    # solver, whose sign convention depends on the frame: some normals flip under rotation and change their
    # point's (and their neighbours') histograms. What holds: most points keep their descriptor.
    moved = rigid_transform(cloud, angle, (1.0, 2.0, 3.0), (0.1, -0.2, 0.3))
    valid = (cloud != 0).all(dim=1)[0]
    a, b = open3d_fpfh[0][:, valid], compute_fpfh(moved, backend="open3d")[0][:, valid]
    correlation = per_point_correlation(a, b)
    assert correlation.median() > 0.999
    assert (correlation > 0.99).float().mean() > 0.8


@pytest.mark.parametrize("n_valid", [0, 1, 2, 3])
def test_open3d_tiny_clouds(n_valid: int) -> None:
    xyz = torch.zeros(1, 3, 8, 8)
    points = torch.tensor([[0.01, 0.02, 0.5], [0.012, 0.021, 0.5], [0.011, 0.025, 0.501]])
    for index in range(n_valid):
        xyz[0, :, 2, 2 + index] = points[index]
    features = compute_fpfh(xyz, backend="open3d")
    assert features.shape == (1, FPFH_DIM, 8, 8)
    assert torch.isfinite(features).all()
    valid = (xyz != 0).all(dim=1)[0]
    assert (features[0][:, ~valid] == 0).all()
    if n_valid == 1:
        assert (features == 0).all()  # no neighbour, no histogram
    if n_valid >= 2:
        torch.testing.assert_close(
            features[0][:, valid].reshape(3, 11, -1).sum(1), torch.full((3, n_valid), 200.0), rtol=0, atol=1e-3
        )


# --------------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("backend", ["open3d", "torch"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_raises(backend: str, bad: float) -> None:
    xyz = make_cloud(16)[None]
    xyz[0, 2, 3, 3] = bad
    with pytest.raises(ValueError, match=r"`xyz`.*(0, 0, 0)"):
        compute_fpfh(xyz, backend=backend)


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 4, 16, 16), (1, 16, 16, 3), (1, 1, 3, 16, 16)])
def test_wrong_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        compute_fpfh(torch.ones(shape))


def test_torch_is_the_default_backend() -> None:
    xyz = make_cloud(24, seed=8)[None]
    torch.testing.assert_close(compute_fpfh(xyz), compute_fpfh(xyz, backend="torch"), rtol=0, atol=0)


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(ValueError, match="'open3d', 'torch'"):
        compute_fpfh(torch.zeros(1, 3, 8, 8), backend="pcl")


def test_integer_input_raises() -> None:
    with pytest.raises(ValueError, match="floating point"):
        compute_fpfh(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


# --------------------------------------------------------------------------------------------- torch backend


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-point L1 distance of ``(33, N)`` descriptors relative to their total mass (600)."""
    return (a - b).abs().sum(0) / 600.0


WINDOW = {"search": "window", "normal_orientation": "camera"}
"""The pixel-window search with camera-facing normals (the exportable graph; the default before true k-NN)."""


@pytest.fixture(scope="module")
def torch_fpfh(cloud: torch.Tensor) -> torch.Tensor:
    return compute_fpfh(cloud, backend="torch", **WINDOW)


IMPLEMENTATIONS = pytest.mark.parametrize("cpu_kernel", [True, False], ids=["kernel", "graph"])
"""The torch backend's two CPU implementations: the fused Numba kernels (default) and the torch graph."""


@IMPLEMENTATIONS
def test_torch_shape_dtype_group_sums_and_zeros(cloud: torch.Tensor, cpu_kernel: bool) -> None:
    torch_fpfh = compute_fpfh(cloud, backend="torch", cpu_kernel=cpu_kernel)
    assert torch_fpfh.shape == (1, FPFH_DIM, 96, 96)
    assert torch_fpfh.dtype == torch.float32
    assert torch.isfinite(torch_fpfh).all()
    valid = (cloud != 0).all(dim=1)[0]
    groups = torch_fpfh[0].reshape(3, 11, 96, 96).sum(dim=1)
    torch.testing.assert_close(groups[:, valid], torch.full_like(groups[:, valid], 200.0), rtol=0, atol=1e-3)
    assert (torch_fpfh[0][:, ~valid] == 0).all()
    assert (torch_fpfh >= 0).all()


def test_torch_equals_open3d_with_open3d_settings() -> None:
    # A window holding every neighbourhood, exact selection, Open3D's normal signs and float64: same numbers.
    cloud = make_cloud(32, seed=4).double()[None]
    reference = compute_fpfh(cloud, backend="open3d")
    ours = compute_fpfh(
        cloud,
        backend="torch",
        search="window",
        window=21,
        normal_window=13,
        selection="exact",
        normal_orientation="open3d",
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-3)


def test_torch_parity_with_open3d_defaults(
    cloud: torch.Tensor, open3d_fpfh: torch.Tensor, torch_fpfh: torch.Tensor
) -> None:
    # Window search: 11×11 window, fast selection, camera-facing normals, float32. Open3D's normals differ in sign
    # for some points, which changes their histograms; the bulk of the descriptors agrees.
    valid = (cloud != 0).all(dim=1)[0]
    a, b = open3d_fpfh[0][:, valid], torch_fpfh[0][:, valid]
    correlation = per_point_correlation(a, b)
    assert correlation.median() > 0.99
    assert (correlation > 0.9).float().mean() > 0.9
    assert relative_l1(a, b).median() < 0.05


def test_torch_parity_with_open3d_normal_signs(cloud: torch.Tensor, open3d_fpfh: torch.Tensor) -> None:
    valid = (cloud != 0).all(dim=1)[0]
    ours = compute_fpfh(cloud, backend="torch", search="window", normal_orientation="open3d")
    a, b = open3d_fpfh[0][:, valid], ours[0][:, valid]
    correlation = per_point_correlation(a, b)
    assert correlation.median() > 0.999
    assert (correlation > 0.99).float().mean() > 0.98
    assert relative_l1(a, b).mean() < 0.02


@IMPLEMENTATIONS
def test_torch_batch_equals_single_clouds(cpu_kernel: bool) -> None:
    clouds = torch.stack([make_cloud(32, seed=s) for s in range(3)])
    clouds[2] = 0.0
    batched = compute_fpfh(clouds, backend="torch", cpu_kernel=cpu_kernel)
    for index in range(3):
        single = compute_fpfh(clouds[index : index + 1], backend="torch", cpu_kernel=cpu_kernel)
        torch.testing.assert_close(batched[index : index + 1], single, rtol=0, atol=1e-4)
    assert (batched[2] == 0).all()
    chunked = compute_fpfh(clouds, backend="torch", batch_chunk=2, cpu_kernel=cpu_kernel)
    torch.testing.assert_close(chunked, batched, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("angle", "shift"), [(0.0, (0.02, -0.01, 0.05)), (0.3, (0.0, 0.0, 0.0)), (0.5, (0.01, 0.02, 0.1))]
)
def test_torch_rigid_invariance(
    cloud: torch.Tensor, torch_fpfh: torch.Tensor, angle: float, shift: tuple[float, ...]
) -> None:
    # Window neighbourhoods follow the pixel grid and distances are invariant, normals face the camera (the surface
    # still faces it after these motions): descriptors only move by float32 rounding at bin edges.
    moved = rigid_transform(cloud, angle, (1.0, 2.0, 3.0), shift)
    valid = (cloud != 0).all(dim=1)[0]
    a, b = torch_fpfh[0][:, valid], compute_fpfh(moved, backend="torch", **WINDOW)[0][:, valid]
    correlation = per_point_correlation(a, b)
    assert correlation.median() > 0.9999
    assert (correlation > 0.99).float().mean() > 0.99


def test_torch_invalid_options_raise() -> None:
    xyz = make_cloud(16)[None]
    with pytest.raises(ValueError, match="odd"):
        compute_fpfh(xyz, backend="torch", window=12)
    with pytest.raises(ValueError, match="normal_orientation"):
        compute_fpfh(xyz, backend="torch", normal_orientation="up")
    with pytest.raises(ValueError, match="selection"):
        compute_fpfh(xyz, backend="torch", selection="sorted")
    with pytest.raises(ValueError, match="search"):
        compute_fpfh(xyz, backend="torch", search="kdtree")
    with pytest.raises(ValueError, match="normal_max_nn"):
        compute_fpfh(xyz, backend="torch", max_nn=20, normal_max_nn=30)
    with pytest.raises(ValueError, match="search='window'"):
        compute_fpfh(xyz, backend="torch", compile=True)
    with pytest.raises(ValueError, match="backend='torch'"):
        compute_fpfh(xyz, backend="open3d", window=11)


def _zero_pattern(features: torch.Tensor) -> torch.Tensor:
    return (features[0] == 0).all(dim=0)


def _plane(size: int, tilt: float) -> torch.Tensor:
    focal, centre = size / 0.3, (size - 1) / 2
    v, u = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    xn, yn = (u - centre) / focal, (v - centre) / focal
    z = 0.5 / (1 - tilt * xn)  # plane z = 0.5 + tilt * x seen through the pixel rays
    return torch.stack([xn * z, yn * z, z]).float()[None]


def _edge_case(name: str) -> torch.Tensor:
    xyz = torch.zeros(1, 3, 24, 24)
    if name == "all missing":
        return xyz
    if name == "one point":
        xyz[0, :, 5, 7] = torch.tensor([0.01, 0.02, 0.5])
        return xyz
    if name == "frontal plane":
        return _plane(24, 0.0)
    if name == "tilted plane":
        return _plane(24, 1.0)
    if name == "line":
        line = _plane(24, 0.3)
        xyz[0, :, 10] = line[0, :, 10]
        return xyz
    if name == "duplicates":
        xyz = _plane(24, 0.2)
        xyz[0, :, :, 12:16] = xyz[0, :, :, 12:13]  # four identical columns: duplicated points
        return xyz
    if name == "huge":
        return make_cloud(24, seed=6)[None] * 1000.0  # 0.2 m point spacing at 500 m: no neighbours within 0.25 m
    if name == "tiny":
        return make_cloud(24, seed=6)[None] * 1e-4
    if name == "far offset":
        moved = make_cloud(24, seed=6)[None] + torch.tensor([50.0, -30.0, 100.0]).view(1, 3, 1, 1)
        return moved * (make_cloud(24, seed=6)[None] != 0).all(dim=1, keepdim=True)
    raise ValueError(name)


EDGE_CASES = [
    "all missing",
    "one point",
    "frontal plane",
    "tilted plane",
    "line",
    "duplicates",
    "huge",
    "tiny",
    "far offset",
]


@IMPLEMENTATIONS
@pytest.mark.parametrize("name", EDGE_CASES)
def test_torch_edge_cases(name: str, cpu_kernel: bool) -> None:
    xyz = _edge_case(name)
    ours = compute_fpfh(xyz, backend="torch", cpu_kernel=cpu_kernel, normal_orientation="camera")
    reference = compute_fpfh(xyz, backend="open3d")
    assert torch.isfinite(ours).all()
    assert torch.equal(_zero_pattern(ours), _zero_pattern(reference))
    valid = (xyz != 0).all(dim=1)[0]
    assert (ours[0][:, ~valid] == 0).all()
    has = ~_zero_pattern(ours)
    if has.any():
        sums = ours[0][:, has].reshape(3, 11, -1).sum(1)
        torch.testing.assert_close(sums, torch.full_like(sums, 200.0), rtol=0, atol=1e-3)
    if name in {"frontal plane", "tilted plane"}:
        # Every pair feature of a plane is zero (middle bins) once the normals agree; Open3D's unoriented normals
        # take random signs on an exact plane (its covariance is pure rounding noise along the normal), so only
        # the oriented torch result has a definite value.
        expected = torch.zeros(FPFH_DIM)
        expected[[5, 16, 27]] = 200.0
        torch.testing.assert_close(ours[0][:, valid].T, expected.expand(int(valid.sum()), -1), rtol=0, atol=1e-3)
    if name in {"duplicates", "tiny", "far offset"}:
        # With Open3D's normal signs the descriptors follow Open3D's (a line's normal is rounding noise in both).
        same_signs = compute_fpfh(xyz, backend="torch", normal_orientation="open3d", cpu_kernel=cpu_kernel)
        correlation = per_point_correlation(reference[0][:, has], same_signs[0][:, has])
        assert correlation.median() > 0.99
    if name == "tiny":  # FPFH is scale free while every neighbourhood is within the radius
        unscaled = compute_fpfh(xyz * 1e4, backend="torch", cpu_kernel=cpu_kernel, normal_orientation="camera")
        torch.testing.assert_close(ours, unscaled, rtol=0, atol=1e-2)


@IMPLEMENTATIONS
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(4, 20),
    hole_fraction=st.floats(0.0, 0.9),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_torch_random_clouds_properties(
    seed: int, size: int, hole_fraction: float, scale: float, cpu_kernel: bool
) -> None:
    xyz = make_cloud(size, seed=seed, hole_fraction=hole_fraction, disc=False)[None] * scale
    ours = compute_fpfh(xyz, backend="torch", window=7, normal_window=5, cpu_kernel=cpu_kernel)
    reference = compute_fpfh(xyz, backend="open3d")
    assert torch.isfinite(ours).all()
    valid = (xyz != 0).all(dim=1)[0]
    assert (ours[0][:, ~valid] == 0).all()
    has = ~_zero_pattern(ours)
    sums = ours[0][:, has].reshape(3, 11, -1).sum(1)
    torch.testing.assert_close(sums, torch.full_like(sums, 200.0), rtol=0, atol=1e-3)
    # A neighbour found in the window is within the radius, so Open3D finds it too: where Open3D gives zeros
    # (no neighbour at all), so does the torch backend. (The converse fails only for neighbours outside the window.)
    assert not (_zero_pattern(reference) & ~_zero_pattern(ours)).any()


def _export_to_openvino(
    module: torch.nn.Module, xyz: torch.Tensor, tmp_path: Path
) -> Callable[[torch.Tensor], torch.Tensor]:
    ov = pytest.importorskip("openvino")
    from anomalib_btm.models.btm.export import fold_constants

    # As `fpfh="graph"` exports do: constant folding instead of the exporter's optimizer (2.3× faster, same graph).
    program = torch.onnx.export(
        module, (xyz,), dynamo=True, input_names=["xyz"], output_names=["fpfh"], verbose=False, optimize=False
    )
    fold_constants(program)
    path = tmp_path / "fpfh.onnx"
    program.save(str(path))
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU")
    return lambda cloud: torch.from_numpy(compiled(cloud.numpy())[0])


def _check_export(module: torch.nn.Module, size: int, tmp_path: Path) -> None:
    clouds = [make_cloud(size, seed=seed)[None] for seed in (7, 8)]
    run = _export_to_openvino(module.eval(), clouds[0], tmp_path)
    for cloud in clouds:  # the exported graph is not tied to the example cloud
        expected = module(cloud)
        assert expected.abs().sum() > 0
        torch.testing.assert_close(run(cloud), expected, rtol=1e-4, atol=1e-3)


def test_export_openvino_small_window(tmp_path: Path) -> None:
    # The exported graph is the torch graph, compare it with the torch graph run eagerly.
    _check_export(FPFHTorch(search="window", window=5, normal_window=3, cpu_kernel=False), 32, tmp_path)


@pytest.mark.slow
def test_export_openvino_defaults(tmp_path: Path) -> None:
    _check_export(FPFHTorch(search="window", cpu_kernel=False), 64, tmp_path)


@pytest.mark.slow
def test_compiled_matches_eager() -> None:
    clouds = torch.stack([make_cloud(48, seed=s) for s in (9, 10)])
    eager = compute_fpfh(clouds, backend="torch", cpu_kernel=False, search="window")
    compiled = compute_fpfh(clouds, backend="torch", compile=True, search="window")
    valid = (clouds != 0).all(dim=1)
    a, b = eager.permute(0, 2, 3, 1)[valid].T, compiled.permute(0, 2, 3, 1)[valid].T
    # Fused float32 arithmetic may move a pair feature across a bin edge; descriptors otherwise agree exactly.
    assert ((a - b).abs().amax(dim=0) < 1e-3).float().mean() > 0.99
    assert per_point_correlation(a, b).min() > 0.9


@pytest.mark.parametrize(
    ("backend", "options"), [("open3d", {}), ("torch", {"cpu_kernel": True}), ("torch", {"cpu_kernel": False})]
)
@pytest.mark.parametrize("shape", [(0, 3, 16, 16), (2, 3, 1, 1), (1, 3, 2, 3)])
def test_degenerate_shapes(backend: str, options: dict, shape: tuple[int, ...]) -> None:
    xyz = torch.ones(shape)  # all points identical: pair features are zero, distances too (no 1/d² weights)
    features = compute_fpfh(xyz, backend=backend, **options)
    assert features.shape == (shape[0], FPFH_DIM, *shape[2:])
    assert torch.isfinite(features).all()
    torch.testing.assert_close(features, compute_fpfh(xyz, backend="open3d"), rtol=0, atol=1e-4)


@pytest.mark.parametrize("height", [45, 48])
def test_banded_eager_path_equals_the_whole_map_graph(height: int) -> None:
    from anomalib_btm.features.fpfh_torch import _fpfh_stages

    clouds = torch.stack([make_cloud(48, seed=s)[:, :height] for s in (3, 4)])
    # Eager graph: bands of 8 rows (45: partial).
    banded = compute_fpfh(clouds, backend="torch", cpu_kernel=False, **WINDOW)
    options = {"window": 11, "normal_window": 7, "max_nn": 100, "normal_max_nn": 30, "normal_orientation": "camera"}
    whole = _fpfh_stages(clouds, 0.05, **options, selection="fast", passes=3, compile=False, band_rows=None)
    assert banded.abs().sum() > 0
    # Same selections and counts; only the in-place weighted sum may round differently (fused multiply-add).
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-4)
