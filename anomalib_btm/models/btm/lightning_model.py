# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTM: Back to the Metrics — RGB + 3D anomaly detection with dual-k scoring.

BTM (Lin & Li, Appl. Sci. 2024) keeps BTF's features — ImageNet CNN patch features of the RGB image and FPFH
descriptors of the organized point cloud, concatenated per patch into one coreset memory bank — and changes
the metrics: the image score is the maximum over patches of the **1-NN** distance, the pixel map the mean of
squared distances to the **3** nearest bank features, blurred with a Gaussian (kernel 15, σ 4).

Example:
    >>> from anomalib.data import MVTec3D
    >>> from anomalib.engine import Engine
    >>> from anomalib_btm import BTM
    >>> datamodule = MVTec3D(root="./datasets/MVTec3D", category="bagel")
    >>> model = BTM()
    >>> engine = Engine()
    >>> engine.fit(model=model, datamodule=datamodule)  # doctest: +SKIP
    >>> engine.test(model=model, datamodule=datamodule)  # doctest: +SKIP

Paper: https://doi.org/10.3390/app14167016
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torch.utils.data import DistributedSampler

from anomalib_btm.data.depth import check_metric_units, verify_sample_files
from anomalib_btm.visualize import BTMVisualizer

from .coreset import check_coreset_method
from .distributed import broadcast_seed, is_distributed, padded_tail, skip_ddp_wrapper, unpadded_eval_dataloaders
from .export import check_compression, export_onnx, quantize_ptq
from .prediction_cache import PredictionCache, model_token, sample_keys
from .torch_model import BTMModel

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib import TaskType
    from anomalib.data import AnomalibDataModule
    from anomalib.deploy.export import CompressionType
    from openvino import CompiledModel
    from torchmetrics import Metric

logger = logging.getLogger(__name__)


class BTM(MemoryBankMixin, AnomalibModule):
    """BTM Lightning module.

    Args:
        backbone (str): timm backbone of the RGB branch. Defaults to ``"wide_resnet50_2"``.
        layers (Sequence[str]): Backbone layers. Defaults to ``("layer2", "layer3")``.
        pre_trained (bool | str): ImageNet weights (``True``), random weights (``False``) or the path of a local
            weights file (a ``torch.save``d state_dict of the timm model or its ``features_only`` variant). Fetched
            when a fit starts, never at construction: a model restored from a checkpoint (``anomalib test/export/predict
            --ckpt_path``, ``load_from_checkpoint``) takes its backbone from the checkpoint and downloads nothing. A
            fit whose weights cannot be obtained stops before any work with ``PretrainedWeightsError``.
        modality (str): ``"auto"`` (uses XYZ when batches carry a ``depth_map``), ``"rgb"``, ``"xyz"`` or
            ``"rgb+xyz"``. Defaults to ``"auto"``.
        coreset_sampling_ratio (float): Fraction of training patches kept in the memory bank. Defaults to ``0.1``.
        k_image (int): Neighbours for the image score. Defaults to ``1`` (BTM).
        k_pixel (int): Neighbours for the pixel map. Defaults to ``3`` (BTM).
        pixel_metric (str): ``"squared_mean"`` (BTM) or ``"mean"``.
        image_score (str): ``"nearest"`` (BTM) or ``"reweighted"`` (BTF/PatchCore, for comparison).
        fpfh_backend (str): ``"torch"`` (default: Open3D's definition on the organized grid, fast on CPU and GPU,
            exportable; same detection metrics as Open3D, see the README) or ``"open3d"`` (BTF's reference).
        voxel_size (float): FPFH voxel size in metres (normals radius 2·voxel, FPFH radius 5·voxel).
        fpfh_options (dict | None): Options of the torch FPFH backend, e.g. ``{"window": 13}`` for steep surfaces or
            ``{"normal_orientation": "open3d"}`` for Open3D's normal signs (see
            :func:`anomalib_btm.features.fpfh_torch.fpfh_torch`). Exported models compute the same.
        blur_kernel_size (int): Gaussian kernel size of the anomaly map. Defaults to ``15``.
        blur_sigma (float): Gaussian sigma of the anomaly map. Defaults to ``4.0``.
        max_bank_size (int | None): Upper bound on the memory bank's rows (``None``: ``coreset_sampling_ratio``
            alone decides, the paper's setting).
        coreset_chunk_size (int | None): Run the coreset on chunks of this many training patches, so that time
            and memory scale with the chunk rather than the training set (``None``: one coreset, the paper's).
        store_dtype (str): ``"float32"`` or ``"float16"`` for the training features held until the coreset.
        coreset_method (str): ``"pruned"`` (default: greedy k-center with triangle-inequality pruning, the same
            selection as the plain loop at a fraction of its cost; runs on one or several DDP processes) or
            ``"exact"`` (anomalib's ``KCenterGreedy`` arithmetic, one process). Both take the training patches in
            the order of their image paths and draw the projection and first center from the run's seed
            (``torch.initial_seed()``, rank 0's under DDP), so they differ only in rounding.
        preset (str): ``"btm"`` (default) or ``"btf"``: BTF's own choices on the same code (no padding in the
            3 × 3 mean, reweighted image score, 1-NN map blurred through 8-bit PIL), so BTF vs BTM is one flag.
        feature_upsampling (str): How the deeper RGB feature map (layer3, 14 × 14) reaches the patch grid (layer2,
            28 × 28): ``"adaptive_avg_pool"`` (default; BTF's resize, which replicates each value into a 2 × 2 block —
            the setting that reproduces the paper) or ``"bilinear"`` (anomalib PatchCore's interpolation, the drop-in
            for PatchCore). Saved with the checkpoint and computed by exported models.
        cache_predictions (bool): Reuse a sample's raw score and map when the same input is scored again with the
            same memory bank, backbone and settings (on CPU) — ``anomalib train`` validates and then tests the same
            samples under anomalib's default ``val_split_mode`` for MVTec 3D-AD. Thresholds, metrics and
            visualizations still run on every batch; the outputs are identical. ``False`` scores every batch.
        pre_processor (PreProcessor | bool): Pre-processor, or ``True`` for the default (resize to 224, ImageNet
            normalisation).
        post_processor (PostProcessor | bool): Post-processor, or ``True`` for the default.
        evaluator (Evaluator | bool): Evaluator, or ``True`` for the default (image AUROC and F1, pixel AUROC,
            pixel AUPRO at FPR 0.3).
        visualizer (Visualizer | bool): Visualizer, or ``True`` for the default.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        pre_trained: bool | str = True,
        modality: str = "auto",
        coreset_sampling_ratio: float = 0.1,
        k_image: int = 1,
        k_pixel: int = 3,
        pixel_metric: str = "squared_mean",
        image_score: str = "nearest",
        fpfh_backend: str = "torch",
        voxel_size: float = 0.05,
        fpfh_options: dict[str, Any] | None = None,
        blur_kernel_size: int = 15,
        blur_sigma: float = 4.0,
        max_bank_size: int | None = None,
        coreset_chunk_size: int | None = None,
        store_dtype: str = "float32",
        coreset_method: str = "pruned",
        preset: str = "btm",
        feature_upsampling: str = "adaptive_avg_pool",
        cache_predictions: bool = True,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if not 0.0 < coreset_sampling_ratio <= 1.0:
            msg = f"coreset_sampling_ratio must be in (0, 1], got {coreset_sampling_ratio}."
            raise ValueError(msg)
        self.model: BTMModel = BTMModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            modality=modality,
            k_image=k_image,
            k_pixel=k_pixel,
            pixel_metric=pixel_metric,
            image_score=image_score,
            fpfh_backend=fpfh_backend,
            voxel_size=voxel_size,
            fpfh_options=fpfh_options,
            blur_kernel_size=blur_kernel_size,
            blur_sigma=blur_sigma,
            preset=preset,
            store_dtype=store_dtype,
            feature_upsampling=feature_upsampling,
            defer_weights=True,  # loaded in on_fit_start, unless a checkpoint supplies them
        )
        check_coreset_method(coreset_method)
        self.coreset_sampling_ratio = coreset_sampling_ratio
        self.max_bank_size = max_bank_size
        self.coreset_chunk_size = coreset_chunk_size
        self.coreset_method = coreset_method
        self.cache_predictions = cache_predictions
        self.prediction_cache = PredictionCache()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """The default pre-processor of anomalib (resize, ImageNet normalisation; no crop) at 224 × 224.

        Args:
            image_size (tuple[int, int] | None): Working size. Defaults to ``(224, 224)``.

        Returns:
            PreProcessor: The pre-processor.
        """
        return AnomalibModule.configure_pre_processor(image_size or (224, 224))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Default evaluator: image AUROC, image F1, pixel AUROC and pixel AUPRO integrated to FPR 0.3.

        Returns:
            Evaluator: The evaluator.
        """
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        ]
        return Evaluator(test_metrics=test_metrics)

    @classmethod
    def configure_visualizer(cls) -> BTMVisualizer:
        """Default visualizer: anomalib's 2D overlays; ``BTMVisualizer(save_ply=True)`` adds 3D heat maps.

        Returns:
            BTMVisualizer: The visualizer.
        """
        return BTMVisualizer()

    @staticmethod
    def configure_optimizers() -> None:
        """BTM trains no weights.

        Returns:
            None
        """
        return

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The RGB image and, when the batch carries one and the model uses it, the checked organized point cloud.

        Each cloud is checked (shape, NaN/inf, at least one valid point, metric units) and a bad one raises an error
        that names its file, instead of failing inside FPFH or silently producing zero features.

        Args:
            batch (Batch): An anomalib ``ImageBatch`` or ``DepthBatch``.

        Returns:
            tuple[torch.Tensor, torch.Tensor | None]: ``image`` and ``depth_map`` (or ``None``).
        """
        xyz = getattr(batch, "depth_map", None)
        if xyz is not None and self.model.modality != "rgb" and self.model.resolved_modality != "rgb":
            paths = getattr(batch, "depth_path", None) or [None] * len(xyz)
            if xyz.dim() != 4 or xyz.shape[1] != 3:
                msg = f"depth_map must be (B, 3, H, W) organized XYZ clouds, got {tuple(xyz.shape)} (files {paths})."
                raise ValueError(msg)
            for cloud, path in zip(xyz, paths, strict=True):
                check_metric_units(cloud.permute(1, 2, 0).detach().cpu().numpy(), path)
        return batch.image, xyz

    def _check_files(self, *splits: str) -> None:
        """Decode the datamodule's RGB, XYZ and mask files completely before a run; see ``verify_sample_files``.

        A damaged or missing file raises an error naming it and its split before the first batch. Files already
        verified by this module (the test split, checked when the fit starts) are not decoded again.

        Args:
            *splits (str): Dataset attributes of the datamodule (``"train_data"``, ``"test_data"``...).
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        verified: set[str] = self.__dict__.setdefault("_verified_files", set())
        for split in splits:
            samples = getattr(getattr(datamodule, split, None), "samples", None)
            columns = getattr(samples, "columns", ())
            if samples is None or "image_path" not in columns:
                continue
            todo = samples[~samples["image_path"].astype(str).isin(verified)]
            verify_sample_files(
                list(todo["image_path"]),
                list(todo["depth_path"]) if "depth_path" in columns else None,
                list(todo["mask_path"]) if "mask_path" in columns else None,
                split=split.removesuffix("_data"),
                check_pairs=self.model.modality != "rgb",
            )
            verified.update(todo["image_path"].astype(str))

    def on_fit_start(self) -> None:
        """Before the first batch: the backbone's ``pre_trained`` weights, then every file of every split."""
        self.model.load_pretrained_weights()  # no-op when a checkpoint supplied them (restored before this hook)
        self.prediction_cache.clear()
        self.__dict__["_verified_files"] = set()
        self._check_files("train_data", "val_data", "test_data")

    def on_test_start(self) -> None:
        """Check the test files before the first batch."""
        self._check_files("test_data")

    def on_predict_start(self) -> None:
        """Check the datamodule's prediction files (its test split) before the first batch."""
        self._check_files("test_data")

    def training_step(self, batch: Batch, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        """Collect the patch embeddings of a training batch.

        Args:
            batch (Batch): Training batch.
            *args: Unused.
            **kwargs: Unused.

        Returns:
            torch.Tensor: A dummy loss for Lightning.
        """
        del args, kwargs
        self.model(*self._inputs(batch))
        paths = getattr(batch, "image_path", None)
        if paths is not None:
            self.model.embedding_store.tag(paths)
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def fit(self) -> None:
        """Build the memory bank: greedy k-center coreset of the collected patch embeddings (of every DDP rank)."""
        logger.info("Applying core-set subsampling to get the embedding.")
        distributed = is_distributed()
        if distributed:
            self._drop_sampler_padding()
        seed = torch.initial_seed() % 2**62
        if distributed:
            seed = broadcast_seed(seed)
        self.model.subsample_embedding(
            self.coreset_sampling_ratio,
            progress=self._show_progress(),
            max_bank_size=self.max_bank_size,
            chunk_size=self.coreset_chunk_size,
            method=self.coreset_method,
            seed=seed,
            distributed=distributed,
        )

    def _drop_sampler_padding(self) -> None:
        """Forget the training samples Lightning's ``DistributedSampler`` repeated to even out the ranks."""
        store = self.model.embedding_store
        if len(store.keys) != store.samples:
            msg = (
                "BTM's distributed fit orders samples by their `image_path`; the training batches carry none. "
                "Use an anomalib datamodule (MVTec3D, Folder3D...) or train on one device."
            )
            raise ValueError(msg)
        sampler = getattr(getattr(self.trainer, "train_dataloader", None), "sampler", None)
        if not isinstance(sampler, DistributedSampler):
            msg = (
                "BTM's distributed fit needs Lightning's DistributedSampler on the training set "
                f"(Trainer(use_distributed_sampler=True), the default); the train dataloader's sampler is "
                f"{type(sampler).__name__}."
            )
            raise ValueError(msg)
        if sampler.drop_last:
            return
        store.drop_last(padded_tail(len(sampler.dataset), sampler.num_replicas, sampler.rank, store.samples))

    def setup(self, stage: str) -> None:
        """Refuse distributed launches that cannot build one bank (BTM supports Lightning's ``ddp``).

        Args:
            stage (str): ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        super().setup(stage)
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return
        if not isinstance(trainer.strategy, DDPStrategy):
            msg = (
                f"BTM runs on several processes with Lightning's DDP strategy only (--trainer.strategy ddp); "
                f"got {type(trainer.strategy).__name__}."
            )
            raise ValueError(msg)
        if stage == "fit":
            launcher = getattr(trainer.strategy, "launcher", None)
            if launcher is not None and type(launcher).__name__ == "_MultiProcessingLauncher":
                msg = (
                    f"BTM cannot fit with strategy {type(trainer.strategy).__name__} started by multiprocessing "
                    "(ddp_spawn / ddp_fork / ddp_notebook): the memory bank built in the worker processes is not "
                    "returned. Use --trainer.strategy ddp from a script or the anomalib CLI, or one device (devices=1)."
                )
                raise ValueError(msg)
            if self.coreset_method != "pruned":
                msg = (
                    f"coreset_method={self.coreset_method!r} runs on one process; a distributed fit "
                    f"({trainer.world_size} processes) needs coreset_method='pruned' (the default)."
                )
                raise ValueError(msg)
            if self.coreset_chunk_size is not None:
                msg = "coreset_chunk_size cannot be combined with a distributed fit; drop it or train on one device."
                raise ValueError(msg)
            skip_ddp_wrapper(trainer.strategy)
        if trainer.datamodule is not None and "_restore_datamodule" not in self.__dict__:
            self.__dict__["_restore_datamodule"] = unpadded_eval_dataloaders(
                trainer.datamodule, trainer.world_size, trainer.global_rank
            )

    def teardown(self, stage: str) -> None:
        """Give the datamodule its own dataloader methods back (see :meth:`setup`).

        Args:
            stage (str): ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        super().teardown(stage)
        restore = self.__dict__.pop("_restore_datamodule", None)
        if restore is not None:
            restore()

    def on_train_start(self) -> None:
        """Size the feature store for this process's share of the training set, so that it is allocated once."""
        dataloader = getattr(self.trainer, "train_dataloader", None)
        sampler = getattr(dataloader, "sampler", None)
        if sampler is not None and hasattr(sampler, "__len__"):
            self.model.embedding_store.expect(len(sampler))

    def _show_progress(self) -> bool:
        trainer = getattr(self, "_trainer", None)
        return bool(trainer is not None and getattr(trainer, "progress_bar_callback", None) is not None)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:  # noqa: ANN002, ANN003
        """Score a batch: ``pred_score`` and ``anomaly_map``.

        Args:
            batch (Batch): Input batch.
            *args: Unused.
            **kwargs: Unused.

        Returns:
            STEP_OUTPUT: The batch with predictions.
        """
        del args, kwargs
        predictions = self._predict(*self._inputs(batch))
        return batch.update(**predictions._asdict())

    def _predict(self, image: torch.Tensor, xyz: torch.Tensor | None) -> InferenceBatch:
        """The model's raw predictions, reused for samples already scored in this state (see ``cache_predictions``)."""
        if not self.cache_predictions or image.device.type != "cpu" or (xyz is not None and xyz.device.type != "cpu"):
            return self.model(image, xyz)
        token = model_token(self.model)
        keys = sample_keys(image, xyz)
        cached = self.prediction_cache.lookup(token, keys)
        if cached is not None:
            return cached
        predictions = self.model(image, xyz)
        self.prediction_cache.store(token, keys, predictions)
        return predictions

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:  # noqa: ANN002, ANN003
        """Score a test batch (see :meth:`validation_step`).

        Args:
            batch (Batch): Input batch.
            *args: Unused.
            **kwargs: Unused.

        Returns:
            STEP_OUTPUT: The batch with predictions.
        """
        return self.validation_step(batch, *args, **kwargs)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:  # noqa: ANN002, ANN003
        """Score a predict batch (see :meth:`validation_step`).

        Args:
            batch (Batch): Input batch.
            *args: Unused.
            **kwargs: Unused.

        Returns:
            STEP_OUTPUT: The batch with predictions.
        """
        return self.validation_step(batch, *args, **kwargs)

    def on_test_end(self) -> None:
        """Log the accumulated per-phase timings."""
        logger.info("BTM timings:\n%s", self.model.timer.summary())
        if self.prediction_cache.hits:
            logger.info(
                "BTM reused the raw predictions of %d sample(s) scored earlier with the same memory bank and inputs "
                "(cache_predictions=True).",
                self.prediction_cache.hits,
            )

    def forward(self, batch: torch.Tensor, xyz: torch.Tensor | None = None, *args, **kwargs) -> InferenceBatch:  # noqa: ANN002, ANN003
        """Whole inference pipeline on raw inputs: pre-processor, model, post-processor (what an export computes).

        Args:
            batch (torch.Tensor): ``(N, 3, H, W)`` RGB images in ``[0, 1]``.
            xyz (torch.Tensor | None): ``(N, 3, Hx, Wx)`` organized clouds in metres (RGB + 3D and 3D-only models).
            *args: Unused.
            **kwargs: Unused.

        Returns:
            InferenceBatch: ``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``.
        """
        del args, kwargs
        image = self.pre_processor(batch) if self.pre_processor else batch
        predictions = self.model(image, xyz)
        return self.post_processor(predictions) if self.post_processor else predictions

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Export the whole pipeline to ONNX; RGB + 3D models get two inputs, ``image`` and ``fpfh``.

        See :mod:`anomalib_btm.models.btm.export`: by default the FPFH patch features are an input that
        ``BTMInferencer`` computes with the model's own FPFH (``fpfh="graph"`` in ``kwargs``: inputs ``image`` and
        ``xyz``, window FPFH in the graph). The batch axis is dynamic; so are the image's height and width unless
        ``input_size`` fixes them. An RGB-only model exports anomalib's single input ``input``.

        Args:
            export_root (Path | str): Output folder (the file goes to ``export_root/weights/onnx``).
            model_file_name (str): File name without suffix.
            input_size (tuple[int, int] | None): Fixed image ``(H, W)``, or ``None`` for dynamic.
            **kwargs: Passed to ``torch.onnx.export`` (``opset_version``...). ``dynamo=False`` is rejected as in
                anomalib.

        Returns:
            Path: The ``.onnx`` file.
        """
        return export_onnx(
            self.model,
            export_root,
            model_file_name,
            input_size,
            pre_processor=self.pre_processor,
            post_processor=self.post_processor,
            **kwargs,
        )

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | None = None,
        task: TaskType | None = None,
        max_drop: float = 0.01,
        ov_kwargs: dict[str, Any] | None = None,
        onnx_kwargs: dict[str, Any] | None = None,
    ) -> Path:
        """Export to OpenVINO IR (see :meth:`to_onnx`), with anomalib's compression options.

        ``int8_ptq`` calibrates with both inputs of an RGB + 3D model (images and FPFH maps, or clouds for
        ``fpfh="graph"``, of the datamodule's validation split); ``int8_acq`` is available for RGB-only models and
        refused with a clear message otherwise.

        Args:
            export_root (Path | str): Output folder (the IR goes to ``export_root/weights/openvino``).
            model_file_name (str): File name without suffix.
            input_size (tuple[int, int] | None): Fixed image ``(H, W)``, or ``None`` for dynamic.
            compression_type (CompressionType | None): ``fp16``, ``int8``, ``int8_ptq`` or ``int8_acq``.
            datamodule (AnomalibDataModule | None): Calibration data for ``int8_ptq`` / ``int8_acq``.
            metric (Metric | None): Metric of ``int8_acq``.
            task (TaskType | None): Task of ``int8_acq``.
            max_drop (float): Accepted accuracy drop of ``int8_acq``.
            ov_kwargs (dict[str, Any] | None): Passed to ``openvino.convert_model``.
            onnx_kwargs (dict[str, Any] | None): Passed to :meth:`to_onnx`.

        Returns:
            Path: The ``.xml`` file.
        """
        check_compression(self.model.resolved_modality, compression_type, datamodule)
        return super().to_openvino(
            export_root,
            model_file_name,
            input_size,
            compression_type,
            datamodule,
            metric,
            task,
            max_drop,
            ov_kwargs,
            onnx_kwargs,
        )

    def _post_training_quantization_ov(
        self,
        model: CompiledModel,
        datamodule: AnomalibDataModule | None = None,
    ) -> CompiledModel:
        """INT8 post-training quantization calibrated with every input of the graph (``image`` and ``fpfh``/``xyz``).

        Args:
            model (CompiledModel): OpenVINO model.
            datamodule (AnomalibDataModule | None): Calibration data (its validation split).

        Returns:
            CompiledModel: The quantized model.
        """
        return quantize_ptq(model, datamodule, self.model.resolved_modality or "rgb")

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One epoch, no gradient clipping, no sanity validation (it would fit an empty bank).

        The devices are Lightning's to choose (``--trainer.devices``, ``--trainer.strategy ddp``,
        ``--trainer.num_nodes``): several processes give the bank and metrics of one (see :mod:`.distributed`).

        Returns:
            dict[str, Any]: Trainer arguments.
        """
        return {"gradient_clip_val": 0, "max_epochs": 1, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """BTM learns from normal samples only.

        Returns:
            LearningType: ``LearningType.ONE_CLASS``.
        """
        return LearningType.ONE_CLASS
