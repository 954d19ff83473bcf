# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""k sweep from one kNN query: every entry equals a separate evaluation with that k; metrics on raw scores; CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import MVTec3D
from anomalib.metrics import AUPRO, AUROC

from anomalib_btm import BTM
from anomalib_btm.analysis.sweep import KSweep, fit_btm, image_auroc, main, pixel_auroc_aupro, plot_sweep, sweep_k
from anomalib_btm.data import generate_category
from anomalib_btm.models.btm.scoring import DualKScorer

CATEGORY = "tiny"
IMAGE_SIZE = 128
K_MAX = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 training clouds; 3 good, 2 dented and 2 stained (RGB-only defect, invisible to FPFH) test samples."""
    root = tmp_path_factory.mktemp("sweep_data")
    generate_category(
        root,
        CATEGORY,
        n_train=4,
        n_validation=0,
        n_test_good=3,
        n_test_per_defect=2,
        image_size=IMAGE_SIZE,
        defects=("dent", "color"),
        seed=2,
    )
    return root


def _model() -> BTM:
    return BTM(
        pre_trained=False,
        modality="xyz",
        fpfh_backend="open3d",
        pre_processor=BTM.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)),
        visualizer=False,
    )


@pytest.fixture(scope="module")
def fitted(tiny_root: Path) -> tuple[BTM, MVTec3D, KSweep]:
    torch.manual_seed(0)
    datamodule = MVTec3D(
        root=tiny_root,
        category=CATEGORY,
        num_workers=0,
        train_batch_size=4,
        eval_batch_size=3,  # several test batches, one of them short
        val_split_mode="none",
    )
    datamodule.setup()
    model = fit_btm(_model(), datamodule.train_dataloader())
    return model, datamodule, sweep_k(model, datamodule.test_dataloader(), K_MAX)


@pytest.fixture(scope="module")
def scored_batches(fitted: tuple[BTM, MVTec3D, KSweep]) -> list[tuple]:
    """Per test batch: patch embedding (BTMModel.extract, computed once here), image size, labels, masks."""
    model, datamodule, _ = fitted
    batches = []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            image, mask = model.pre_processor.transform(batch.image, batch.gt_mask)
            batches.append((model.model.extract(image, batch.depth_map), image.shape[-2:], batch.gt_label, mask))
    return batches


def _separate_evaluation(model: BTM, batches: list, scorer: DualKScorer) -> dict[str, float]:
    """Score the test embeddings with ``scorer`` as BTMModel.forward does, then compute the metrics from scratch."""
    module = model.model
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for embedding, image_size, label, mask in batches:
            result = scorer(embedding, module.memory_bank)
            maps.append(module.anomaly_map_generator(result.patch_scores, image_size))
            scores.append(result.pred_score)
            labels.append(label)
            masks.append(mask)
    pixel_auroc, pixel_aupro = pixel_auroc_aupro(maps, masks)
    return {
        "image_auroc": image_auroc(torch.cat(scores), torch.cat(labels)),
        "pixel_auroc": pixel_auroc,
        "pixel_aupro": pixel_aupro,
    }


def test_sweep_shape(fitted: tuple[BTM, MVTec3D, KSweep]) -> None:
    _, _, result = fitted
    assert result.ks == [1, 2, 3, 4]
    assert result.n_images == 7
    assert result.n_anomalous == 4
    assert result.pixel_metric == "squared_mean"
    for name in ("image_auroc_nearest", "image_auroc_reweighted", "pixel_auroc", "pixel_aupro"):
        values = getattr(result, name)
        assert len(values) == K_MAX
        assert all(0.0 <= v <= 1.0 for v in values)
    # k = 1: the reweighting neighbourhood is m* alone, every image scores the same.
    assert result.image_auroc_reweighted[0] == 0.5


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_and_pixel_entries_equal_a_separate_evaluation(fitted: tuple, scored_batches: list, k: int) -> None:
    model, _, result = fitted
    separate = _separate_evaluation(model, scored_batches, DualKScorer(k_image=k, k_pixel=k))
    row = result.row(k)
    assert row["image_auroc_nearest"] == pytest.approx(separate["image_auroc"], abs=1e-6)
    assert row["pixel_auroc"] == pytest.approx(separate["pixel_auroc"], abs=1e-6)
    assert row["pixel_aupro"] == pytest.approx(separate["pixel_aupro"], abs=1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_reweighted_entries_equal_a_separate_evaluation(fitted: tuple, scored_batches: list, k: int) -> None:
    model, _, result = fitted
    scorer = DualKScorer(k_image=1, k_pixel=1, image_score="reweighted", n_reweight=k)
    separate = _separate_evaluation(model, scored_batches, scorer)
    assert result.row(k)["image_auroc_reweighted"] == pytest.approx(separate["image_auroc"], abs=1e-6)


def test_entry_equals_the_models_own_forward(fitted: tuple[BTM, MVTec3D, KSweep]) -> None:
    """The model as configured (k_image 1, k_pixel 3) scored through BTMModel.forward, as test_step does."""
    model, datamodule, result = fitted
    scores, labels, maps, masks = [], [], [], []
    model.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            image, mask = model.pre_processor.transform(batch.image, batch.gt_mask)
            output = model.model(image, batch.depth_map)
            scores.append(output.pred_score)
            maps.append(output.anomaly_map)
            labels.append(batch.gt_label)
            masks.append(mask)
    pixel_auroc, pixel_aupro = pixel_auroc_aupro(maps, masks)
    assert result.row(1)["image_auroc_nearest"] == pytest.approx(image_auroc(torch.cat(scores), torch.cat(labels)))
    assert result.row(3)["pixel_auroc"] == pytest.approx(pixel_auroc, abs=1e-6)
    assert result.row(3)["pixel_aupro"] == pytest.approx(pixel_aupro, abs=1e-6)


def test_metrics_use_raw_scores_without_sigmoid_saturation() -> None:
    torch.manual_seed(0)
    labels = torch.rand(300) < 0.3
    scores = 500.0 + torch.randn(300) + 0.8 * labels  # raw distances: far outside [0, 1]
    pos, neg = scores[labels].double(), scores[~labels].double()
    mann_whitney = float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())
    assert image_auroc(scores, labels) == pytest.approx(mann_whitney, abs=1e-6)
    # anomalib's AUROC on the raw scores saturates its sigmoid: every score becomes 1.0.
    saturated = AUROC(fields=("pred_score", "gt_label"))
    saturated.update(SimpleNamespace(pred_score=scores, gt_label=labels))
    assert float(saturated.compute()) == 0.5
    assert mann_whitney > 0.6

    # Pixel metrics equal anomalib's AUROC / AUPRO where scores already lie in [0, 1].
    maps = [torch.rand(2, 1, 16, 16), torch.rand(1, 1, 16, 16)]
    masks = [torch.zeros(2, 16, 16, dtype=torch.bool), torch.zeros(1, 16, 16, dtype=torch.bool)]
    masks[0][0, 2:6, 2:6] = True
    masks[1][0, 8:12, 4:9] = True
    maps[0][0, 0, 2:6, 2:6] += 0.3
    maps = [m.clamp(max=1.0) for m in maps]
    auroc, aupro = AUROC(fields=("m", "g")), AUPRO(fields=("m", "g"), fpr_limit=0.3)
    for anomaly_map, mask in zip(maps, masks, strict=True):
        auroc.update(SimpleNamespace(m=anomaly_map.squeeze(1), g=mask))
        aupro.update(SimpleNamespace(m=anomaly_map.squeeze(1), g=mask))
    ours = pixel_auroc_aupro(maps, masks)
    assert ours[0] == pytest.approx(float(auroc.compute()), abs=1e-6)
    assert ours[1] == pytest.approx(float(aupro.compute()), abs=1e-6)
    # Scaling maps by 1000 changes nothing.
    scaled = pixel_auroc_aupro([1000 * m for m in maps], masks)
    assert scaled == pytest.approx(ours, abs=1e-6)


def test_table_and_plot(fitted: tuple[BTM, MVTec3D, KSweep], tmp_path: Path) -> None:
    _, _, result = fitted
    table = result.to_markdown().splitlines()
    assert table[0] == "| k | I-AUROC nearest | I-AUROC reweighted | P-AUROC | AUPRO@0.3 |"
    assert len(table) == 2 + K_MAX
    assert table[2].startswith("| 1 | ")
    assert "**" in table[2] or "**" in "\n".join(table[3:])
    path = plot_sweep(result, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads(json.dumps(result.to_dict()))["ks"] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="was not swept"):
        result.row(K_MAX + 1)


def test_bad_arguments(fitted: tuple[BTM, MVTec3D, KSweep], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, datamodule, _ = fitted
    with pytest.raises(ValueError, match=r"k_max must be an integer in \[1, "):
        sweep_k(model, datamodule.test_dataloader(), 0)
    with pytest.raises(ValueError, match="k_max"):
        sweep_k(model, datamodule.test_dataloader(), model.model.memory_bank.shape[0] + 1)
    with pytest.raises(ValueError, match="memory bank is empty"):
        sweep_k(_model(), datamodule.test_dataloader(), 2)
    assert main(["--data-root", str(tmp_path / "missing"), "--category", CATEGORY]) == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m anomalib_btm.analysis.sweep: error: --data-root")
    assert error.count("\n") == 1  # one line, no traceback


@pytest.mark.slow
def test_command_line(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    argv = ["--data-root", str(tiny_root), "--category", CATEGORY, "--k-max", "3", "--modality", "xyz"]
    argv += ["--pre-trained", "false", "--image-size", str(IMAGE_SIZE), "--output", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| k | I-AUROC nearest | I-AUROC reweighted | P-AUROC | AUPRO@0.3 |" in printed
    assert (out / f"k_sweep_{CATEGORY}.png").read_bytes()[:8] == PNG_SIGNATURE
    saved = json.loads((out / f"k_sweep_{CATEGORY}.json").read_text())
    assert saved["ks"] == [1, 2, 3]
    lines = (out / f"k_sweep_{CATEGORY}.md").read_text().splitlines()
    assert [line[:4] for line in lines if line[:3] in {"| 1", "| 2", "| 3"}] == ["| 1 ", "| 2 ", "| 3 "]
