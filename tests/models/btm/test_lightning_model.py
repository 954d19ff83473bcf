# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""End to end through anomalib's Engine on generated data: 3D-only accuracy, checkpoints, RGB-only on Folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import Folder, MVTec3D
from anomalib.engine import Engine

from anomalib_btm import BTM
from anomalib_btm.visualize import BTMVisualizer

pytestmark = pytest.mark.slow


def _engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, logger=False, accelerator="cpu", enable_progress_bar=False)


@pytest.fixture(scope="module")
def trained_xyz(geometric_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BTM, MVTec3D, list, Path]:
    """A 3D-only BTM fitted and tested on the geometric-defect category."""
    torch.manual_seed(0)
    datamodule = MVTec3D(root=geometric_root, category="geo", num_workers=0, train_batch_size=5, eval_batch_size=8)
    model = BTM(pre_trained=False, modality="xyz", fpfh_backend="open3d", visualizer=BTMVisualizer(save_ply=True))
    results_dir = tmp_path_factory.mktemp("results_xyz")
    engine = _engine(results_dir)
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule)
    checkpoint = results_dir / "btm.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return model, datamodule, metrics, checkpoint


def test_visualizer_writes_2d_overlays_and_3d_heat_maps(trained_xyz: tuple) -> None:
    import open3d as o3d

    _, datamodule, _, checkpoint = trained_xyz
    results = checkpoint.parent
    overlays = sorted(results.rglob("images/**/*.png"))
    heat_maps = sorted(p for p in results.rglob("ply/**/*.ply") if not p.stem.endswith("_rgb"))
    n_test = len(datamodule.test_data)
    assert len(overlays) == n_test
    assert len(heat_maps) == n_test
    cloud = o3d.io.read_point_cloud(str(heat_maps[0]))
    assert len(cloud.points) > 1000
    assert cloud.has_colors()


def test_xyz_only_detects_and_segments_geometric_defects(trained_xyz: tuple) -> None:
    model, _, metrics, _ = trained_xyz
    assert model.model.resolved_modality == "xyz"
    assert model.model.memory_bank.shape[1] == 33
    # 10 training clouds × 784 patches, 10 % coreset.
    assert model.model.memory_bank.shape[0] == int(10 * 784 * 0.1)
    result = metrics[0]
    assert set(result) >= {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO"}
    assert result["image_AUROC"] >= 0.9
    assert result["pixel_AUPRO"] >= 0.8


def test_checkpoint_round_trip_gives_identical_scores(trained_xyz: tuple) -> None:
    model, datamodule, _, checkpoint = trained_xyz
    batch = next(iter(datamodule.test_dataloader()))
    image = model.pre_processor.transform(batch.image)
    model.eval()
    with torch.no_grad():
        before = model.model(image, batch.depth_map)
    loaded = BTM.load_from_checkpoint(checkpoint, map_location="cpu")
    loaded.eval()
    assert loaded.model.resolved_modality == "xyz"
    torch.testing.assert_close(loaded.model.memory_bank, model.model.memory_bank, rtol=0, atol=0)
    with torch.no_grad():
        after = loaded.model(image, batch.depth_map)
    torch.testing.assert_close(after.pred_score, before.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map, rtol=0, atol=0)


def test_rgb_only_on_an_image_folder(mixed_root: Path, lite0_weights: Path, tmp_path: Path) -> None:
    category = mixed_root / "mixed"
    datamodule = Folder(
        name="mixed_rgb",
        root=category,
        normal_dir="train/good/rgb",
        abnormal_dir="test/color/rgb",
        normal_test_dir="test/good/rgb",
        mask_dir="test/color/gt",
        num_workers=0,
        train_batch_size=6,
        eval_batch_size=8,
    )
    model = BTM(backbone="tf_efficientnet_lite0", layers=("blocks.2", "blocks.4"), pre_trained=str(lite0_weights))
    engine = _engine(tmp_path)
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert model.model.resolved_modality == "rgb"
    assert model.model.memory_bank.shape[1] == 40 + 112
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    assert metrics["pixel_AUROC"] > 0.5


def test_depth_model_refuses_image_only_batches(trained_xyz: tuple) -> None:
    model, _, _, _ = trained_xyz
    model.eval()
    with pytest.raises(ValueError, match=r"carries no point cloud \(depth_map\)"):
        model.model(torch.randn(1, 3, 224, 224), None)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="coreset_sampling_ratio"):
        BTM(pre_trained=False, modality="xyz", coreset_sampling_ratio=0.0)
    with pytest.raises(ValueError, match="modality"):
        BTM(pre_trained=False, modality="depth")
    with pytest.raises(ValueError, match=r"feature_upsampling must be one of .*got 'bicubic'"):
        BTM(backbone="resnet18", pre_trained=False, modality="rgb", feature_upsampling="bicubic")


def test_patchcore_drop_in_config_sets_bilinear_upsampling() -> None:
    import yaml
    from anomalib.models import get_model

    configs = Path(__file__).resolve().parents[3] / "configs"
    for name, expected in (("btm_rgb_patchcore.yaml", "bilinear"), ("btm_rgb.yaml", "adaptive_avg_pool")):
        config = yaml.safe_load((configs / name).read_text())["model"]
        config["init_args"] |= {"pre_trained": False, "backbone": "resnet18"}
        model = get_model(config)
        assert model.hparams["feature_upsampling"] == expected
        assert model.model.rgb_branch.feature_upsampling == expected
