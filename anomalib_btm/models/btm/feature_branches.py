# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTM's two feature branches: RGB patch features from a frozen CNN and FPFH patch features of the cloud.

Both branches end on the same patch grid (28 × 28 for a 224 × 224 input) so that their features can be
concatenated per patch into one memory-bank vector.

* :class:`RGBBranch` — a frozen timm ``features_only`` backbone (``wide_resnet50_2`` layer2 + layer3 by
  default), a 3 × 3 mean with stride 1 and **padding 1** on each map (BTM; BTF had no padding; zero padding
  counted in the mean, as in a 1/9 mean convolution and PatchCore's ``AvgPool2d(3, 1, 1)``), every map brought to
  the grid of the first layer — by adaptive average pooling (BTF's resize, the default) or by bilinear
  interpolation (PatchCore's, ``feature_upsampling="bilinear"``) — and concatenated.
* :class:`XYZBranch` — the organized point cloud brought to the image size with **nearest**
  interpolation (bilinear would mix valid points with the zero background and invent points), FPFH per
  valid point (zeros elsewhere), the same 3 × 3 mean, then average-pooled down to the patch grid.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn
from torch.nn import functional as F

from anomalib_btm.features.fpfh import FPFH_DIM, check_fpfh_arguments, compute_fpfh
from anomalib_btm.tracing import capturing_graph
from anomalib_btm.weights import PretrainedWeightsError, download_error, missing_file_error, report_in_anomalib_cli

logger = logging.getLogger(__name__)

#: How deeper RGB feature maps reach the patch grid: BTF's adaptive average pooling (14 → 28 replicates each value
#: into a 2 × 2 block; BTM's faithful default) or PatchCore's bilinear interpolation (``align_corners=False``).
FEATURE_UPSAMPLING: tuple[str, ...] = ("adaptive_avg_pool", "bilinear")


def check_feature_upsampling(feature_upsampling: str) -> None:
    """Refuse an unknown ``feature_upsampling`` with a message that names the argument and its values.

    Args:
        feature_upsampling (str): The requested mode.

    Raises:
        ValueError: If it is not one of :data:`FEATURE_UPSAMPLING`.
    """
    if feature_upsampling not in FEATURE_UPSAMPLING:
        msg = (
            f"feature_upsampling must be one of {FEATURE_UPSAMPLING}, got {feature_upsampling!r}: "
            "'adaptive_avg_pool' is BTF's resize (the paper's setting), 'bilinear' is PatchCore's."
        )
        raise ValueError(msg)


def resize_features(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize feature maps exactly as ``AdaptiveAvgPool2d(size)`` does, with export-friendly ops.

    Integer down-scaling is an average pool, integer up-scaling a replication (what adaptive average pooling
    computes in both cases: nearest-neighbour interpolation, one ``Resize`` in ONNX, where ``repeat_interleave``
    exports as an ``Expand`` that took OpenVINO 2.6 ms on the 1024 layer3 maps); other ratios fall back to
    ``adaptive_avg_pool2d``.

    Args:
        features (torch.Tensor): ``(B, C, H, W)`` maps.
        size (tuple[int, int]): Target ``(h, w)``.

    Returns:
        torch.Tensor: ``(B, C, h, w)`` maps.
    """
    in_h, in_w = features.shape[-2:]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return features
    if in_h % out_h == 0 and in_w % out_w == 0:
        return F.avg_pool2d(features, kernel_size=(in_h // out_h, in_w // out_w))
    if out_h % in_h == 0 and out_w % in_w == 0:
        return F.interpolate(features, size=(out_h, out_w), mode="nearest")
    return F.adaptive_avg_pool2d(features, (out_h, out_w))


def to_patch_grid(features: torch.Tensor, size: tuple[int, int], feature_upsampling: str) -> torch.Tensor:
    """Bring a feature map to the patch grid.

    Args:
        features (torch.Tensor): ``(B, C, H, W)`` maps.
        size (tuple[int, int]): Patch grid ``(h, w)``.
        feature_upsampling (str): ``"adaptive_avg_pool"`` (:func:`resize_features`, what ``AdaptiveAvgPool2d`` does)
            or ``"bilinear"`` (``F.interpolate(..., mode="bilinear", align_corners=False)``, as anomalib's PatchCore).

    Returns:
        torch.Tensor: ``(B, C, h, w)`` maps; maps already on the grid are returned unchanged.
    """
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    if feature_upsampling == "bilinear":
        return F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False)
    return resize_features(features, size)


def resize_xyz(xyz: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an organized point cloud with nearest interpolation (no invented points).

    Args:
        xyz (torch.Tensor): ``(B, 3, H, W)`` cloud, zeros at missing points.
        size (tuple[int, int]): Target ``(h, w)``.

    Returns:
        torch.Tensor: ``(B, 3, h, w)`` cloud whose points are all points of the input.
    """
    if tuple(xyz.shape[-2:]) == tuple(size):
        return xyz
    return F.interpolate(xyz, size=tuple(size), mode="nearest")


def _is_extra_block(model: nn.Module, key: str) -> bool:
    """Whether ``key`` names a block inside a stage the model has, but that the model lacks (a deeper variant).

    Keys of stages the feature model dropped altogether (``layer4``, ``fc``) are not extra blocks: they are unused.

    Args:
        model (nn.Module): The feature model.
        key (str): A state_dict key absent from the model.

    Returns:
        bool: ``True`` if the key belongs to an extra block of an existing container (``layer2.3`` in a resnet18).
    """
    module = model
    for depth, part in enumerate(key.split(".")[:-1]):
        child = getattr(module, part, None) if part in dict(module.named_children()) else None
        if child is None:
            return depth > 0 and isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict)
        module = child
    return False


def load_backbone_weights(model: nn.Module, path: str | Path, backbone: str) -> None:
    """Load a local weights file into a timm ``features_only`` backbone.

    The file is a ``torch.save``d state_dict of the timm model or of its ``features_only`` variant (optionally
    wrapped in ``{"state_dict": ...}``). Keys the feature layers do not use (the classifier, later stages) are
    ignored; every key the feature layers need must be present with the right shape.

    Args:
        model (nn.Module): The timm feature model.
        path (str | Path): Weights file.
        backbone (str): Backbone name, for error messages.

    Raises:
        WeightsFileNotFoundError: If ``path`` does not exist (a ``FileNotFoundError``; the message gives the offline
            fixes).
        ValueError: If the file is not a state_dict or does not match the backbone.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise missing_file_error(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = (
            f"pre_trained={str(path)!r}: could not read the weights file ({error}). "
            "Save it with torch.save(state_dict)."
        )
        raise ValueError(msg) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"pre_trained={str(path)!r}: the file does not hold a state_dict (a mapping of names to tensors)."
        raise ValueError(msg)
    own = model.state_dict()
    extra_blocks = sorted({key.rsplit(".", 1)[0] for key in state if key not in own and _is_extra_block(model, key)})
    missing = [key for key in own if key not in state and not key.endswith("num_batches_tracked")]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if missing or mismatched or extra_blocks:
        details = "; ".join(
            ([f"{len(missing)} missing keys, e.g. {missing[:3]}"] if missing else [])
            + ([f"{len(mismatched)} shape mismatches, e.g. {mismatched[:2]}"] if mismatched else [])
            + ([f"blocks the backbone does not have, e.g. {extra_blocks[:2]}"] if extra_blocks else []),
        )
        msg = (
            f"pre_trained={str(path)!r} does not match backbone {backbone!r} ({details}). "
            "Pass weights saved from the same timm architecture, or set backbone to the one the file was saved from."
        )
        raise ValueError(msg)
    model.load_state_dict({key: state[key] for key in own if key in state}, strict=False)


class RGBBranch(nn.Module):
    """Frozen CNN patch features.

    Args:
        backbone (str): timm model name. Defaults to ``"wide_resnet50_2"``.
        layers (Sequence[str]): Feature layers; the first one sets the patch grid.
        pre_trained (bool | str): ``True`` for timm's ImageNet weights, ``False`` for random weights, or the
            path of a local weights file (see :func:`load_backbone_weights`).
        patch_padding (bool): 3 × 3 mean with padding 1 (BTM, keeps patches aligned with the image) or without
            padding (BTF: 28 → 26, then adaptive average pooling back to 28).
        feature_upsampling (str): How maps reach the grid of the first layer: ``"adaptive_avg_pool"`` (BTF's resize,
            the paper's setting) or ``"bilinear"`` (PatchCore's). See :data:`FEATURE_UPSAMPLING`.
        defer_weights (bool): Build the backbone with random weights and fetch the ``pre_trained`` weights only when
            :meth:`load_pretrained_weights` is called (BTM's Lightning module does so when a fit starts). Loading a
            state_dict that holds the backbone (a checkpoint) supplies the weights instead, so a model restored from
            a checkpoint never downloads anything. ``False`` (default) loads them now.

    Raises:
        ValueError: On an empty ``layers``, a layer the backbone lacks, or an unknown ``feature_upsampling``.
        PretrainedWeightsError: Without ``defer_weights``, if the weights cannot be obtained (see
            :meth:`load_pretrained_weights`).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool | str = True,
        patch_padding: bool = True,
        feature_upsampling: str = "adaptive_avg_pool",
        defer_weights: bool = False,
    ) -> None:
        super().__init__()
        check_feature_upsampling(feature_upsampling)
        layers = list(layers)
        if not layers:
            msg = "layers must name at least one backbone layer, e.g. ('layer2', 'layer3')."
            raise ValueError(msg)
        if not isinstance(pre_trained, bool | str | Path):
            msg = f"pre_trained must be True, False or the path of a weights file, got {pre_trained!r}."
            raise TypeError(msg)
        # Random weights first: building the module never downloads (the weights may come from a checkpoint).
        self.extractor = TimmFeatureExtractor(backbone=backbone, layers=list(layers), pre_trained=False).eval()
        if list(self.extractor.layers) != layers:
            dropped = [layer for layer in layers if layer not in self.extractor.layers]
            msg = f"layers: {dropped} not found in backbone {backbone!r}. See timm's feature_info for layer names."
            raise ValueError(msg)
        for parameter in self.extractor.parameters():
            parameter.requires_grad_(False)
        self.backbone = backbone
        self.pre_trained: bool | str = str(pre_trained) if isinstance(pre_trained, Path) else pre_trained
        self.weights_pending = pre_trained is not False
        self.layers = layers
        self.feature_upsampling = feature_upsampling
        self.pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1 if patch_padding else 0)
        self.out_dim = int(sum(self.extractor.out_dims))
        if not defer_weights:
            self.load_pretrained_weights()

    def load_pretrained_weights(self) -> bool:
        """Load the ``pre_trained`` weights into the backbone, unless they are loaded already or came with a state_dict.

        ``pre_trained=True`` asks timm for the ImageNet weights (its cache, else a download); a path loads that file
        (see :func:`load_backbone_weights`).

        Returns:
            bool: Whether weights were loaded now.

        Raises:
            PretrainedWeightsError: If timm cannot obtain the ImageNet weights (offline, nothing cached), or the
                weights file does not exist (a ``WeightsFileNotFoundError``); one line naming ``pre_trained`` and the
                offline fixes.
            ValueError: If the weights file is unreadable or does not match the backbone.
        """
        if not self.weights_pending:
            return False
        try:
            if self.pre_trained is True:
                try:
                    source = TimmFeatureExtractor(backbone=self.backbone, layers=self.layers, pre_trained=True)
                except Exception as error:  # timm / huggingface_hub / urllib: whatever the download raised
                    raise download_error(self.backbone, error) from error
                self.extractor.feature_extractor.load_state_dict(source.feature_extractor.state_dict())
            else:
                load_backbone_weights(self.extractor.feature_extractor, str(self.pre_trained), self.backbone)
        except PretrainedWeightsError:
            report_in_anomalib_cli()  # one line instead of a traceback in `anomalib train`
            raise
        self.weights_pending = False
        logger.info("Loaded the pre_trained=%r weights of backbone %r.", self.pre_trained, self.backbone)
        return True

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """A state_dict that holds the backbone (a checkpoint) supplies its weights: nothing is left to load."""
        if any(key.startswith(f"{prefix}extractor.") for key in state_dict):
            self.weights_pending = False
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def train(self, mode: bool = True) -> RGBBranch:
        """Keep the frozen backbone in eval mode (batch-norm statistics stay ImageNet's).

        Args:
            mode (bool): Ignored.

        Returns:
            RGBBranch: ``self``.
        """
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Extract patch features.

        Args:
            image (torch.Tensor): ``(B, 3, H, W)`` normalised images.

        Returns:
            torch.Tensor: ``(B, C, H/s, W/s)`` patch features on the grid of the first layer.
        """
        if image.device.type == "cpu" and not capturing_graph():
            # oneDNN's convolutions run faster on NHWC inputs on CPU; same features up to float rounding.
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            features = self.extractor(image)
        grid = tuple(features[self.layers[0]].shape[-2:])
        return torch.cat(
            [to_patch_grid(self.pooler(features[layer]), grid, self.feature_upsampling) for layer in self.layers], dim=1
        )


@functools.lru_cache(maxsize=16)
def _pooling_matrix(length: int, cells: int, padding: int) -> torch.Tensor:
    """One axis of :func:`patch_pooling`: 3-tap mean (zero padding counted), then adaptive mean to ``cells``."""
    impulses = torch.eye(length, dtype=torch.float64)[:, None, :]  # one unit impulse per pixel
    boxed = F.avg_pool1d(impulses, kernel_size=3, stride=1, padding=padding)
    return F.adaptive_avg_pool1d(boxed, cells)[:, 0, :].T.contiguous()


def patch_pooling(
    size: tuple[int, int], grid: tuple[int, int], patch_padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`XYZBranch.pool` as a separable linear map: ``(P_rows (h, H), P_columns (w, W))``, float64.

    The 3 × 3 mean (zero padding counted) and the pooling to the grid are both separable, so ``pool(fpfh, grid)``
    equals :func:`~anomalib_btm.features.fpfh_math.pool_separable` of these matrices (up to rounding). The fused
    FPFH kernels pool with them without writing the full map.

    Args:
        size (tuple[int, int]): ``(H, W)`` of the FPFH map (the working size).
        grid (tuple[int, int]): Patch grid ``(h, w)``.
        patch_padding (bool): The 3 × 3 mean with padding 1 (BTM) or without (BTF).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The row and column pooling matrices (cached: do not modify them).

    Example:
        >>> rows, columns = patch_pooling((224, 224), (28, 28))
        >>> rows.shape, float(rows.sum())
        (torch.Size([28, 224]), 27.9166...)
    """
    padding = 1 if patch_padding else 0
    return _pooling_matrix(int(size[0]), int(grid[0]), padding), _pooling_matrix(int(size[1]), int(grid[1]), padding)


class XYZBranch(nn.Module):
    """FPFH patch features of the organized point cloud.

    Args:
        fpfh_backend (str): ``"torch"`` (default) or ``"open3d"`` (the reference).
        voxel_size (float): BTF's voxel size in metres; normals use radius ``2·voxel`` (30 NN), FPFH
            ``5·voxel`` (100 NN).
        patch_padding (bool): 3 × 3 mean with padding 1 (BTM) or without (BTF).
        fpfh_options (dict | None): Options of the torch backend (``window``, ``normal_orientation``, ...; see
            :func:`anomalib_btm.features.fpfh_torch.fpfh_torch`), validated here.
    """

    out_dim = FPFH_DIM

    def __init__(
        self,
        fpfh_backend: str = "torch",
        voxel_size: float = 0.05,
        patch_padding: bool = True,
        fpfh_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        fpfh_options = dict(fpfh_options or {})
        check_fpfh_arguments(fpfh_backend, voxel_size, fpfh_options, prefix="fpfh_")
        self.fpfh_backend = fpfh_backend
        self.voxel_size = voxel_size
        self.fpfh_options = fpfh_options
        self.patch_padding = patch_padding
        self.pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1 if patch_padding else 0)

    def forward(self, xyz: torch.Tensor, image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """Extract patch features.

        Args:
            xyz (torch.Tensor): ``(B, 3, Hx, Wx)`` organized cloud in metres, zeros at missing points.
            image_size (tuple[int, int]): Working size the cloud is resized to (the RGB input size).
            grid (tuple[int, int]): Patch grid ``(h, w)``.

        Returns:
            torch.Tensor: ``(B, 33, h, w)`` patch features.
        """
        xyz = resize_xyz(xyz.float(), image_size)
        if capturing_graph():  # a traced graph keeps the pooling layers
            fpfh = compute_fpfh(xyz, backend=self.fpfh_backend, voxel_size=self.voxel_size, **self.fpfh_options)
            return self.pool(fpfh, grid)
        pooling = self.pooling(tuple(xyz.shape[-2:]), grid)
        return compute_fpfh(
            xyz, backend=self.fpfh_backend, voxel_size=self.voxel_size, pooling=pooling, **self.fpfh_options
        )

    def pooling(self, size: tuple[int, int], grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`pool` as a separable linear map (:func:`patch_pooling` with this branch's padding).

        Args:
            size (tuple[int, int]): ``(H, W)`` of the FPFH map (the working size).
            grid (tuple[int, int]): Patch grid ``(h, w)``.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: The row and column pooling matrices.
        """
        return patch_pooling(size, grid, self.patch_padding)

    def pool(self, fpfh: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch features from a per-pixel FPFH map: 3 × 3 mean, then pooled to the patch grid.

        Args:
            fpfh (torch.Tensor): ``(B, 33, H, W)`` FPFH map at the working size.
            grid (tuple[int, int]): Patch grid ``(h, w)``.

        Returns:
            torch.Tensor: ``(B, 33, h, w)`` patch features.
        """
        return resize_features(self.pooler(fpfh), grid)
