# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Damaged input files (half-copied TIFF, PNG, mask) are named, with their split, before the first batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from anomalib.data import MVTec3D
from anomalib.engine import Engine

from anomalib_btm import BTM
from anomalib_btm.data import generate_category, verify_sample_files

ANOMALIB = str(Path(sys.executable).parent / "anomalib")


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("damaged") / "MVTec3D"
    generate_category(
        root, "cat", n_train=3, n_validation=0, n_test_good=1, n_test_per_defect=1, defects=("dent",), image_size=64
    )
    return root


def _truncate(path: Path, keep: int) -> None:
    """What a half-copied file looks like: the header is there, the data stops."""
    path.write_bytes(path.read_bytes()[:keep])


def _damaged_copy(clean_root: Path, tmp_path: Path, relative: str, keep: int) -> tuple[Path, Path]:
    root = tmp_path / "MVTec3D"
    shutil.copytree(clean_root, root)
    damaged = root / "cat" / relative
    _truncate(damaged, keep)
    return root, damaged


@pytest.mark.parametrize(
    ("relative", "keep", "split", "what"),
    [
        ("train/good/xyz/001.tiff", 712, "train", "XYZ"),
        ("train/good/rgb/002.png", 200, "train", "RGB"),
        ("test/dent/gt/000.png", 80, "test", "Mask"),
    ],
    ids=["xyz", "rgb", "mask"],
)
def test_truncated_file_is_named_with_its_split(
    clean_root: Path, tmp_path: Path, relative: str, keep: int, split: str, what: str
) -> None:
    root, damaged = _damaged_copy(clean_root, tmp_path, relative, keep)
    category = root / "cat" / relative.split("/")[0]
    rgb = sorted(category.glob("*/rgb/*.png"))
    xyz = [path.parent.parent / "xyz" / f"{path.stem}.tiff" for path in rgb]
    masks = [path.parent.parent / "gt" / path.name if split == "test" else "" for path in rgb]
    with pytest.raises(ValueError, match=rf"{what} file .*{damaged.name} \({split} split\) cannot be decoded") as info:
        verify_sample_files(rgb, xyz, masks, split=split)
    assert str(damaged) in str(info.value)
    assert "damaged or incomplete" in str(info.value)
    verify_sample_files(
        sorted((clean_root / "cat" / "train").glob("*/rgb/*.png")), None, None, split="train"
    )  # intact files pass


@pytest.mark.parametrize(
    ("relative", "keep"), [("train/good/rgb/002.png", 200), ("test/dent/gt/000.png", 80)], ids=["rgb", "mask"]
)
def test_fit_refuses_damaged_files_before_the_first_batch(
    clean_root: Path, tmp_path: Path, relative: str, keep: int
) -> None:
    root, damaged = _damaged_copy(clean_root, tmp_path, relative, keep)
    datamodule = MVTec3D(root=root, category="cat", num_workers=0, train_batch_size=3, eval_batch_size=3)
    model = BTM(backbone="resnet18", pre_trained=False, modality="rgb+xyz", visualizer=False)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"cannot be decoded") as info:
        engine.fit(model=model, datamodule=datamodule)
    assert str(damaged) in str(info.value)
    assert len(model.model.embedding_store) == 0  # no batch was read
    assert not list((tmp_path / "results").rglob("*.ckpt"))


def test_anomalib_train_names_a_half_copied_tiff(clean_root: Path, tmp_path: Path) -> None:
    root, damaged = _damaged_copy(clean_root, tmp_path, "train/good/xyz/001.tiff", 712)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "300"}
    command = [ANOMALIB, "train", "--model", "BTM", "--model.pre_trained", "false", "--model.modality", "xyz"]
    command += ["--data", "anomalib.data.MVTec3D", "--data.root", str(root), "--data.category", "cat"]
    command += ["--data.num_workers", "0", "--default_root_dir", str(tmp_path / "results")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode != 0
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert f"XYZ file {damaged} (train split) cannot be decoded" in stderr, result.stderr[-3000:]
    # Nothing that looks like a finished run: no checkpoint, no weights folder, no test images.
    results = tmp_path / "results"
    assert not list(results.rglob("*.ckpt"))
    assert not list(results.rglob("weights"))
    assert not list(results.rglob("images"))
