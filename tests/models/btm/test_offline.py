# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Offline (``HF_HUB_OFFLINE=1``, empty Hugging Face cache), through the stock CLIs where a user meets it.

* A checkpoint exports and tests with no download and no extra flag; the IR scores as the one exported with the old
  ``--model.pre_trained false`` workaround.
* A fit whose ImageNet weights cannot be obtained stops before any work with one line (exit status 2) that names
  ``pre_trained`` and the two offline fixes, in ``anomalib train`` and ``python -m anomalib_btm.analysis.sweep``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from anomalib_btm import BTM
from anomalib_btm.analysis.sweep import fit_btm
from anomalib_btm.deploy import BTMInferencer
from anomalib_btm.models.btm.torch_model import BTMModel
from anomalib_btm.weights import EFFICIENTNET_LITE0_BACKBONE, EFFICIENTNET_LITE0_LAYERS, PretrainedWeightsError

ANOMALIB = str(Path(sys.executable).parent / "anomalib")
FIXES = ("--model.pre_trained PATH", "python -m anomalib_btm.weights efficientnet-lite0")


def _offline(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without internet: offline hub, empty cache."""
    cache = tmp_path / "hf_home"
    cache.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "TORCH_HOME": str(cache / "torch")}
    return env | {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=_offline(cwd), capture_output=True, text=True, timeout=600, check=False)


def _one_line_error(stderr: str, prog: str) -> str:
    """The single ``PROG: error: ...`` line of ``stderr``; fails on a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "╭" not in stderr, stderr[-3000:]  # rich's traceback frame
    errors = [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_export_from_a_checkpoint_needs_no_download(exported_rgbxyz: dict) -> None:
    """The fixture trains, marks the checkpoint ``pre_trained=True`` (as online) and runs ``anomalib export --model BTM
    --export_type openvino --ckpt_path ...`` offline with an empty cache and no flag; ``test_export`` checks that
    this IR reproduces the PyTorch model restored from the same checkpoint."""
    checkpoint = torch.load(exported_rgbxyz["checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["pre_trained"] is True
    rgb = sorted((exported_rgbxyz["root"] / "small" / "test" / "dent" / "rgb").glob("*.png"))[0]
    result = BTMInferencer(exported_rgbxyz["xml"]).predict(rgb, rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff")
    assert np.isfinite(np.asarray(result.pred_score)).all()


@pytest.mark.slow
def test_test_from_a_checkpoint_needs_no_download_and_ply_keeps_colours(exported_rgbxyz: dict, tmp_path: Path) -> None:
    from tests.test_visualize import _read_ply_colours

    root = exported_rgbxyz["root"]
    command = [ANOMALIB, "test", "--model", "BTM", "--model.backbone", "resnet18", "--model.modality", "rgb+xyz"]
    command += ["--ckpt_path", str(exported_rgbxyz["checkpoint"]), "--data", "anomalib.data.MVTec3D"]
    command += ["--data.root", str(root), "--data.category", "small", "--data.num_workers", "0"]
    command += ["--model.visualizer", "anomalib_btm.visualize.BTMVisualizer", "--model.visualizer.save_ply", "true"]
    result = _run([*command, "--default_root_dir", str(tmp_path / "results")], tmp_path)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "image_AUROC" in result.stdout
    # The 3D heat map's RGB copy shows the image file's colours, at the anomaly map's size: 96 × 96, the working size
    # restored with the checkpoint's pre-processor.
    size = (96, 96)
    ply = sorted(path for path in tmp_path.rglob("*_rgb.ply") if "color" in path.parts)[0]
    rgb = root / "small" / "test" / "color" / "rgb" / f"{ply.stem.removesuffix('_rgb')}.png"
    xyz = rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff"
    cloud = torch.from_numpy(tifffile.imread(xyz)).permute(2, 0, 1)[None]
    cloud = torch.nn.functional.interpolate(cloud, size=size, mode="nearest")[0].permute(1, 2, 0).reshape(-1, 3)
    with Image.open(rgb) as picture:
        expected = np.asarray(picture.convert("RGB").resize(size, Image.Resampling.BILINEAR)).reshape(-1, 3)
    valid = (cloud != 0).all(dim=-1).numpy()
    assert np.abs(_read_ply_colours(ply).astype(int) - expected[valid].astype(int)).max() <= 1


def test_train_offline_stops_with_one_line(small_root: Path, tmp_path: Path) -> None:
    command = [ANOMALIB, "train", "--model", "BTM", "--model.backbone", "resnet18", "--data", "anomalib.data.MVTec3D"]
    command += ["--data.root", str(small_root), "--data.category", "small", "--data.num_workers", "0"]
    result = _run([*command, "--default_root_dir", str(tmp_path / "results")], tmp_path)
    assert result.returncode == 2, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    line = _one_line_error(result.stderr, "anomalib")
    assert "pre_trained=True" in line
    assert "'resnet18'" in line
    assert all(fix in line for fix in FIXES)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_sweep_offline_stops_with_one_line(small_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "anomalib_btm.analysis.sweep", "--data-root", str(small_root), "--category"]
    command += ["small", "--backbone", "resnet18", "--modality", "rgb", "--output", str(tmp_path / "out")]
    result = _run(command, tmp_path)
    assert result.returncode == 2, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    line = _one_line_error(result.stderr, "python -m anomalib_btm.analysis.sweep")
    assert "pre_trained=True" in line
    assert all(fix in line for fix in FIXES)
    assert not (tmp_path / "out").exists()


def test_building_never_loads_weights_and_a_checkpoint_supplies_them(tmp_path: Path) -> None:
    missing = str(tmp_path / "not_here.pth")
    model = BTM(backbone="resnet18", pre_trained=missing, modality="rgb")  # nothing read or downloaded yet
    assert model.model.rgb_branch.weights_pending
    with pytest.raises(PretrainedWeightsError, match=r"pre_trained=.*not_here\.pth.*no such weights file") as info:
        model.model.load_pretrained_weights()
    assert isinstance(info.value, FileNotFoundError)
    assert all(fix in str(info.value) for fix in FIXES)
    # A state_dict that holds the backbone (what a checkpoint restores) supplies the weights: nothing left to load.
    trained = BTMModel(backbone="resnet18", pre_trained=False, modality="rgb")
    model.model.load_state_dict(trained.state_dict())
    assert not model.model.rgb_branch.weights_pending
    assert model.model.load_pretrained_weights() is False


def test_a_fit_loads_the_weights_it_asked_for(lite0_weights: Path) -> None:
    """Deferred weights are in the backbone once a fit starts, also for code that drives the torch model itself."""
    model = BTM(
        backbone=EFFICIENTNET_LITE0_BACKBONE,
        layers=EFFICIENTNET_LITE0_LAYERS,
        pre_trained=str(lite0_weights),
        modality="rgb",
        pre_processor=BTM.configure_pre_processor((64, 64)),
        visualizer=False,
    )
    key = "blocks.2.0.conv_pw.weight"
    expected = torch.load(lite0_weights, weights_only=True)[key]
    loaded = model.model.rgb_branch.extractor.feature_extractor.state_dict
    assert not torch.equal(loaded()[key], expected)
    fit_btm(model, [SimpleNamespace(image=torch.rand(2, 3, 64, 64))])
    torch.testing.assert_close(loaded()[key], expected, rtol=0, atol=0)
    assert model.model.memory_bank.shape[1] == 40 + 112
