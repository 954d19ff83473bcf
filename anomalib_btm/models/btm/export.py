# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Export of a fitted BTM: pre-processing, CNN, dual-k scoring and post-processing as one graph; FPFH in or beside it.

anomalib's exporter traces a single image input. An RGB + 3D BTM needs a second one, for the point cloud. Where its
FPFH descriptors are computed is the export option ``fpfh`` (``to_onnx(fpfh=...)``, ``to_openvino(onnx_kwargs=
{"fpfh": ...})``, ``anomalib export ... --onnx_kwargs '{"fpfh": "graph"}'``):

* ``"inferencer"`` (default): the graph's inputs are ``image`` ``(N, 3, H, W)`` (RGB in ``[0, 1]``, any size: the
  pre-processor resizes it inside the graph) and ``fpfh`` ``(N, 33, gh, gw)``, the FPFH patch features of the cloud:
  its FPFH map at the working size pooled to the patch grid (or the map itself, ``(N, 33, H, W)``, for a
  pre-processor that keeps the input size). :class:`~anomalib_btm.deploy.BTMInferencer` computes them from the cloud
  with the model's own FPFH — the fused CPU kernels of its k-NN search, which pool as they go (or Open3D for an
  ``fpfh_backend="open3d"`` model) — and hides the two stages: it reads what to compute from the IR itself
  (:class:`FPFHInput`, stored as the ONNX metadata entry :data:`METADATA_KEY`, which OpenVINO keeps in the model's
  ``rt_info``). Scores equal the PyTorch model's, and
  the IR is faster than the graph FPFH below (``benchmarks/export.py``).
* ``"graph"``: the FPFH is part of the graph (inputs ``image`` and ``xyz`` ``(N, 3, Hx, Wx)``, the organized cloud in
  metres at its native size, resized with nearest-neighbour inside the graph), for runtimes without this package.
  The graph computes the torch implementation over pixel windows (:class:`~anomalib_btm.features.fpfh_torch.
  FPFHTorch`, ``search="window"``): a model fitted with the default k-NN search (or with Open3D) is then reproduced
  only approximately; fit with ``fpfh_options={"search": "window"}`` for an exact graph.

:class:`BTMExportModule` is the traceable forward pass used by :meth:`BTM.to_onnx
<anomalib_btm.models.btm.lightning_model.BTM.to_onnx>` and :meth:`BTM.to_openvino
<anomalib_btm.models.btm.lightning_model.BTM.to_openvino>`; its outputs are anomalib's ``pred_score``,
``pred_label``, ``anomaly_map`` and ``pred_mask``, normalised and thresholded by the model's post-processor. An
RGB-only model has anomalib's single input ``input`` either way. This module takes the parts it exports (the torch
:class:`~anomalib_btm.models.btm.torch_model.BTMModel`, the pre- and post-processor), not the Lightning module, so
that the Lightning module can depend on it and not the other way round.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.deploy.export import CompressionType, ExportType
from anomalib.models.components.base.export_mixin.utils import create_export_root, get_onnx_dynamo_flag
from torch import nn

from anomalib_btm.checks import check_choice
from anomalib_btm.features.fpfh import FPFH_BACKENDS, FPFH_DIM, compute_fpfh
from anomalib_btm.features.fpfh_torch import FPFHTorch, check_torch_options
from anomalib_btm.files import atomic_write
from anomalib_btm.models.btm.feature_branches import patch_pooling, resize_xyz

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib.data import AnomalibDataModule
    from openvino import Model

    from .torch_model import BTMModel

logger = logging.getLogger(__name__)

__all__ = [
    "EXPORT_INPUT_NAMES",
    "FPFH_STAGES",
    "GRAPH_INPUT_NAMES",
    "METADATA_KEY",
    "BTMExportModule",
    "FPFHInput",
    "check_compression",
    "export_input_names",
    "export_onnx",
    "fold_constants",
    "quantize_ptq",
    "read_fpfh_input",
]

FPFH_STAGES = ("inferencer", "graph")
"""Values of the export option ``fpfh``: FPFH computed by the inferencer (default) or inside the graph."""

EXPORT_INPUT_NAMES = ("image", "fpfh")
"""Input names of an RGB + 3D or 3D-only export with ``fpfh="inferencer"`` (the default). A 3D-only graph ignores
``image`` (fed anyway, one interface). An RGB-only export keeps anomalib's single input ``input``."""

GRAPH_INPUT_NAMES = ("image", "xyz")
"""Input names of an RGB + 3D or 3D-only export with ``fpfh="graph"``."""

METADATA_KEY = "btm_fpfh_input"
"""ONNX metadata entry (OpenVINO ``rt_info`` path ``["framework", METADATA_KEY]``) holding :class:`FPFHInput`."""

_METADATA_VERSION = 2
"""Version 2 adds ``grid`` and ``patch_padding`` (the FPFH input pooled to the patch grid)."""
_METADATA_VERSIONS = (1, 2)
"""Versions an inferencer reads: version 1 IRs take the full FPFH map and still run."""

# FPFH options that only choose how eager PyTorch runs a stage (the result is the same).
_RUN_OPTIONS = frozenset({"compile", "batch_chunk", "cpu_kernel"})


def _check_stage(fpfh: str) -> None:
    check_choice("Export option `fpfh`", fpfh, FPFH_STAGES)


def export_input_names(modality: str, fpfh: str = "inferencer") -> list[str]:
    """Input names of the exported graph for a resolved modality.

    Args:
        modality (str): ``"rgb"``, ``"xyz"`` or ``"rgb+xyz"``.
        fpfh (str): Where the FPFH is computed, ``"inferencer"`` or ``"graph"`` (see :data:`FPFH_STAGES`).

    Returns:
        list[str]: ``["input"]`` for RGB only (anomalib's name, so its stock inferencers run the IR), else
        ``["image", "fpfh"]`` (``fpfh="inferencer"``) or ``["image", "xyz"]`` (``fpfh="graph"``).

    Raises:
        ValueError: On an unknown ``fpfh``.
    """
    _check_stage(fpfh)
    if modality == "rgb":
        return ["input"]
    return list(EXPORT_INPUT_NAMES if fpfh == "inferencer" else GRAPH_INPUT_NAMES)


@dataclass(frozen=True)
class FPFHInput:
    """What an inferencer computes for the ``fpfh`` input of an IR exported with ``fpfh="inferencer"``.

    The computation of the model's :class:`~anomalib_btm.models.btm.feature_branches.XYZBranch`: the cloud resized
    with nearest-neighbour to the working size, then :func:`~anomalib_btm.features.fpfh.compute_fpfh` with the
    model's backend and options, pooled to the patch grid when the working size is fixed (the graph then starts from
    the patch features, and the fused k-NN kernels never write the full map), else the full map.

    Args:
        backend (str): FPFH backend of the model (``"torch"`` or ``"open3d"``).
        voxel_size (float): Radius scale in metres.
        options (dict[str, Any]): Torch-backend options of the model (``search``, ``max_nn``...).
        working_size (tuple[int, int] | None): ``(h, w)`` the pre-processor resizes images to, or ``None`` when the
            working size is the input image's own size.
        grid (tuple[int, int] | None): Patch grid the map is pooled to (:func:`~anomalib_btm.models.btm.
            feature_branches.patch_pooling`), or ``None`` for the full map (a working size that follows the image,
            or an IR exported before the pooled input).
        patch_padding (bool): The model's 3 × 3 mean with padding (BTM) or without (BTF), for the pooling.

    Example:
        >>> spec = FPFHInput("torch", 0.05, {}, (64, 64))
        >>> spec(torch.zeros(1, 3, 32, 32), image_size=(32, 32)).shape
        torch.Size([1, 33, 64, 64])
        >>> FPFHInput("torch", 0.05, {}, (64, 64), grid=(8, 8))(torch.zeros(1, 3, 32, 32), image_size=(32, 32)).shape
        torch.Size([1, 33, 8, 8])
    """

    backend: str = "torch"
    voxel_size: float = 0.05
    options: dict[str, Any] = field(default_factory=dict)
    working_size: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    patch_padding: bool = True

    def size_for(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Working size ``(h, w)`` for an input image of ``image_size``."""
        return self.working_size or (int(image_size[0]), int(image_size[1]))

    def __call__(self, xyz: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """FPFH input ``(N, 33, h, w)`` of organized clouds ``(N, 3, Hx, Wx)`` (metres, zeros at missing points).

        Args:
            xyz (torch.Tensor): Organized clouds, any size (resized to the working size as the model does).
            image_size (tuple[int, int]): ``(H, W)`` of the input images (used when the working size follows them).

        Returns:
            torch.Tensor: Float32 FPFH patch features on the :attr:`grid`, or the map at the working size.
        """
        size = self.size_for(image_size)
        cloud = resize_xyz(xyz.float(), size)
        options = {name: value for name, value in self.options.items() if name != "compile"}
        pooling = None if self.grid is None else patch_pooling(size, self.grid, self.patch_padding)
        return compute_fpfh(cloud, backend=self.backend, voxel_size=self.voxel_size, pooling=pooling, **options)

    def to_json(self) -> str:
        """Serialise (the IR's metadata entry)."""
        record = {
            "version": _METADATA_VERSION,
            "backend": self.backend,
            "voxel_size": self.voxel_size,
            "options": self.options,
            "working_size": None if self.working_size is None else list(self.working_size),
            "grid": None if self.grid is None else list(self.grid),
            "patch_padding": self.patch_padding,
        }
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> FPFHInput:
        """Parse and validate a metadata entry written by :meth:`to_json`.

        Args:
            text (str): The JSON text.
            source (str): What it was read from (named in errors).

        Returns:
            FPFHInput: The parsed specification.

        Raises:
            ValueError: If the entry is not valid JSON of this format, or its options are invalid.
        """
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            msg = f"{source}: the BTM metadata entry {METADATA_KEY!r} is not valid JSON ({error})."
            raise ValueError(msg) from error
        version = record.get("version") if isinstance(record, dict) else None
        if version not in _METADATA_VERSIONS:
            msg = (
                f"{source}: unsupported BTM metadata {METADATA_KEY!r} (version {version!r}, expected one of "
                f"{_METADATA_VERSIONS}); export the model again with this version of anomalib_btm."
            )
            raise ValueError(msg)
        backend, options = record.get("backend"), record.get("options") or {}
        if backend not in FPFH_BACKENDS or not isinstance(options, dict):
            msg = f"{source}: BTM metadata names FPFH backend {backend!r} with options {options!r}."
            raise ValueError(msg)
        check_torch_options(options)
        size, grid = record.get("working_size"), record.get("grid")  # version 1: no grid (the full map)
        working_size = None if size is None else (int(size[0]), int(size[1]))
        grid = None if grid is None else (int(grid[0]), int(grid[1]))
        if grid is not None and working_size is None:
            msg = (
                f"{source}: the BTM metadata pools the FPFH to a grid but fixes no working size; export the model "
                "again with this version of anomalib_btm."
            )
            raise ValueError(msg)
        return cls(backend, float(record["voxel_size"]), options, working_size, grid,
                   bool(record.get("patch_padding", True)))  # fmt: skip


def _working_size(pre_processor: nn.Module | None) -> tuple[int, int] | None:
    """The fixed size the pre-processor resizes images to, or ``None`` if it keeps the input size.

    Raises:
        ValueError: If the output size depends on the input size otherwise (e.g. a crop), which an inferencer cannot
            know in advance.
    """
    if pre_processor is None:
        return None
    sizes = [(64, 64), (72, 88)]
    with torch.no_grad():
        outputs = [tuple(int(n) for n in pre_processor(torch.zeros(1, 3, *size)).shape[-2:]) for size in sizes]
    if outputs[0] == outputs[1]:
        return outputs[0]
    if outputs == sizes:
        return None
    msg = (
        "The pre-processor's output size depends on the input size in a way other than a fixed resize "
        f"(64×64 → {outputs[0]}, 72×88 → {outputs[1]}): the inferencer could not compute the FPFH input at the "
        "working size. Export with fpfh='graph' (onnx_kwargs={'fpfh': 'graph'}) or use a resizing pre-processor."
    )
    raise ValueError(msg)


class BTMExportModule(nn.Module):
    """Traceable inference pipeline of a fitted BTM, for ONNX and OpenVINO export.

    Args:
        model (BTMModel): A fitted BTM torch model (its memory bank built, its modality resolved): ``BTM.model``.
        pre_processor (nn.Module | None): The pre-processor traced in front of the model (``BTM.pre_processor``),
            or ``None`` for images that come resized and normalised.
        post_processor (nn.Module | None): The post-processor traced behind it (``BTM.post_processor``), or ``None``
            for raw scores.
        fpfh (str): ``"inferencer" (default: the second input is the FPFH, see :class:`FPFHInput`) or
            ``"graph"`` (the second input is the cloud and the graph computes a pixel-window FPFH).

    Raises:
        ValueError: If the model is not fitted, or uses BTF's PIL blur (8-bit, not traceable), or ``fpfh`` is unknown.

    Example:
        >>> from anomalib_btm import BTM
        >>> btm = BTM(backbone="resnet18", pre_trained=False, modality="rgb+xyz")
        >>> btm.model.memory_bank = torch.rand(16, 417)  # stands in for the bank that a fit builds
        >>> module = BTMExportModule(btm.model, btm.pre_processor, btm.post_processor).eval()
        >>> image, xyz = torch.rand(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
        >>> predictions = module(image, module.fpfh_input(xyz, image.shape[-2:]))
        >>> predictions.pred_score.shape
        torch.Size([1])
    """

    def __init__(
        self,
        model: BTMModel,
        pre_processor: nn.Module | None = None,
        post_processor: nn.Module | None = None,
        fpfh: str = "inferencer",
    ) -> None:
        super().__init__()
        _check_stage(fpfh)
        modality = model.resolved_modality
        if modality is None or model.memory_bank.numel() == 0:
            msg = "Only a fitted BTM can be exported: train it first (anomalib train / Engine.fit) or pass --ckpt_path."
            raise ValueError(msg)
        if model.anomaly_map_generator.blur_mode == "pil":
            msg = (
                "preset='btf' blurs the anomaly map through an 8-bit PIL image, which cannot be exported. "
                "Export a model with the default preset='btm' (Gaussian blur on floats)."
            )
            raise ValueError(msg)
        self.modality = modality
        self.fpfh_stage = fpfh
        self.pre_processor = pre_processor
        self.post_processor = post_processor
        self.rgb_branch = model.rgb_branch if "rgb" in modality else None
        self.xyz_branch = model.xyz_branch if "xyz" in modality else None
        self.fpfh: FPFHTorch | None = None
        self.fpfh_input: FPFHInput | None = None
        if self.xyz_branch is not None and fpfh == "inferencer":
            working_size = _working_size(self.pre_processor)
            self.fpfh_input = FPFHInput(
                self.xyz_branch.fpfh_backend,
                float(self.xyz_branch.voxel_size),
                dict(self.xyz_branch.fpfh_options),
                working_size,
                None if working_size is None else self._grid(working_size),
                self.xyz_branch.patch_padding,
            )
        elif self.xyz_branch is not None:
            self.fpfh = self._graph_fpfh()
        self.scorer = model.scorer
        self.anomaly_map_generator = model.anomaly_map_generator
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", model.memory_bank.detach().clone())

    def _grid(self, working_size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid at a fixed working size: the RGB branch's first feature map, else an eighth of the size."""
        if self.rgb_branch is None:
            return working_size[0] // 8, working_size[1] // 8
        with torch.no_grad():
            device = next(self.rgb_branch.parameters(), torch.zeros(0)).device
            shape = self.rgb_branch(torch.zeros(1, 3, *working_size, device=device)).shape
        return int(shape[-2]), int(shape[-1])

    def _graph_fpfh(self) -> FPFHTorch:
        """The pixel-window torch FPFH that a ``fpfh="graph"`` export computes, with a warning where it differs."""
        assert self.xyz_branch is not None
        backend = self.xyz_branch.fpfh_backend
        if backend == "open3d":
            logger.warning(
                "This BTM was fitted with fpfh_backend='open3d', which cannot be part of a graph: the graph computes "
                "FPFH with the torch implementation (Open3D's normal signs); scores differ slightly from the "
                "PyTorch model's. Export with fpfh='inferencer' (the default) for the exact computation."
            )
        # The fitted model's torch options, minus those that only choose how eager PyTorch runs.
        graph_options = {
            name: value for name, value in self.xyz_branch.fpfh_options.items() if name not in _RUN_OPTIONS
        }
        if backend == "open3d":
            graph_options["normal_orientation"] = "open3d"
        elif graph_options.get("search", "knn") == "knn":
            logger.warning(
                "This BTM computes FPFH over Open3D's exact k-nearest neighbourhoods (search='knn'), which is not "
                "a fixed-shape graph: the exported graph uses pixel-window neighbourhoods (search='window', "
                "window %s) and scores differ slightly from the PyTorch model's. Export with fpfh='inferencer' (the "
                "default) for the exact computation.",
                graph_options.get("window", 11),
            )
        return FPFHTorch(voxel_size=self.xyz_branch.voxel_size, **graph_options)

    @property
    def input_names(self) -> list[str]:
        """Names of the graph inputs (see :func:`export_input_names`)."""
        return export_input_names(self.modality, self.fpfh_stage)

    def forward(self, image: torch.Tensor, xyz: torch.Tensor | None = None) -> InferenceBatch:
        """Score a batch.

        Args:
            image (torch.Tensor): ``(N, 3, H, W)`` RGB images in ``[0, 1]`` (resized and normalised in the graph).
            xyz (torch.Tensor | None): The second input, required unless the model is RGB only: with
                ``fpfh="inferencer"`` the FPFH patch features ``(N, 33, gh, gw)`` on the patch grid (the FPFH map
                at the image size when the working size follows the image; :attr:`fpfh_input` computes either from
                the cloud), with ``fpfh="graph"`` the organized clouds ``(N, 3, Hx, Wx)`` in
                metres, zeros at missing points.

        Returns:
            InferenceBatch: ``pred_score`` ``(N,)``, ``pred_label`` ``(N,)``, ``anomaly_map`` and ``pred_mask``
            ``(N, 1, h, w)`` at the working size, post-processed.
        """
        image = self.pre_processor(image) if self.pre_processor is not None else image
        height, width = int(image.shape[-2]), int(image.shape[-1])
        features = []
        grid = (height // 8, width // 8)
        if self.rgb_branch is not None:
            rgb = self.rgb_branch(image)
            features.append(rgb)
            grid = (int(rgb.shape[-2]), int(rgb.shape[-1]))
        if self.xyz_branch is not None:
            if xyz is None:
                what = "the FPFH input `fpfh`" if self.fpfh is None else "the organized point cloud `xyz`"
                msg = f"This BTM uses modality {self.modality!r}: pass {what}."
                raise ValueError(msg)
            if self.fpfh is not None:
                fpfh = self.fpfh(F.interpolate(xyz.float(), size=(height, width), mode="nearest"))
                features.append(self.xyz_branch.pool(fpfh, grid))
            elif self.fpfh_input is not None and self.fpfh_input.grid is not None:
                features.append(xyz)  # pooled by the inferencer (FPFHInput.grid)
            else:
                features.append(self.xyz_branch.pool(xyz, grid))
        embedding = torch.cat(features, dim=1) if len(features) > 1 else features[0]
        scores = self.scorer(embedding, self.memory_bank)
        anomaly_map = self.anomaly_map_generator(scores.patch_scores, (height, width))
        predictions = InferenceBatch(pred_score=scores.pred_score, anomaly_map=anomaly_map)
        return self.post_processor(predictions) if self.post_processor is not None else predictions


def _output_names(module: BTMExportModule) -> list[str]:
    """Names of the non-empty outputs, from the post-processor alone (no pass through the CNN or FPFH)."""
    dummy = InferenceBatch(pred_score=torch.zeros(1), anomaly_map=torch.zeros(1, 1, 2, 2))
    post = module.post_processor(dummy) if module.post_processor is not None else dummy
    return [name for name, value in post._asdict().items() if value is not None]


def export_onnx(
    model: BTMModel,
    export_root: Path | str,
    model_file_name: str = "model",
    input_size: tuple[int, int] | None = None,
    fpfh: str = "inferencer",
    *,
    pre_processor: nn.Module | None = None,
    post_processor: nn.Module | None = None,
    **kwargs: Any,
) -> Path:
    """Export a fitted BTM to ONNX (``export_root/weights/onnx/<model_file_name>.onnx``) with the dynamo exporter.

    Args:
        model (BTMModel): Fitted torch model.
        export_root (Path | str): Output folder.
        model_file_name (str): File name without suffix.
        input_size (tuple[int, int] | None): Fixed image ``(H, W)``, or ``None`` for dynamic height and width.
        fpfh (str): ``"inferencer"`` (default) or ``"graph"``: where the FPFH is computed (module docstring).
        pre_processor (nn.Module | None): Pre-processor traced in front of the model.
        post_processor (nn.Module | None): Post-processor traced behind it.
        **kwargs: Passed to ``torch.onnx.export``; ``input_names`` and ``dynamic_shapes`` are set here. With
            ``fpfh="graph"`` and no ``optimize``, the exporter's optimizer is replaced by constant folding
            (:func:`fold_constants`).

    Returns:
        Path: The ``.onnx`` file.

    Raises:
        ValueError: If the model is not fitted or not exportable, ``fpfh`` is unknown, or ``dynamo=False`` is asked for.
    """
    get_onnx_dynamo_flag(kwargs)
    _check_stage(fpfh)
    for key in ("input_names", "dynamic_axes", "dynamic_shapes"):
        if key in kwargs:
            msg = f"`{key}` is fixed by the BTM export (inputs {export_input_names('rgb+xyz', fpfh)}); do not pass it."
            raise ValueError(msg)
    module = BTMExportModule(model, pre_processor, post_processor, fpfh=fpfh).eval().cpu()
    output_names = _output_names(module)
    batch = torch.export.Dim("batch_size")
    image_axes: dict[int, Any] = {0: batch}
    if input_size is None:
        image_axes |= {2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)}
    height, width = input_size or (256, 256)
    example: tuple[torch.Tensor, ...] = (torch.rand(2, 3, height, width),)
    dynamic_shapes: tuple[dict[int, Any], ...] = (image_axes,)
    if module.fpfh_input is not None:
        # The FPFH input: patch features on the grid of a fixed working size, else the map at the image's own size.
        working = module.fpfh_input.working_size
        example += (torch.rand(2, FPFH_DIM, *(module.fpfh_input.grid or working or (height, width))),)
        dynamic_shapes += ({0: batch} if working is not None else dict(image_axes),)
    elif module.xyz_branch is not None:
        cloud_axes = {0: batch, 2: torch.export.Dim("xyz_height", min=8), 3: torch.export.Dim("xyz_width", min=8)}
        example += (_example_cloud(2, 64, 64),)
        dynamic_shapes += (cloud_axes,)
    export_root = create_export_root(export_root, ExportType.ONNX)
    onnx_path = export_root / f"{model_file_name}.onnx"
    fold_only = fpfh == "graph" and "optimize" not in kwargs
    program = torch.onnx.export(
        module,
        example,
        input_names=module.input_names,
        output_names=output_names,
        opset_version=kwargs.pop("opset_version", 18),
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        **({"optimize": False} if fold_only else {}),
        **kwargs,
    )
    if fold_only:
        fold_constants(program)
    if module.fpfh_input is not None:
        program.model.metadata_props[METADATA_KEY] = module.fpfh_input.to_json()
    return atomic_write(onnx_path, lambda tmp: program.save(str(tmp), external_data=False))


def fold_constants(program: Any) -> None:
    """Fold the constants of an unoptimized ``torch.onnx.export`` program and drop the unused nodes, in place.

    What OpenVINO needs of the exporter's optimizer (it cannot convert the unfolded shape arithmetic of the FPFH
    window graph, e.g. an ``Expand`` to a shape computed from constants) without its pattern rewrites, which spend
    minutes matching on a graph of a few thousand nodes. A 96² ``fpfh="graph"`` export took 88 s instead of 188 s
    (the window FPFH graph alone 28 s instead of 65 s); the IR gave the same scores (difference 0.0) at the same
    latency (OpenVINO fuses the graph itself).

    Args:
        program (Any): The ``torch.onnx.ONNXProgram`` returned by ``torch.onnx.export(..., optimize=False)``.
    """
    from onnxscript import optimizer

    optimizer.fold_constants_ir(program.model)
    optimizer.remove_unused_nodes(program.model)


def _example_cloud(batch: int, height: int, width: int) -> torch.Tensor:
    """A tilted plane 0.5 m in front of the camera, as an example input for tracing (values do not matter)."""
    v, u = torch.meshgrid(torch.linspace(-0.05, 0.05, height), torch.linspace(-0.05, 0.05, width), indexing="ij")
    cloud = torch.stack([u, v, 0.5 + 0.2 * u], dim=0)
    return cloud.expand(batch, -1, -1, -1).contiguous()


def read_fpfh_input(model: Model, source: str = "model") -> FPFHInput | None:
    """The :class:`FPFHInput` stored in an OpenVINO model read from an IR or ONNX file, if any.

    Args:
        model (Model): ``openvino.Core().read_model(...)`` of a BTM export.
        source (str): Name of the file, for errors.

    Returns:
        FPFHInput | None: The specification, or ``None`` if the model carries none (RGB only, ``fpfh="graph"``).

    Raises:
        ValueError: If the entry is malformed.
    """
    path = ["framework", METADATA_KEY]
    if not model.has_rt_info(path):
        return None
    return FPFHInput.from_json(model.get_rt_info(path).astype(str), source)


def check_compression(
    modality: str | None, compression_type: CompressionType | str | None, datamodule: object | None
) -> None:
    """Refuse, before anything is written, a compression the model's inputs do not allow.

    Args:
        modality (str | None): Resolved modality of the model to export (``"rgb"``, ``"xyz"``, ``"rgb+xyz"``).
        compression_type (CompressionType | str | None): Requested compression.
        datamodule (object | None): Calibration datamodule.

    Raises:
        ValueError: For ``int8_ptq``/``int8_acq`` without a datamodule, or ``int8_acq`` with a point-cloud input.
    """
    if compression_type is None:
        return
    kind = CompressionType(compression_type)
    if kind in {CompressionType.INT8_PTQ, CompressionType.INT8_ACQ} and datamodule is None:
        msg = f"compression_type={kind.value} calibrates on data: pass the datamodule (anomalib export --data ...)."
        raise ValueError(msg)
    if kind == CompressionType.INT8_ACQ and modality != "rgb":
        msg = (
            "compression_type=int8_acq validates through anomalib's single-input loop, which cannot feed the point "
            "cloud input (`fpfh` or `xyz`) of an RGB + 3D BTM. Use compression_type=int8_ptq (calibrates image and "
            "point cloud) or fp16."
        )
        raise ValueError(msg)


def quantize_ptq(model: Model, datamodule: AnomalibDataModule | None, modality: str) -> Model:
    """NNCF post-training INT8 quantization calibrated on the datamodule's validation split, all inputs fed.

    The convolutions are quantized; the MatMul of the nearest-neighbour distances to the memory bank is not. For an
    ``fpfh="inferencer"`` export the ``fpfh`` input is computed from each batch's clouds as the inferencer computes
    it (:class:`FPFHInput`, read from the model's metadata).

    Args:
        model (Model): OpenVINO model as converted from ONNX.
        datamodule (AnomalibDataModule | None): Calibration data.
        modality (str): Resolved modality of the model (named in errors).

    Returns:
        Model: The quantized model (its metadata kept).

    Raises:
        ValueError: If no datamodule is given, or its batches carry no point clouds for an XYZ model.
    """
    import nncf

    if datamodule is None:
        msg = "compression_type=int8_ptq needs a datamodule for calibration."
        raise ValueError(msg)
    datamodule.setup("fit")
    dataloader = datamodule.val_dataloader()
    names = [model_input.any_name for model_input in model.inputs]
    spec = read_fpfh_input(model)

    def inputs(batch: Any) -> dict[str, Any]:
        image = batch.image.detach().cpu()
        if len(names) == 1:
            return {names[0]: image.numpy()}
        xyz = getattr(batch, "depth_map", None)
        if xyz is None:
            msg = (
                f"int8_ptq of a BTM with modality {modality!r} calibrates both inputs, but the datamodule's batches "
                "carry no depth_map: use the depth datamodule the model was trained on (MVTec3D, Folder3D)."
            )
            raise ValueError(msg)
        xyz = xyz.detach().cpu().float()
        if spec is None:
            return {"image": image.numpy(), "xyz": xyz.numpy()}
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return {"image": image.numpy(), "fpfh": np.ascontiguousarray(spec(xyz, size).numpy())}

    if len(dataloader.dataset) < 300:
        logger.warning("INT8 calibration on %d samples (>300 recommended).", len(dataloader.dataset))
    # The memory-bank distances stay float32: quantizing the embedding × bank MatMul moved normalised scores by
    # orders of magnitude more than quantizing the convolutions in a small run; without it the INT8 IR's scores
    # follow the float IR's closely (benchmarks/int8.py measures it), and the convolutions carry the speed-up.
    ignored = nncf.IgnoredScope(types=["MatMul"], validate=False)
    dataset = nncf.Dataset(dataloader, inputs)
    quantized = nncf.quantize(model, dataset, subset_size=len(dataloader.dataset), ignored_scope=ignored)
    if spec is not None and not quantized.has_rt_info(["framework", METADATA_KEY]):
        quantized.set_rt_info(spec.to_json(), ["framework", METADATA_KEY])
    return quantized
