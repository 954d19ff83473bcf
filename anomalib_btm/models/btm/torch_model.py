# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""PyTorch model of BTM (Back to the Metrics): RGB + FPFH memory bank with dual-k scoring.

Per patch, the RGB features of a frozen CNN and the FPFH descriptors of the organized point cloud are
concatenated (no scaling between modalities) into one memory bank, reduced by a greedy k-center coreset.
At test time one kNN query per image gives the image score (max over patches of the 1-NN distance) and the
pixel map (mean squared distance to the 3 nearest bank features, upsampled and blurred).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import nn

from anomalib_btm.checks import check_choice

from .anomaly_map import AnomalyMapGenerator
from .distributed import distributed_memory_bank
from .feature_branches import RGBBranch, XYZBranch, check_feature_upsampling
from .memory_bank import EmbeddingStore, select_memory_bank
from .scoring import DualKScorer

logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("auto", "rgb", "xyz", "rgb+xyz")
# Persistent code of the resolved modality (``auto`` resolves on the first batch).
_MODALITY_CODES: dict[str, int] = {"rgb": 1, "xyz": 2, "rgb+xyz": 3}
_CODE_MODALITIES: dict[int, str] = {code: name for name, code in _MODALITY_CODES.items()}

PRESETS: tuple[str, ...] = ("btm", "btf")
#: What ``preset="btf"`` changes, from BTM's defaults to BTF's own choices (eliahuhorwitz/3D-ADS).
BTF_SETTINGS: dict[str, object] = {"image_score": "reweighted", "k_pixel": 1, "pixel_metric": "mean"}
_BTM_SETTINGS: dict[str, object] = {"image_score": "nearest", "k_pixel": 3, "pixel_metric": "squared_mean"}


def _resolve_preset(preset: str, **settings: object) -> dict[str, object]:
    """Apply a preset to the scoring settings, refusing explicit values that contradict it.

    Args:
        preset (str): ``"btm"`` or ``"btf"``.
        **settings (object): ``image_score``, ``k_pixel`` and ``pixel_metric`` as passed.

    Returns:
        dict[str, object]: The settings to use.

    Raises:
        ValueError: On an unknown preset, or on settings that contradict ``preset="btf"``.
    """
    check_choice("preset", preset, PRESETS)
    if preset == "btm":
        return settings
    conflicts = [
        f"{name}={value!r}"
        for name, value in settings.items()
        if value != _BTM_SETTINGS[name] and value != BTF_SETTINGS[name]
    ]
    if conflicts:
        msg = f"preset='btf' fixes {BTF_SETTINGS}; drop {', '.join(conflicts)} or use preset='btm' to set them freely."
        raise ValueError(msg)
    return dict(BTF_SETTINGS)


class PhaseTimer:
    """Accumulated wall time per named phase (feature extraction, FPFH, coreset, scoring)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time a block under ``phase``.

        Args:
            phase (str): Phase name.

        Yields:
            None
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            self.calls[phase] += 1

    def summary(self) -> str:
        """One line per phase: total seconds and calls.

        Returns:
            str: Human-readable table.
        """
        return "\n".join(
            f"{phase:<20} {sec:8.2f} s  ({self.calls[phase]} calls)" for phase, sec in self.seconds.items()
        )


class BTMModel(DynamicBufferMixin, nn.Module):
    """BTM torch model.

    Args:
        backbone (str): timm backbone of the RGB branch. Defaults to ``"wide_resnet50_2"``.
        layers (Sequence[str]): Backbone layers. Defaults to ``("layer2", "layer3")``.
        pre_trained (bool | str): ImageNet weights (``True``), random weights (``False``) or a local
            weights file path.
        modality (str): ``"auto"`` (XYZ used when the input carries a cloud), ``"rgb"``, ``"xyz"`` or
            ``"rgb+xyz"``.
        k_image (int): Neighbours for the image score. Defaults to ``1``.
        k_pixel (int): Neighbours for the pixel map. Defaults to ``3``.
        pixel_metric (str): ``"squared_mean"`` or ``"mean"``.
        image_score (str): ``"nearest"`` or ``"reweighted"``.
        fpfh_backend (str): ``"torch"`` (default) or ``"open3d"``.
        voxel_size (float): FPFH voxel size in metres. Defaults to ``0.05`` (BTF).
        fpfh_options (dict | None): Options of the torch FPFH backend (``window``, ``normal_orientation``, ...).
        blur_kernel_size (int): Gaussian kernel of the anomaly map. Defaults to ``15``.
        blur_sigma (float): Gaussian sigma of the anomaly map. Defaults to ``4.0``.
        n_reweight (int): Neighbours of the reweighted score. Defaults to ``3``.
        preset (str): ``"btm"`` (the arguments as given) or ``"btf"``: BTF's own choices on the same code — 3 × 3
            mean without padding then adaptive average pooling to the grid, reweighted image score
            (``n_reweight`` 3, √D scaling), 1-NN distance map quantised to 8 bits before a PIL blur of radius
            ``blur_sigma``.
        store_dtype (str): dtype of the training-feature store, ``"float32"`` or ``"float16"`` (half the memory;
            the coreset and the bank stay float32).
        feature_upsampling (str): How the deeper RGB feature maps reach the patch grid: ``"adaptive_avg_pool"``
            (BTF's resize, 14 → 28 replicates values; the paper's setting) or ``"bilinear"`` (PatchCore's
            ``F.interpolate(mode="bilinear", align_corners=False)``). ``preset="btf"`` keeps BTF's pooling.
        defer_weights (bool): Build the backbone with random weights and fetch the ``pre_trained`` weights only on
            :meth:`load_pretrained_weights` or the first training-mode forward (see
            :class:`~anomalib_btm.models.btm.feature_branches.RGBBranch`); a loaded state_dict supplies them instead.

    Example:
        >>> model = BTMModel(pre_trained=False, modality="rgb")
        >>> embedding = model(torch.rand(2, 3, 224, 224))  # training mode: patch embeddings
        >>> embedding.shape
        torch.Size([1568, 1536])
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool | str = True,
        modality: str = "auto",
        k_image: int = 1,
        k_pixel: int = 3,
        pixel_metric: str = "squared_mean",
        image_score: str = "nearest",
        fpfh_backend: str = "torch",
        voxel_size: float = 0.05,
        blur_kernel_size: int = 15,
        blur_sigma: float = 4.0,
        n_reweight: int = 3,
        preset: str = "btm",
        store_dtype: str = "float32",
        fpfh_options: dict[str, Any] | None = None,
        feature_upsampling: str = "adaptive_avg_pool",
        defer_weights: bool = False,
    ) -> None:
        super().__init__()
        check_choice("modality", modality, MODALITIES)
        check_feature_upsampling(feature_upsampling)
        scoring = _resolve_preset(preset, image_score=image_score, k_pixel=k_pixel, pixel_metric=pixel_metric)
        btf = preset == "btf"
        if btf and feature_upsampling != "adaptive_avg_pool":
            msg = (
                f"preset='btf' resizes feature maps with adaptive average pooling (BTF's); drop "
                f"feature_upsampling={feature_upsampling!r} or use preset='btm' to set it freely."
            )
            raise ValueError(msg)
        self.modality = modality
        self.preset = preset
        self.feature_upsampling = feature_upsampling
        self.rgb_branch = (
            RGBBranch(
                backbone,
                layers,
                pre_trained,
                patch_padding=not btf,
                feature_upsampling=feature_upsampling,
                defer_weights=defer_weights,
            )
            if modality != "xyz"
            else None
        )
        self.xyz_branch = (
            XYZBranch(fpfh_backend, voxel_size, patch_padding=not btf, fpfh_options=fpfh_options)
            if modality != "rgb"
            else None
        )
        self.scorer = DualKScorer(
            k_image, scoring["k_pixel"], scoring["pixel_metric"], scoring["image_score"], n_reweight
        )
        self.anomaly_map_generator = AnomalyMapGenerator(blur_kernel_size, blur_sigma, "pil" if btf else "gaussian")
        self.timer = PhaseTimer()

        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", torch.empty(0))
        self._modality_code: torch.Tensor
        self.register_buffer("_modality_code", torch.tensor(_MODALITY_CODES.get(modality, 0)))
        self.embedding_store = EmbeddingStore(store_dtype)

    def load_pretrained_weights(self) -> bool:
        """Load the RGB backbone's ``pre_trained`` weights if they are still pending (see ``defer_weights``).

        Returns:
            bool: Whether weights were loaded now.

        Raises:
            PretrainedWeightsError: If they cannot be obtained (one line naming ``pre_trained`` and the offline fixes).
        """
        return self.rgb_branch.load_pretrained_weights() if self.rgb_branch is not None else False

    @property
    def resolved_modality(self) -> str | None:
        """The modality in use: ``modality`` itself, or what ``"auto"`` resolved to (``None`` before)."""
        return _CODE_MODALITIES.get(int(self._modality_code))

    def _resolve_modality(self, xyz: torch.Tensor | None) -> str:
        resolved = self.resolved_modality
        if resolved is None:
            resolved = "rgb+xyz" if xyz is not None else "rgb"
            self._modality_code.fill_(_MODALITY_CODES[resolved])
            logger.info("BTM modality 'auto' resolved to %r.", resolved)
        if "xyz" in resolved and xyz is None:
            msg = (
                f"BTM uses modality {resolved!r} but the batch carries no point cloud (depth_map). Use a depth "
                "datamodule such as anomalib.data.MVTec3D or Folder3D, or train with modality='rgb'."
            )
            raise ValueError(msg)
        if "rgb" in resolved and self.rgb_branch is None:
            msg = f"BTM was built with modality={self.modality!r} but the checkpoint uses {resolved!r}."
            raise ValueError(msg)
        return resolved

    def extract(self, image: torch.Tensor, xyz: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding of a batch: RGB features, FPFH features or both, concatenated per patch.

        Args:
            image (torch.Tensor): ``(B, 3, H, W)`` normalised images.
            xyz (torch.Tensor | None): ``(B, 3, Hx, Wx)`` organized clouds in metres, zeros at missing points.

        Returns:
            torch.Tensor: ``(B, D, h, w)`` patch features.
        """
        modality = self._resolve_modality(xyz)
        image_size = (int(image.shape[-2]), int(image.shape[-1]))
        features = []
        if "rgb" in modality:
            assert self.rgb_branch is not None
            with self.timer("feature_extraction"):
                features.append(self.rgb_branch(image))
            grid = (int(features[0].shape[-2]), int(features[0].shape[-1]))
        else:
            grid = (image_size[0] // 8, image_size[1] // 8)
        if "xyz" in modality:
            assert self.xyz_branch is not None
            assert xyz is not None
            if xyz.dim() != 4 or xyz.shape[1] != 3 or xyz.shape[0] != image.shape[0]:
                msg = (
                    f"depth_map/xyz must be an organized cloud of shape (B, 3, H, W) with B={image.shape[0]}, "
                    f"got {tuple(xyz.shape)}. Pass the XYZ tiff (H×W×3, metres) as read by MVTec3D/Folder3D."
                )
                raise ValueError(msg)
            with self.timer("fpfh"):
                features.append(self.xyz_branch(xyz.to(image.device), image_size, grid))
        return torch.cat(features, dim=1) if len(features) > 1 else features[0]

    def forward(self, image: torch.Tensor, xyz: torch.Tensor | None = None) -> torch.Tensor | InferenceBatch:
        """Embed (training) or score (inference) a batch.

        Args:
            image (torch.Tensor): ``(B, 3, H, W)`` normalised images.
            xyz (torch.Tensor | None): ``(B, 3, Hx, Wx)`` organized clouds, or ``None`` for RGB only.

        Returns:
            torch.Tensor | InferenceBatch: In training mode the ``(B·h·w, D)`` patch embeddings (also stored for
            the memory bank); in eval mode ``pred_score`` ``(B,)`` and ``anomaly_map`` ``(B, 1, H, W)``.

        Raises:
            ValueError: If scoring is asked before the memory bank is built.
        """
        if self.training:
            self.load_pretrained_weights()  # collecting a memory bank: the backbone must hold the asked-for weights
        embedding = self.extract(image, xyz)
        if self.training:
            flat = embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1]).detach()
            self.embedding_store.append(flat, samples=embedding.shape[0])
            return flat
        if self.memory_bank.numel() == 0:
            msg = "The BTM memory bank is empty: fit the model (anomalib train / Engine.fit) before testing."
            raise ValueError(msg)
        if embedding.shape[1] != self.memory_bank.shape[1]:
            msg = (
                f"Feature dimension {embedding.shape[1]} does not match the memory bank's {self.memory_bank.shape[1]}: "
                "the input's modality differs from the one the model was trained with."
            )
            raise ValueError(msg)
        with self.timer("scoring"):
            scores = self.scorer(embedding, self.memory_bank)
            anomaly_map = self.anomaly_map_generator(scores.patch_scores, image.shape[-2:])
        return InferenceBatch(pred_score=scores.pred_score, anomaly_map=anomaly_map)

    def subsample_embedding(
        self,
        sampling_ratio: float,
        progress: bool = False,
        max_bank_size: int | None = None,
        chunk_size: int | None = None,
        method: str = "pruned",
        seed: int | None = None,
        distributed: bool = False,
    ) -> None:
        """Build the memory bank from the stored embeddings with a greedy k-center coreset, then free the store.

        Args:
            sampling_ratio (float): Fraction of patches kept, in ``(0, 1]``.
            progress (bool): Show a progress bar.
            max_bank_size (int | None): Upper bound on the bank's rows.
            chunk_size (int | None): Coreset on chunks of this many patches (see :func:`select_memory_bank`).
            method (str): ``"pruned"`` (default) or ``"exact"`` (see :func:`select_memory_bank`).
            seed (int | None): Seed of the coreset's projection and first center (``None``: global generators).
            distributed (bool): Every rank of the process group holds a shard of the training samples; build the
                bank of their union on every rank (see :mod:`.distributed`).

        Raises:
            ValueError: If no embeddings were collected.
        """
        store = self.embedding_store
        n_patches = len(store)
        if n_patches == 0 and not distributed:
            msg = "BTM collected no training features: the training set is empty. Check the datamodule's train split."
            raise ValueError(msg)
        with self.timer("coreset"):
            if distributed:
                self.memory_bank = distributed_memory_bank(
                    store.embeddings,
                    store.keys,
                    store.rows_per_sample or 0,
                    sampling_ratio,
                    seed if seed is not None else 0,
                    max_bank_size,
                    progress,
                )
            else:
                self.memory_bank = select_memory_bank(
                    store.embeddings,
                    sampling_ratio,
                    max_bank_size,
                    chunk_size,
                    progress,
                    method=method,
                    seed=seed,
                    row_order=store.sample_order(),
                    block_rows=store.rows_per_sample,
                )
        store.clear()
        logger.info("BTM memory bank: %d × %d from %d patches.", *self.memory_bank.shape, n_patches)
