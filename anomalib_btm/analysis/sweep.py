# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Sweep the number of neighbours k of a fitted BTM from one kNN query per test batch (paper §3.5–3.7, Figs. 8–10).

For every test batch the patch embedding is extracted once (:meth:`BTMModel.extract`) and one
:func:`~anomalib_btm.models.btm.scoring.knn` query with ``k_max`` neighbours is run against the memory bank. For
each ``k = 1..k_max`` the following are derived from it, exactly as a model scoring with that ``k`` computes them:

* **I-AUROC, nearest**: image score ``max over patches of the mean distance to the k nearest bank features``
  (``DualKScorer(k_image=k)``; BTM's score is ``k = 1``).
* **I-AUROC, reweighted** (Fig. 8): BTF's / PatchCore's reweighted score with the reweighting neighbourhood
  ``N_k(m*)`` of size ``k`` — ``DualKScorer(image_score="reweighted", n_reweight=k)``, computed by
  :meth:`DualKScorer.reweighted_score`: ``m*`` counts in ``N_k(m*)`` and is left out of the sum (BTF's code), the
  distances are scaled by ``√D``. At ``k = 1`` the neighbourhood is ``m*`` alone: BTF's code divides by an empty
  sum and the paper's eq. 10 (``m*`` in the sum) gives ``w = 0``; either way every image gets the same score, so
  the sweep scores every image 0 (the paper's ``w = 0``) and the I-AUROC is 0.5.
* **P-AUROC** and **AUPRO@0.3** (Figs. 9–10): pixel map from the per-patch mean of the ``k`` nearest squared
  distances (the model's ``pixel_metric``, BTM: ``"squared_mean"``), upsampled and blurred by the model's
  ``anomaly_map_generator``.

Metrics are anomalib's (``AUROC``, ``AUPRO(fpr_limit=0.3)``, as in ``BTM.configure_evaluator``) on the **raw**
scores. torchmetrics' ROC applies a sigmoid to scores outside ``[0, 1]``, which saturates raw distances (every
score above about 17 becomes 1.0 and the AUROC collapses to 0.5); the scores are therefore min–max rescaled in
float64 over the whole test set first, which keeps their order and ties exactly, so the AUROC is that of the raw
scores. AUPRO sorts the raw maps itself (no sigmoid) and gets them unchanged.

Command line (fits BTM on the category's train split, no validation or test run)::

    python -m anomalib_btm.analysis.sweep --data-root datasets/MVTec3D --category bagel --k-max 9 --output results
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from anomalib.data import Batch, DepthBatch, ImageBatch
from anomalib.metrics import AUPRO, AUROC
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from anomalib_btm.checks import check_choice
from anomalib_btm.cli import ArgumentParser, run, signature_defaults
from anomalib_btm.features.fpfh import FPFH_BACKENDS
from anomalib_btm.models.btm.lightning_model import BTM
from anomalib_btm.models.btm.scoring import PIXEL_METRICS, DualKScorer, knn
from anomalib_btm.models.btm.torch_model import BTMModel
from anomalib_btm.weights import CLI_ERRORS

__all__ = [
    "KSweep",
    "fit_btm",
    "image_auroc",
    "main",
    "pixel_auroc_aupro",
    "plot_sweep",
    "sweep_k",
]

logger = logging.getLogger(__name__)

Transform = Callable[..., Any]


@dataclass
class KSweep:
    """Metrics of a fitted BTM for ``k = 1..k_max``.

    Attributes:
        ks (list[int]): ``1..k_max``.
        image_auroc_nearest (list[float]): I-AUROC of the kNN distance-mean image score at each ``k``.
        image_auroc_reweighted (list[float]): I-AUROC of the reweighted image score with ``n_reweight = k``.
        pixel_auroc (list[float]): P-AUROC of the kNN map at each ``k`` (NaN without ground-truth masks).
        pixel_aupro (list[float]): AUPRO at FPR ``fpr_limit`` of the kNN map at each ``k`` (NaN without masks).
        pixel_metric (str): ``"squared_mean"`` or ``"mean"``: what the maps average over the ``k`` neighbours.
        fpr_limit (float): FPR limit of the AUPRO.
        n_images (int): Test images scored.
        n_anomalous (int): Anomalous images among them.
    """

    ks: list[int]
    image_auroc_nearest: list[float]
    image_auroc_reweighted: list[float]
    pixel_auroc: list[float]
    pixel_aupro: list[float]
    pixel_metric: str = "squared_mean"
    fpr_limit: float = 0.3
    n_images: int = 0
    n_anomalous: int = 0

    columns: ClassVar[dict[str, str]] = {
        "image_auroc_nearest": "I-AUROC nearest",
        "image_auroc_reweighted": "I-AUROC reweighted",
        "pixel_auroc": "P-AUROC",
        "pixel_aupro": "AUPRO",
    }
    """Metric attribute → column label of :meth:`to_markdown`."""

    def row(self, k: int) -> dict[str, float]:
        """The four metrics at ``k``.

        Args:
            k (int): Number of neighbours, in :attr:`ks`.

        Returns:
            dict[str, float]: ``image_auroc_nearest``, ``image_auroc_reweighted``, ``pixel_auroc``, ``pixel_aupro``.

        Raises:
            ValueError: If ``k`` was not swept.
        """
        if k not in self.ks:
            msg = f"k={k} was not swept; choose one of {self.ks}."
            raise ValueError(msg)
        index = self.ks.index(k)
        return {name: getattr(self, name)[index] for name in self.columns}

    def best_k(self, metric: str) -> int | None:
        """The ``k`` with the highest value of ``metric`` (the smallest such ``k`` on ties).

        Args:
            metric (str): One of ``image_auroc_nearest``, ``image_auroc_reweighted``, ``pixel_auroc``,
                ``pixel_aupro``.

        Returns:
            int | None: That ``k``, or ``None`` when every value is NaN.

        Raises:
            ValueError: On an unknown metric.
        """
        check_choice("metric", metric, self.columns)
        values = [(v, -k) for k, v in zip(self.ks, getattr(self, metric), strict=True) if not math.isnan(v)]
        return -max(values)[1] if values else None

    def to_markdown(self, digits: int = 4) -> str:
        """A Markdown table, one row per ``k``, the best value of each column in bold.

        Args:
            digits (int): Decimals.

        Returns:
            str: The table.
        """
        labels = dict(self.columns)
        labels["pixel_aupro"] = f"AUPRO@{self.fpr_limit:g}"
        header = "| k | " + " | ".join(labels.values()) + " |"
        lines = [header, "|" + "---:|" * (len(labels) + 1)]
        best = {name: self.best_k(name) for name in labels}
        for k in self.ks:
            cells = []
            for name, value in self.row(k).items():
                text = "—" if math.isnan(value) else f"{value:.{digits}f}"
                cells.append(f"**{text}**" if best[name] == k else text)
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The sweep as plain data (JSON-serialisable; NaN stays NaN).

        Returns:
            dict[str, Any]: All fields.
        """
        return asdict(self)


def _scaled_for_roc(scores: torch.Tensor) -> torch.Tensor:
    """Min–max rescale to ``[0, 1]`` in float64: same order and ties, no sigmoid in torchmetrics' ROC."""
    scores = scores.detach().to(torch.float64)
    low, high = scores.min(), scores.max()
    if high <= low:
        return torch.zeros_like(scores)
    return (scores - low) / (high - low)


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image AUROC of raw scores with anomalib's ``AUROC`` (the Evaluator's metric), free of sigmoid saturation.

    Args:
        scores (torch.Tensor): ``(N,)`` image scores (any range; higher is more anomalous).
        labels (torch.Tensor): ``(N,)`` bool or 0/1 labels, ``1`` anomalous.

    Returns:
        float: The AUROC.
    """
    metric = AUROC(fields=("pred_score", "gt_label"))
    metric.update(SimpleNamespace(pred_score=_scaled_for_roc(scores.flatten()), gt_label=labels.flatten().bool()))
    return float(metric.compute())


def pixel_auroc_aupro(
    maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], fpr_limit: float = 0.3
) -> tuple[float, float]:
    """Pixel AUROC and AUPRO of raw anomaly maps with anomalib's ``AUROC`` and ``AUPRO(fpr_limit)``.

    The maps are fed batch by batch, as the Evaluator does; for the AUROC they are min–max rescaled in float64 over
    all batches first (see the module docstring).

    Args:
        maps (Sequence[torch.Tensor]): Per batch, ``(B, 1, H, W)`` or ``(B, H, W)`` raw anomaly maps.
        masks (Sequence[torch.Tensor]): Per batch, ``(B, H, W)`` ground-truth masks (bool or 0/1).
        fpr_limit (float): FPR limit of the AUPRO.

    Returns:
        tuple[float, float]: ``(pixel AUROC, AUPRO)``.
    """
    low = min(float(m.min()) for m in maps)
    high = max(float(m.max()) for m in maps)
    scale = high - low if high > low else 1.0
    auroc = AUROC(fields=("anomaly_map", "gt_mask"))
    aupro = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=fpr_limit)
    for anomaly_map, mask in zip(maps, masks, strict=True):
        anomaly_map = anomaly_map.reshape(mask.shape)
        mask = mask.bool()
        scaled = (anomaly_map.to(torch.float64) - low) / scale if high > low else torch.zeros_like(anomaly_map)
        auroc.update(SimpleNamespace(anomaly_map=scaled, gt_mask=mask))
        aupro.update(SimpleNamespace(anomaly_map=anomaly_map, gt_mask=mask))
    return float(auroc.compute()), float(aupro.compute())


def _resolve(model: BTM | BTMModel, transform: Transform | None) -> tuple[BTMModel, Transform | None]:
    if isinstance(model, BTM):
        module = model.model
        if transform is None:
            transform = getattr(getattr(model, "pre_processor", None), "transform", None)
    elif isinstance(model, BTMModel):
        module = model
    else:
        msg = f"model must be a BTM or a BTMModel, got {type(model).__name__}."
        raise TypeError(msg)
    return module, transform


def _prepare(batch: Any, transform: Transform | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image and ground-truth mask as the model sees them (what ``PreProcessor.on_test_batch_start`` does)."""
    image, mask = batch.image, getattr(batch, "gt_mask", None)
    if transform is not None:
        if mask is None:
            image = transform(image)
        else:
            image, mask = transform(image, mask)
    return image, mask


def sweep_k(
    model: BTM | BTMModel,
    dataloader: Iterable[Any],
    k_max: int,
    transform: Transform | None = None,
    pixel_metric: str | None = None,
    fpr_limit: float = 0.3,
) -> KSweep:
    """I-AUROC (nearest and reweighted), P-AUROC and AUPRO of a fitted BTM for ``k = 1..k_max``, one kNN query each.

    Args:
        model (BTM | BTMModel): A fitted model (non-empty memory bank).
        dataloader (Iterable[Any]): Test batches with ``image``, ``gt_label``, optionally ``depth_map`` and
            ``gt_mask`` (anomalib ``DepthBatch`` / ``ImageBatch``), as the datamodule gives them.
        k_max (int): Largest ``k``, at least 1 and at most the memory-bank size.
        transform (Transform | None): Applied to ``(image, gt_mask)`` as the pre-processor does. ``None``: the
            pre-processor of a ``BTM``, nothing for a ``BTMModel`` (batches must then be normalised already).
        pixel_metric (str | None): ``"squared_mean"`` or ``"mean"``; ``None`` for the model's own.
        fpr_limit (float): FPR limit of the AUPRO.

    Returns:
        KSweep: The metrics per ``k``.

    Raises:
        ValueError: On a bad ``k_max`` or ``pixel_metric``, an unfitted model, an empty test set, or a test set
            without both good and anomalous images.
    """
    module, transform = _resolve(model, transform)
    bank = module.memory_bank
    if bank.numel() == 0:
        msg = "The BTM memory bank is empty: fit the model (fit_btm, Engine.fit) before sweeping k."
        raise ValueError(msg)
    if isinstance(k_max, bool) or not isinstance(k_max, int) or not 1 <= k_max <= bank.shape[0]:
        msg = f"k_max must be an integer in [1, {bank.shape[0]}] (the memory-bank size), got {k_max!r}."
        raise ValueError(msg)
    pixel_metric = pixel_metric or module.scorer.pixel_metric
    check_choice("pixel_metric", pixel_metric, PIXEL_METRICS)
    chunk_size = module.scorer.chunk_size
    ks = list(range(1, k_max + 1))
    reweighters = {k: DualKScorer(image_score="reweighted", n_reweight=k, chunk_size=chunk_size) for k in ks[1:]}

    nearest: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    reweighted: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    patch_dists: list[torch.Tensor] = []  # per batch (B, h, w, k_max): the k_max nearest (squared) distances
    sizes: list[tuple[int, int]] = []
    masks: list[torch.Tensor | None] = []
    labels: list[torch.Tensor] = []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                image, mask = _prepare(batch, transform)
                image = image.to(bank.device)
                xyz = getattr(batch, "depth_map", None)
                embedding = module.extract(image, xyz)
                batch_size, dim, height, width = embedding.shape
                patches = embedding.permute(0, 2, 3, 1).reshape(-1, dim)
                dist, idx = knn(patches, bank, k_max, chunk_size)
                dist = dist.reshape(batch_size, height * width, k_max)
                idx = idx.reshape(batch_size, height * width, k_max)
                for k in ks:
                    nearest[k].append(dist[..., :k].mean(dim=-1).amax(dim=1).cpu())
                    if k == 1:
                        reweighted[k].append(torch.zeros(batch_size))
                    else:
                        score = reweighters[k].reweighted_score(
                            patches.reshape(batch_size, height * width, dim), dist[..., 0], idx[..., 0], bank
                        )
                        reweighted[k].append(score.cpu())
                pixel = dist.pow(2) if pixel_metric == "squared_mean" else dist
                patch_dists.append(pixel.reshape(batch_size, height, width, k_max).cpu())
                sizes.append((int(image.shape[-2]), int(image.shape[-1])))
                masks.append(None if mask is None else mask.as_subclass(torch.Tensor).cpu())
                label = getattr(batch, "gt_label", None)
                if label is None:
                    msg = "Every test batch needs gt_label (good = 0, anomalous = 1) to compute the image AUROC."
                    raise ValueError(msg)
                labels.append(torch.as_tensor(label).flatten().bool().cpu())
    finally:
        module.train(was_training)

    if not labels:
        msg = "The test dataloader yielded no batch: check the datamodule's test split."
        raise ValueError(msg)
    all_labels = torch.cat(labels)
    n_anomalous = int(all_labels.sum())
    if n_anomalous in (0, len(all_labels)):
        msg = (
            f"The test set has {len(all_labels)} images of which {n_anomalous} anomalous: the AUROC needs both good "
            "and anomalous images."
        )
        raise ValueError(msg)

    result = KSweep(
        ks=ks,
        image_auroc_nearest=[image_auroc(torch.cat(nearest[k]), all_labels) for k in ks],
        image_auroc_reweighted=[image_auroc(torch.cat(reweighted[k]), all_labels) for k in ks],
        pixel_auroc=[],
        pixel_aupro=[],
        pixel_metric=pixel_metric,
        fpr_limit=fpr_limit,
        n_images=len(all_labels),
        n_anomalous=n_anomalous,
    )
    has_masks = all(mask is not None for mask in masks) and any(bool(mask.any()) for mask in masks if mask is not None)
    for k in ks:
        if not has_masks:
            result.pixel_auroc.append(math.nan)
            result.pixel_aupro.append(math.nan)
            continue
        with torch.no_grad():
            maps = [
                module.anomaly_map_generator(dists[..., :k].mean(dim=-1).to(bank.device), size).cpu()
                for dists, size in zip(patch_dists, sizes, strict=True)
            ]
        auroc, aupro = pixel_auroc_aupro(maps, [m for m in masks if m is not None], fpr_limit)
        result.pixel_auroc.append(auroc)
        result.pixel_aupro.append(aupro)
    return result


def plot_sweep(result: KSweep, path: str | Path, title: str = "BTM: metrics against k") -> Path:
    """Plot a sweep like the paper's Figures 8–10: I-AUROC (nearest and reweighted), P-AUROC and AUPRO against ``k``.

    Args:
        result (KSweep): The sweep.
        path (str | Path): PNG written (parent directories created).
        title (str): Figure title.

    Returns:
        Path: ``path``.
    """
    figure = Figure(figsize=(13.5, 4.0), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = [
        ("(a) detection", [("image_auroc_nearest", "kNN distance mean"), ("image_auroc_reweighted", "reweighted")]),
        ("(b) segmentation", [("pixel_auroc", "P-AUROC")]),
        ("(c) segmentation", [("pixel_aupro", f"AUPRO@{result.fpr_limit:g}")]),
    ]
    for axis, (panel_title, series) in zip(axes, panels, strict=True):
        for name, label in series:
            values = getattr(result, name)
            axis.plot(result.ks, values, marker="o", label=label)
            best = result.best_k(name)
            if best is not None:
                axis.scatter([best], [values[result.ks.index(best)]], s=120, facecolors="none", edgecolors="red")
        axis.set_xlabel("k")
        axis.set_ylabel("I-AUROC" if "detection" in panel_title else series[0][1])
        axis.set_xticks(result.ks)
        axis.set_title(panel_title)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    figure.suptitle(f"{title} ({result.n_images} test images, {result.n_anomalous} anomalous; red: best k)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, format="png")
    return path


def _anomalib_batches(batches: Iterable[Any]) -> Iterator[Batch]:
    """The batches as anomalib ``ImageBatch`` / ``DepthBatch`` (anomalib batches pass as they are), for Lightning.

    Args:
        batches (Iterable[Any]): Objects with ``image`` and optionally ``depth_map``, e.g. ``SimpleNamespace``.

    Yields:
        Batch: The next batch.
    """
    for batch in batches:
        depth_map = getattr(batch, "depth_map", None)
        if isinstance(batch, Batch):
            yield batch
        elif depth_map is None:
            yield ImageBatch(image=batch.image)
        else:
            yield DepthBatch(image=batch.image, depth_map=depth_map)


@contextmanager
def _pre_processing(model: BTM, transform: Transform | None) -> Iterator[None]:
    """Let the model's pre-processor apply ``transform`` (when given) for the duration of the block."""
    pre_processor = getattr(model, "pre_processor", None)
    if transform is None or pre_processor is None:
        yield
        return
    own = pre_processor.transform
    pre_processor.transform = transform
    try:
        yield
    finally:
        pre_processor.transform = own


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up notes and the warnings that do not apply to a one-epoch, optimizer-free BTM fit, muted."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric")]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in ("You defined a `validation_step`", "`LightningModule.configure_optimizers` returned"):
                warnings.filterwarnings("ignore", message=re.escape(message))
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # the frozen backbone
            yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)


def fit_btm(model: BTM, dataloader: Iterable[Any], transform: Transform | None = None) -> BTM:
    """Fit BTM's memory bank on training batches with anomalib's ``Engine.fit`` (one epoch; no validation, no files).

    The fit runs on the device the model is on; nothing is logged or written (a barebones trainer in a temporary
    directory). The memory bank is the one ``Engine.fit`` builds (the coreset sees the rows in image-path order, not in
    the loader's shuffled order); a model fitted before is not fitted again (anomalib's ``MemoryBankMixin``).

    Args:
        model (BTM): The model.
        dataloader (Iterable[Any]): Training batches (``image``, optionally ``depth_map``): a ``DataLoader`` or any
            iterable of anomalib batches or objects with those attributes.
        transform (Transform | None): Image transform; ``None`` for the model's pre-processor.

    Returns:
        BTM: ``model``, fitted and in eval mode.

    Raises:
        PretrainedWeightsError: If the backbone's ``pre_trained`` weights cannot be obtained (before any batch).
    """
    from anomalib.engine import Engine

    model.model.load_pretrained_weights()  # BTM defers them to the start of a fit; fail before Lightning starts up
    device = next((p.device for p in model.parameters()), model.model.memory_bank.device)
    hardware: dict[str, Any] = {"accelerator": "cpu", "devices": 1}
    if device.type == "cuda":
        hardware = {"accelerator": "gpu", "devices": [device.index or 0]}
    batches = dataloader if isinstance(dataloader, DataLoader) else _anomalib_batches(dataloader)
    with (
        tempfile.TemporaryDirectory(prefix="btm_fit_") as workspace,
        _pre_processing(model, transform),
        _quiet_lightning(),
    ):
        engine = Engine(default_root_dir=workspace, barebones=True, logger=False, **hardware)
        engine.fit(model=model, train_dataloaders=batches)
    model.eval()
    return model


def _pre_trained(value: str) -> bool | str:
    lowered = value.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    return value


def _build_parser() -> ArgumentParser:
    defaults = signature_defaults(BTM.__init__)
    parser = ArgumentParser(
        prog="python -m anomalib_btm.analysis.sweep",
        description="Fit BTM on a category's train split, then sweep k = 1..k_max from one kNN query per test batch.",
    )
    parser.add_argument("--data-root", type=Path, required=True, help="MVTec 3D-AD root (holds <category>/).")
    parser.add_argument("--category", required=True)
    parser.add_argument("--k-max", type=int, default=9)
    parser.add_argument("--modality", default=defaults["modality"], choices=("auto", "rgb", "xyz", "rgb+xyz"))
    parser.add_argument("--backbone", default=defaults["backbone"])
    parser.add_argument("--layers", nargs="+", default=list(defaults["layers"]))
    parser.add_argument(
        "--pre-trained",
        type=_pre_trained,
        default=defaults["pre_trained"],
        help="true (ImageNet: timm's cache or a download), false (random), or a local weights file "
        "(offline: python -m anomalib_btm.weights efficientnet-lite0 FILE).",
    )
    parser.add_argument("--fpfh-backend", default=defaults["fpfh_backend"], choices=FPFH_BACKENDS)
    parser.add_argument("--coreset-sampling-ratio", type=float, default=defaults["coreset_sampling_ratio"])
    parser.add_argument("--pixel-metric", default=defaults["pixel_metric"], choices=PIXEL_METRICS)
    parser.add_argument("--image-size", type=int, default=224, help="Working size of the pre-processor.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("results/k_sweep"), help="Directory of the PNG and table.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: fit, sweep, print the Markdown table, write ``k_sweep_<category>.{png,md,json}``.

    Args:
        argv (Sequence[str] | None): Arguments; ``None`` for ``sys.argv[1:]``.

    Returns:
        int: Exit status: 0, or 2 with a one-line ``error:`` message on stderr (a missing category, bad arguments,
        backbone weights that cannot be obtained offline).
    """
    return run(_build_parser(), argv, _run, errors=CLI_ERRORS)


def _run(args: argparse.Namespace) -> int:
    """Fit, sweep and write the outputs (the body of :func:`main`).

    Args:
        args (argparse.Namespace): Parsed arguments.

    Returns:
        int: ``0``.

    Raises:
        ValueError: On a missing category directory or bad arguments.
        PretrainedWeightsError: If the backbone's weights cannot be obtained (checked before any data is read).
    """
    category_dir = args.data_root / args.category
    if not (category_dir / "train").is_dir() or not (category_dir / "test").is_dir():
        msg = (
            f"--data-root {str(args.data_root)!r} has no category {args.category!r} with train/ and test/ "
            f"(looked in {str(category_dir)!r}). Point --data-root at the MVTec 3D-AD root, or generate data with "
            "`python -m anomalib_btm.data.synthetic <root> --category <name>`."
        )
        raise ValueError(msg)
    if args.k_max < 1:
        msg = f"--k-max must be at least 1, got {args.k_max}."
        raise ValueError(msg)
    from anomalib.data import MVTec3D

    torch.manual_seed(args.seed)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    model = BTM(
        backbone=args.backbone,
        layers=tuple(args.layers),
        pre_trained=args.pre_trained,
        modality=args.modality,
        coreset_sampling_ratio=args.coreset_sampling_ratio,
        pixel_metric=args.pixel_metric,
        fpfh_backend=args.fpfh_backend,
        pre_processor=BTM.configure_pre_processor((args.image_size, args.image_size)),
        visualizer=False,
    ).to(device)
    model.model.load_pretrained_weights()  # before any data work: offline, one clear error instead of a traceback
    datamodule = MVTec3D(
        root=args.data_root,
        category=args.category,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.num_workers,
        val_split_mode="none",
    )
    datamodule.setup()
    fit_btm(model, datamodule.train_dataloader())
    bank_size = model.model.memory_bank.shape[0]
    if args.k_max > bank_size:
        msg = f"--k-max {args.k_max} exceeds the memory bank ({bank_size} features): lower it or raise the ratio."
        raise ValueError(msg)
    result = sweep_k(model, datamodule.test_dataloader(), args.k_max)
    table = result.to_markdown()
    header = (
        f"BTM k sweep — {args.category} ({args.modality}, {args.backbone}, bank {bank_size} × "
        f"{model.model.memory_bank.shape[1]}, pixel metric {result.pixel_metric})"
    )
    print(f"{header}\n\n{table}")
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"k_sweep_{args.category}"
    plot_sweep(result, stem.with_suffix(".png"), title=f"BTM on {args.category}")
    stem.with_suffix(".md").write_text(f"{header}\n\n{table}\n")
    stem.with_suffix(".json").write_text(json.dumps({"args": vars(args), **result.to_dict()}, indent=2, default=str))
    print(f"\nWrote {stem}.png, .md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
