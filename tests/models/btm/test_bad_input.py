# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Bad input through anomalib's Engine: a clear error naming the file and saying what to do, before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from anomalib.data import MVTec3D
from anomalib.engine import Engine
from PIL import Image

from anomalib_btm import BTM
from anomalib_btm.data import generate_category


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "MVTec3D"
    generate_category(root, "bad", n_train=3, n_validation=0, n_test_good=2, n_test_per_defect=1, defects=("dent",))
    return root


def _copy(small_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "MVTec3D"
    shutil.copytree(small_root, root)
    return root


def _fit(root: Path, tmp_path: Path) -> None:
    datamodule = MVTec3D(root=root, category="bad", num_workers=0, train_batch_size=3, eval_batch_size=3)
    model = BTM(pre_trained=False, modality="xyz")
    Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False).fit(model, datamodule)


def test_corrupt_tiff(small_root: Path, tmp_path: Path) -> None:
    root = _copy(small_root, tmp_path)
    bad = root / "bad" / "train" / "good" / "xyz" / "001.tiff"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"001\.tiff is not a readable TIFF.*re-export"):
        _fit(root, tmp_path)
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.ckpt"))


def test_missing_tiff(small_root: Path, tmp_path: Path) -> None:
    root = _copy(small_root, tmp_path)
    (root / "bad" / "test" / "dent" / "xyz" / "000.tiff").unlink()
    with pytest.raises((FileNotFoundError, ValueError), match=r"000\.tiff"):
        _fit(root, tmp_path)


def test_rgb_xyz_size_mismatch_beyond_a_resize(small_root: Path, tmp_path: Path) -> None:
    root = _copy(small_root, tmp_path)
    rgb = root / "bad" / "train" / "good" / "rgb" / "002.png"
    Image.open(rgb).crop((0, 0, 224, 150)).save(rgb)
    with pytest.raises(ValueError, match=r"002\.png is 224×150 but XYZ .*002\.tiff is 224×224.*aspect"):
        _fit(root, tmp_path)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda xyz: np.where(np.arange(xyz.shape[0])[:, None, None] == 5, np.nan, xyz), "NaN/inf"),
        (lambda xyz: np.zeros_like(xyz), "no valid point"),
        (lambda xyz: xyz * 1000.0, "millimetres"),
        (lambda xyz: xyz[..., :2], r"\(H, W, 3\)"),
    ],
    ids=["nan", "all_zero", "millimetres", "two_channels"],
)
def test_bad_cloud_contents_name_the_file(small_root: Path, tmp_path: Path, corrupt: object, match: str) -> None:
    root = _copy(small_root, tmp_path)
    path = root / "bad" / "train" / "good" / "xyz" / "000.tiff"
    tifffile.imwrite(path, corrupt(tifffile.imread(path)).astype(np.float32))
    with pytest.raises(ValueError, match=match) as info:
        _fit(root, tmp_path)
    assert "000.tiff" in str(info.value)


def test_empty_training_set(small_root: Path, tmp_path: Path) -> None:
    model = BTM(pre_trained=False, modality="xyz")
    with pytest.raises(ValueError, match="training set is empty"):
        model.fit()


def test_coreset_ratio_that_leaves_no_sample() -> None:
    model = BTM(pre_trained=False, modality="xyz", coreset_sampling_ratio=1e-9)
    model.model.embedding_store.append(torch.randn(100, 33))
    with pytest.raises(ValueError, match="sampling_ratio"):
        model.fit()
