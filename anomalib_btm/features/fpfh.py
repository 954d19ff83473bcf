# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""FPFH descriptors for organized point clouds.

`compute_fpfh` maps a batch of organized clouds ``(B, 3, H, W)`` (metres, missing points exactly
``(0, 0, 0)``) to a ``(B, 33, H, W)`` map of Fast Point Feature Histograms, with zeros at missing
points. Two backends:

* ``"torch"`` (default): Open3D's definition and, with ``search="knn"`` (default), Open3D's neighbourhoods —
  the exact k nearest valid points, found on a voxel grid by fused Numba kernels
  (:mod:`anomalib_btm.features.fpfh_knn`; brute force in torch on CUDA) — and Open3D's normal signs, so the
  descriptors are Open3D's up to float32 rounding. ``search="window"`` searches a fixed pixel window of the
  organized grid instead: the fixed-shape graph that ``torch.compile`` and ONNX / OpenVINO export use
  (:mod:`anomalib_btm.features.fpfh_torch`, with its own fused CPU kernels in
  :mod:`anomalib_btm.features.fpfh_numba`). Speeds: ``benchmarks/fpfh.py`` and the package README.
* ``"open3d"`` (reference): the valid points of each cloud go through Open3D's
  ``estimate_normals`` (hybrid search, radius ``2 * voxel_size``, 30 neighbours) and
  ``compute_fpfh_feature`` (radius ``5 * voxel_size``, 100 neighbours), exactly as Back to the
  Feature (BTF) does. CPU only, not traceable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from anomalib_btm.checks import check_choice
from anomalib_btm.features.fpfh_math import pool_separable

__all__ = [
    "FPFH_BACKENDS",
    "FPFH_DIM",
    "check_fpfh_arguments",
    "compute_fpfh",
    "compute_fpfh_open3d",
    "valid_point_mask",
]

FPFH_DIM = 33
"""Length of an FPFH descriptor: three 11-bin histograms."""

FPFH_BACKENDS = ("open3d", "torch")
"""Names accepted by the ``backend`` argument of :func:`compute_fpfh`."""

NORMAL_RADIUS_FACTOR = 2.0
"""Normal search radius in units of ``voxel_size`` (BTF: ``radius = voxel_size * 2``)."""

FPFH_RADIUS_FACTOR = 5.0
"""FPFH search radius in units of ``voxel_size`` (BTF: ``radius = voxel_size * 5``)."""

NORMAL_MAX_NN = 30
"""Maximum neighbourhood size (query point included) for the normals, as in BTF."""

FPFH_MAX_NN = 100
"""Maximum neighbourhood size (query point included) for the FPFH, as in BTF."""


def valid_point_mask(xyz: torch.Tensor) -> torch.Tensor:
    """Return the mask of valid points of organized clouds.

    A point is valid iff none of its three coordinates is exactly zero (the convention of MVTec 3D-AD
    and of BTF, which tests ``all(p != 0)``).

    Args:
        xyz: Organized clouds of shape ``(B, 3, H, W)``.

    Returns:
        Boolean tensor of shape ``(B, 1, H, W)``.
    """
    return (xyz != 0).all(dim=1, keepdim=True)


def _all_finite(xyz: torch.Tensor) -> bool:
    """Whether every coordinate is finite.

    CPU float32/float64 input is checked by NumPy on the calling thread: a torch operation here would leave torch's
    OpenMP threads spinning on the cores that the FPFH kernels run on next, slowing them down.
    """
    if xyz.device.type == "cpu" and xyz.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(xyz.detach().numpy()).all())
    return bool(torch.isfinite(xyz).all())


def _check_xyz(xyz: torch.Tensor) -> None:
    """Validate the input of :func:`compute_fpfh`.

    Args:
        xyz: Candidate input.

    Raises:
        TypeError: If ``xyz`` is not a tensor.
        ValueError: If ``xyz`` is not of shape ``(B, 3, H, W)``, not floating point or not finite.
    """
    if not isinstance(xyz, torch.Tensor):
        msg = f"`xyz` must be a torch.Tensor of shape (B, 3, H, W), got {type(xyz).__name__}."
        raise TypeError(msg)
    if xyz.ndim != 4 or xyz.shape[1] != 3:
        msg = (
            f"`xyz` must be a batch of organized point clouds: expected (B, 3, H, W), got {tuple(xyz.shape)}. "
            "Add a batch dimension with `xyz.unsqueeze(0)` or move the channel axis with `xyz.permute(0, 3, 1, 2)`."
        )
        raise ValueError(msg)
    if not xyz.is_floating_point():
        msg = f"`xyz` must be a floating point tensor (metres), got dtype {xyz.dtype}."
        raise ValueError(msg)
    if xyz.numel() and not _all_finite(xyz):
        msg = (
            "`xyz` contains NaN or infinite coordinates. Mark missing points as exactly (0, 0, 0) instead, "
            "e.g. `xyz = torch.nan_to_num(xyz, nan=0.0, posinf=0.0, neginf=0.0)` followed by "
            "`xyz = xyz * (xyz != 0).all(dim=1, keepdim=True)`."
        )
        raise ValueError(msg)


def check_fpfh_arguments(backend: str, voxel_size: float, options: Mapping[str, Any], prefix: str = "") -> None:
    """Check an FPFH backend, voxel size and torch-backend options together (the model checks them when built).

    Args:
        backend (str): One of :data:`FPFH_BACKENDS`.
        voxel_size (float): Scale of the search radii in metres; must be positive.
        options (Mapping[str, Any]): Options of the torch backend (see
            :func:`anomalib_btm.features.fpfh_torch.check_torch_options`); only ``backend="torch"`` takes any.
        prefix (str): Prefix of the argument names in messages (``"fpfh_"`` for ``fpfh_backend`` /
            ``fpfh_options``).

    Raises:
        ValueError: Naming the argument, on an unknown backend, a voxel size that is not positive, options for the
            Open3D backend, or an unknown or invalid torch option.
    """
    from anomalib_btm.features.fpfh_torch import check_torch_options

    check_choice(f"{prefix}backend", backend, FPFH_BACKENDS)
    if not voxel_size > 0:
        msg = f"voxel_size must be positive (metres), got {voxel_size}."
        raise ValueError(msg)
    if options and backend != "torch":
        msg = f"{prefix}options {sorted(options)} apply to {prefix}backend='torch' only, got {backend!r}."
        raise ValueError(msg)
    check_torch_options(dict(options))


def compute_fpfh_open3d(xyz: torch.Tensor, voxel_size: float = 0.05) -> torch.Tensor:
    """FPFH of organized clouds with Open3D, exactly as BTF computes it.

    For each cloud, the valid points are gathered, their normals estimated with
    ``KDTreeSearchParamHybrid(radius=2 * voxel_size, max_nn=30)`` and their FPFH computed with
    ``KDTreeSearchParamHybrid(radius=5 * voxel_size, max_nn=100)``; the descriptors are scattered
    back to the pixel grid. Open3D does not orient normals: their sign follows its closed-form
    3×3 eigen solver. Computation runs in float64 on the CPU.

    Args:
        xyz: Organized clouds ``(B, 3, H, W)``, metres, missing points exactly ``(0, 0, 0)``. Not validated
            here, use :func:`compute_fpfh` for checked input.
        voxel_size: Scale of the search radii (BTF: 0.05 m).

    Returns:
        Float32 tensor ``(B, 33, H, W)`` on the device of ``xyz``, zero at missing points.
    """
    import open3d as o3d

    batch, _, height, width = xyz.shape
    clouds = xyz.detach().to(device="cpu", dtype=torch.float64).permute(0, 2, 3, 1).reshape(batch, height * width, 3)
    clouds = clouds.numpy()
    out = np.zeros((batch, FPFH_DIM, height * width), dtype=np.float32)
    normal_param = o3d.geometry.KDTreeSearchParamHybrid(radius=NORMAL_RADIUS_FACTOR * voxel_size, max_nn=NORMAL_MAX_NN)
    fpfh_param = o3d.geometry.KDTreeSearchParamHybrid(radius=FPFH_RADIUS_FACTOR * voxel_size, max_nn=FPFH_MAX_NN)
    for index in range(batch):
        valid = np.all(clouds[index] != 0, axis=1)
        if not valid.any():
            continue
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(clouds[index][valid])))
        pcd.estimate_normals(search_param=normal_param)
        feature = o3d.pipelines.registration.compute_fpfh_feature(pcd, fpfh_param)
        out[index][:, valid] = np.asarray(feature.data, dtype=np.float32)
    return torch.from_numpy(out).reshape(batch, FPFH_DIM, height, width).to(xyz.device)


def compute_fpfh(
    xyz: torch.Tensor,
    backend: str = "torch",
    voxel_size: float = 0.05,
    *,
    pooling: tuple[torch.Tensor, torch.Tensor] | None = None,
    **torch_options: Any,
) -> torch.Tensor:
    """Compute FPFH descriptors of a batch of organized point clouds.

    Args:
        xyz: Organized clouds of shape ``(B, 3, H, W)``, floating point, in metres. Missing points are
            exactly ``(0, 0, 0)``; a point is valid iff all three coordinates are non-zero.
        backend: ``"torch"`` (default; batched, runs on the device of ``xyz``: Open3D's k-nearest neighbourhoods
            with fused CPU kernels or brute force on CUDA, or pixel windows that export to ONNX) or ``"open3d"``
            (reference, CPU, as in BTF).
        voxel_size: Scale of the search radii: normals use ``2 * voxel_size`` and at most 30 neighbours,
            FPFH ``5 * voxel_size`` and at most 100 neighbours (BTF: 0.05 with metres).
        **torch_options: Options of the torch backend only, passed to
            :func:`anomalib_btm.features.fpfh_torch.fpfh_torch`: ``search`` (``"knn"``: Open3D's neighbourhoods,
            default; ``"window"``: pixel windows, the exportable graph), ``normal_orientation`` (``"open3d"``,
            default, or ``"camera"``), ``max_nn``, ``normal_max_nn``, ``batch_chunk``, ``cpu_kernel`` (``False``:
            torch instead of the fused CPU kernels) and, for ``search="window"``, ``window`` (11),
            ``normal_window`` (7), ``selection`` (``"fast"`` or ``"exact"``), ``passes`` and ``compile``.
        pooling: A separable linear pooling ``(P_rows (h, H), P_columns (w, W))`` to apply to the maps
            (:func:`~anomalib_btm.features.fpfh_math.pool_separable`; BTM's patch pooling is
            :meth:`XYZBranch.pooling <anomalib_btm.models.btm.feature_branches.XYZBranch.pooling>`). The fused
            k-NN kernels pool as they go and never write the full map. ``None``: the maps themselves.

    Returns:
        Float32 tensor ``(B, 33, H, W)`` on the device of ``xyz``: the FPFH of each valid point (each
        11-bin group sums to 200 once a point has neighbours) and zeros at missing points; with ``pooling``
        the pooled maps ``(B, 33, h, w)``.

    Raises:
        ValueError: If ``xyz`` has the wrong shape or non-finite values, if ``backend`` is unknown, or if
            options are given to the Open3D backend.

    Example:
        >>> xyz = torch.zeros(2, 3, 64, 64)
        >>> compute_fpfh(xyz).shape
        torch.Size([2, 33, 64, 64])
    """
    check_fpfh_arguments(backend, voxel_size, torch_options)
    _check_xyz(xyz)
    if pooling is not None and (pooling[0].shape[-1], pooling[1].shape[-1]) != tuple(xyz.shape[-2:]):
        msg = (
            f"`pooling` matrices take maps of {pooling[0].shape[-1]}×{pooling[1].shape[-1]} pixels but the clouds are "
            f"{xyz.shape[-2]}×{xyz.shape[-1]}: build them for the clouds' size."
        )
        raise ValueError(msg)
    if backend == "open3d":
        maps = compute_fpfh_open3d(xyz, voxel_size=voxel_size)
        return maps if pooling is None else pool_separable(maps, pooling)
    from anomalib_btm.features.fpfh_torch import fpfh_torch

    return fpfh_torch(xyz, voxel_size=voxel_size, pooling=pooling, **torch_options)
