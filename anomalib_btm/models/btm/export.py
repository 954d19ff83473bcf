# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Export of a fitted BTM: the whole pipeline (pre-processing, CNN, FPFH, dual-k scoring, post-processing) as one graph.

anomalib's exporter traces a single image input. An RGB + 3D BTM needs two: ``image`` ``(N, 3, H, W)`` (RGB in
``[0, 1]``, any size: the pre-processor resizes it inside the graph) and ``xyz`` ``(N, 3, Hx, Wx)`` (the organized
cloud at its native size, metres, zeros at missing points; resized to the working size with nearest-neighbour inside
the graph). :class:`BTMExportModule` is the traceable forward pass used by :meth:`BTM.to_onnx
<anomalib_btm.models.btm.lightning_model.BTM.to_onnx>` and :meth:`BTM.to_openvino
<anomalib_btm.models.btm.lightning_model.BTM.to_openvino>`; its outputs are anomalib's ``pred_score``,
``pred_label``, ``anomaly_map`` and ``pred_mask``, normalised and thresholded by the model's post-processor.

The FPFH inside the graph is the torch implementation (:class:`~anomalib_btm.features.fpfh_torch.FPFHTorch`); Open3D
cannot be exported. A model fitted with ``fpfh_backend="torch"`` exports its own computation. A model fitted with
``fpfh_backend="open3d"`` is exported with the torch FPFH in Open3D's normal-sign convention (descriptors correlate
> 0.99 with Open3D's, not bit-identical): scores of the IR then differ slightly from the PyTorch model's; fit with
``fpfh_backend="torch"`` for an IR that reproduces the PyTorch model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.deploy.export import CompressionType, ExportType
from anomalib.models.components.base.export_mixin.utils import create_export_root, get_onnx_dynamo_flag
from torch import nn

from anomalib_btm.features.fpfh_torch import FPFHTorch

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib.data import AnomalibDataModule
    from openvino import CompiledModel

    from .lightning_model import BTM

logger = logging.getLogger(__name__)

__all__ = [
    "EXPORT_INPUT_NAMES",
    "BTMExportModule",
    "check_compression",
    "export_input_names",
    "export_onnx",
    "quantize_ptq",
]

EXPORT_INPUT_NAMES = ("image", "xyz")
"""Input names of an RGB + 3D or 3D-only export. An RGB-only export keeps anomalib's single input ``input``."""


def export_input_names(modality: str) -> list[str]:
    """Input names of the exported graph for a resolved modality.

    Args:
        modality (str): ``"rgb"``, ``"xyz"`` or ``"rgb+xyz"``.

    Returns:
        list[str]: ``["input"]`` for RGB only (anomalib's name, so its stock inferencers run the IR), else
        ``["image", "xyz"]``.
    """
    return ["input"] if modality == "rgb" else list(EXPORT_INPUT_NAMES)


class BTMExportModule(nn.Module):
    """Traceable inference pipeline of a fitted BTM, for ONNX and OpenVINO export.

    Args:
        btm (BTM): A fitted BTM Lightning module (its memory bank built, its modality resolved).

    Raises:
        ValueError: If the model is not fitted, or uses BTF's PIL blur (8-bit, not traceable).

    Example:
        >>> module = BTMExportModule(fitted_btm)  # doctest: +SKIP
        >>> predictions = module(image, xyz)  # doctest: +SKIP
        >>> predictions.pred_score.shape  # doctest: +SKIP
        torch.Size([1])
    """

    def __init__(self, btm: BTM) -> None:
        super().__init__()
        model = btm.model
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
        self.pre_processor = btm.pre_processor if isinstance(btm.pre_processor, nn.Module) else None
        self.post_processor = btm.post_processor if isinstance(btm.post_processor, nn.Module) else None
        self.rgb_branch = model.rgb_branch if "rgb" in modality else None
        self.xyz_branch = model.xyz_branch if "xyz" in modality else None
        self.fpfh: FPFHTorch | None = None
        if self.xyz_branch is not None:
            backend = self.xyz_branch.fpfh_backend
            if backend == "open3d":
                logger.warning(
                    "This BTM was fitted with fpfh_backend='open3d', which cannot be exported: the graph computes "
                    "FPFH with the torch implementation (Open3D's normal signs); scores differ slightly from the "
                    "PyTorch model's. Fit with fpfh_backend='torch' to export the exact computation."
                )
            # The fitted model's torch options, minus those that only choose how eager PyTorch runs.
            graph_options = {
                name: value
                for name, value in self.xyz_branch.fpfh_options.items()
                if name not in {"compile", "batch_chunk", "cpu_kernel"}
            }
            if backend == "open3d":
                graph_options["normal_orientation"] = "open3d"
            elif graph_options.get("search", "knn") == "knn":
                logger.warning(
                    "This BTM computes FPFH over Open3D's exact k-nearest neighbourhoods (search='knn'), which is not "
                    "a fixed-shape graph: the exported graph uses pixel-window neighbourhoods (search='window', "
                    "window %s) and scores differ slightly from the PyTorch model's. Fit with "
                    "fpfh_options={'search': 'window'} to export the exact computation.",
                    graph_options.get("window", 11),
                )
            self.fpfh = FPFHTorch(voxel_size=self.xyz_branch.voxel_size, **graph_options)
        self.scorer = model.scorer
        self.anomaly_map_generator = model.anomaly_map_generator
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", model.memory_bank.detach().clone())

    @property
    def input_names(self) -> list[str]:
        """Names of the graph inputs (see :func:`export_input_names`)."""
        return export_input_names(self.modality)

    def forward(self, image: torch.Tensor, xyz: torch.Tensor | None = None) -> InferenceBatch:
        """Score a batch.

        Args:
            image (torch.Tensor): ``(N, 3, H, W)`` RGB images in ``[0, 1]`` (resized and normalised in the graph).
            xyz (torch.Tensor | None): ``(N, 3, Hx, Wx)`` organized clouds in metres, zeros at missing points; required
                unless the model is RGB only.

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
        if self.xyz_branch is not None and self.fpfh is not None:
            if xyz is None:
                msg = f"This BTM uses modality {self.modality!r}: pass the organized point cloud `xyz`."
                raise ValueError(msg)
            cloud = F.interpolate(xyz.float(), size=(height, width), mode="nearest")
            features.append(self.xyz_branch.pool(self.fpfh(cloud), grid))
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
    btm: BTM,
    export_root: Path | str,
    model_file_name: str = "model",
    input_size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> Path:
    """Export a fitted BTM to ONNX (``export_root/weights/onnx/<model_file_name>.onnx``) with the dynamo exporter.

    Args:
        btm (BTM): Fitted model.
        export_root (Path | str): Output folder.
        model_file_name (str): File name without suffix.
        input_size (tuple[int, int] | None): Fixed image ``(H, W)``, or ``None`` for dynamic height and width.
        **kwargs: Passed to ``torch.onnx.export``; ``input_names`` and ``dynamic_shapes`` are set here.

    Returns:
        Path: The ``.onnx`` file.

    Raises:
        ValueError: If the model is not fitted or not exportable, or ``dynamo=False`` is asked for.
    """
    get_onnx_dynamo_flag(kwargs)
    for key in ("input_names", "dynamic_axes", "dynamic_shapes"):
        if key in kwargs:
            msg = f"`{key}` is fixed by the BTM export (inputs {EXPORT_INPUT_NAMES}); do not pass it."
            raise ValueError(msg)
    module = BTMExportModule(btm).eval().cpu()
    output_names = _output_names(module)
    batch = torch.export.Dim("batch_size")
    image_axes: dict[int, Any] = {0: batch}
    if input_size is None:
        image_axes |= {2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)}
    height, width = input_size or (256, 256)
    example: tuple[torch.Tensor, ...] = (torch.rand(2, 3, height, width),)
    dynamic_shapes: tuple[dict[int, Any], ...] = (image_axes,)
    if module.xyz_branch is not None:
        cloud_axes = {0: batch, 2: torch.export.Dim("xyz_height", min=8), 3: torch.export.Dim("xyz_width", min=8)}
        example += (_example_cloud(2, 64, 64),)
        dynamic_shapes += (cloud_axes,)
    export_root = create_export_root(export_root, ExportType.ONNX)
    onnx_path = export_root / f"{model_file_name}.onnx"
    partial = onnx_path.with_suffix(".onnx.partial")
    try:
        torch.onnx.export(
            module,
            example,
            str(partial),
            input_names=module.input_names,
            output_names=output_names,
            opset_version=kwargs.pop("opset_version", 18),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            **kwargs,
        )
        partial.replace(onnx_path)
    finally:
        partial.unlink(missing_ok=True)
    return onnx_path


def _example_cloud(batch: int, height: int, width: int) -> torch.Tensor:
    """A tilted plane 0.5 m in front of the camera, as an example input for tracing (values do not matter)."""
    v, u = torch.meshgrid(torch.linspace(-0.05, 0.05, height), torch.linspace(-0.05, 0.05, width), indexing="ij")
    cloud = torch.stack([u, v, 0.5 + 0.2 * u], dim=0)
    return cloud.expand(batch, -1, -1, -1).contiguous()


def check_compression(btm: BTM, compression_type: CompressionType | str | None, datamodule: object | None) -> None:
    """Refuse, before anything is written, a compression the model's inputs do not allow.

    Args:
        btm (BTM): The model to export.
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
    if kind == CompressionType.INT8_ACQ and btm.model.resolved_modality != "rgb":
        msg = (
            "compression_type=int8_acq validates through anomalib's single-input loop, which cannot feed the `xyz` "
            "input of an RGB + 3D BTM. Use compression_type=int8_ptq (calibrates image and xyz) or fp16."
        )
        raise ValueError(msg)


def quantize_ptq(model: CompiledModel, datamodule: AnomalibDataModule | None, modality: str) -> CompiledModel:
    """NNCF post-training INT8 quantization calibrated on the datamodule's validation split, all inputs fed.

    Args:
        model (CompiledModel): OpenVINO model as converted from ONNX.
        datamodule (AnomalibDataModule | None): Calibration data.
        modality (str): Resolved modality of the model (decides which inputs are fed).

    Returns:
        CompiledModel: The quantized model.

    Raises:
        ValueError: If no datamodule is given, or its batches carry no point clouds for an XYZ model.
    """
    import nncf

    if datamodule is None:
        msg = "compression_type=int8_ptq needs a datamodule for calibration."
        raise ValueError(msg)
    datamodule.setup("fit")
    dataloader = datamodule.val_dataloader()
    names = export_input_names(modality)

    def inputs(batch: Any) -> dict[str, Any]:
        image = batch.image.detach().cpu().numpy()
        if len(names) == 1:
            return {names[0]: image}
        xyz = getattr(batch, "depth_map", None)
        if xyz is None:
            msg = (
                f"int8_ptq of a BTM with modality {modality!r} calibrates both inputs, but the datamodule's batches "
                "carry no depth_map: use the depth datamodule the model was trained on (MVTec3D, Folder3D)."
            )
            raise ValueError(msg)
        return {"image": image, "xyz": xyz.detach().cpu().float().numpy()}

    if len(dataloader.dataset) < 300:
        logger.warning("INT8 calibration on %d samples (>300 recommended).", len(dataloader.dataset))
    return nncf.quantize(model, nncf.Dataset(dataloader, inputs), subset_size=len(dataloader.dataset))
