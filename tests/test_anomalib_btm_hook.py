# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""The import hook: anomalib finds BTM by name in fresh processes (CLI, get_model), at no cost elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anomalib_btm import BTM

REPO = Path(__file__).resolve().parents[1]
ANOMALIB = shutil.which("anomalib", path=str(Path(sys.executable).parent)) or "anomalib"


def _run(args: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    env.pop("ANOMALIB_BTM_NO_HOOK", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _metric(stdout: str, name: str) -> float:
    """A value of anomalib's printed test-metric table."""
    match = re.search(rf"│\s*{name}\s*│\s*([0-9.]+)\s*│", stdout)
    assert match, f"{name} not in the CLI output:\n{stdout[-3000:]}"
    return float(match.group(1))


def test_get_model_finds_btm_in_a_fresh_interpreter() -> None:
    code = (
        "from anomalib.models import get_model\n"
        "m = get_model('BTM', pre_trained=False, modality='xyz')\n"
        "n = get_model({'class_path': 'BTM', 'init_args': {'pre_trained': False, 'modality': 'xyz', 'k_pixel': 4}})\n"
        "print(type(m).__module__, type(n).__name__, n.model.scorer.k_pixel)\n"
    )
    out = _run([sys.executable, "-c", code]).stdout
    assert "anomalib_btm.models.btm.lightning_model BTM 4" in out


def test_hook_costs_nothing_to_programs_without_anomalib() -> None:
    code = "import sys, json; print(json.dumps(sorted(m for m in sys.modules if 'anomalib' in m or m == 'torch')))"
    out = _run([sys.executable, "-c", code]).stdout.strip()
    assert out == '["_anomalib_btm_hook"]'


def test_configs_build_the_model() -> None:
    from anomalib.models import get_model

    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        config["model"]["init_args"]["pre_trained"] = False
        model = get_model(config["model"])
        assert isinstance(model, BTM), path
        assert model.model.preset == config["model"]["init_args"].get("preset", "btm")
        assert config["data"]["class_path"] == "anomalib.data.MVTec3D"


@pytest.mark.slow
def test_anomalib_cli_train_test_predict(geometric_root: Path, tmp_path: Path) -> None:
    common = ["--data.root", str(geometric_root), "--data.category", "geo", "--data.num_workers", "0"]
    train = _run(
        [
            ANOMALIB,
            "train",
            "--model",
            "BTM",
            "--model.pre_trained",
            "false",
            "--model.modality",
            "xyz",
            "--data",
            "anomalib.data.MVTec3D",
            *common,
            "--default_root_dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
    )
    # The 3D-only model on geometric defects, through the stock CLI.
    assert _metric(train.stdout, "image_AUROC") >= 0.9
    assert _metric(train.stdout, "pixel_AUPRO") >= 0.8
    checkpoint = tmp_path / "BTM" / "MVTec3D" / "geo" / "latest" / "weights" / "lightning" / "model.ckpt"
    assert checkpoint.is_file()

    test = _run(
        [
            ANOMALIB,
            "test",
            "--config",
            str(REPO / "configs" / "btm_xyz.yaml"),
            "--model",
            "anomalib_btm.BTM",
            "--model.pre_trained",
            "false",
            "--ckpt_path",
            str(checkpoint),
            *common,
            "--default_root_dir",
            str(tmp_path / "test"),
        ],
        cwd=tmp_path,
    )
    assert _metric(test.stdout, "image_AUROC") == _metric(train.stdout, "image_AUROC")
    assert _metric(test.stdout, "pixel_AUPRO") == pytest.approx(_metric(train.stdout, "pixel_AUPRO"), abs=1e-6)

    predict_dir = tmp_path / "predict"
    _run(
        [
            ANOMALIB,
            "predict",
            "--model",
            "BTM",
            "--model.pre_trained",
            "false",
            "--model.modality",
            "xyz",
            "--ckpt_path",
            str(checkpoint),
            "--data",
            "anomalib.data.MVTec3D",
            *common,
            "--default_root_dir",
            str(predict_dir),
        ],
        cwd=tmp_path,
    )
    assert list(predict_dir.rglob("*.png")), "anomalib predict wrote no anomaly-map images"
