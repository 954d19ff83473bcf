# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTMModel: modality resolution, presets, errors."""

from __future__ import annotations

import pytest
import torch

from anomalib_btm.models.btm.torch_model import BTF_SETTINGS, BTMModel


def test_btf_preset_sets_btf_choices() -> None:
    model = BTMModel(pre_trained=False, modality="xyz", preset="btf")
    assert model.scorer.image_score == BTF_SETTINGS["image_score"] == "reweighted"
    assert model.scorer.k_pixel == 1
    assert model.scorer.pixel_metric == "mean"
    assert model.scorer.n_reweight == 3
    assert model.anomaly_map_generator.blur_mode == "pil"
    assert model.xyz_branch.pooler.padding == 0
    btm = BTMModel(pre_trained=False, modality="xyz")
    assert (btm.scorer.image_score, btm.scorer.k_pixel, btm.anomaly_map_generator.blur_mode) == (
        "nearest",
        3,
        "gaussian",
    )
    assert btm.xyz_branch.pooler.padding == 1


def test_btf_preset_refuses_contradicting_arguments() -> None:
    with pytest.raises(ValueError, match=r"preset='btf' fixes .*k_pixel=5"):
        BTMModel(pre_trained=False, modality="xyz", preset="btf", k_pixel=5)
    with pytest.raises(ValueError, match="preset must be one of"):
        BTMModel(pre_trained=False, modality="xyz", preset="patchcore")


def test_auto_modality_resolves_on_first_batch_and_is_kept() -> None:
    model = BTMModel(backbone="resnet18", pre_trained=False, modality="auto")
    assert model.resolved_modality is None
    embedding = model(torch.randn(2, 3, 64, 64))
    assert model.resolved_modality == "rgb"
    assert embedding.shape == (2 * 8 * 8, 128 + 256)
    state = model.state_dict()
    reloaded = BTMModel(backbone="resnet18", pre_trained=False, modality="auto")
    reloaded.load_state_dict(state)
    assert reloaded.resolved_modality == "rgb"


def test_scoring_before_fit_is_a_clear_error() -> None:
    model = BTMModel(backbone="resnet18", pre_trained=False, modality="rgb").eval()
    with pytest.raises(ValueError, match="memory bank is empty"):
        model(torch.randn(1, 3, 64, 64))


def test_empty_training_set_is_a_clear_error() -> None:
    model = BTMModel(backbone="resnet18", pre_trained=False, modality="rgb")
    with pytest.raises(ValueError, match="training set is empty"):
        model.subsample_embedding(0.1)


def test_wrong_xyz_shape_is_a_clear_error() -> None:
    model = BTMModel(pre_trained=False, modality="xyz")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 3, 64, 64), torch.randn(1, 64, 64, 3))


def test_feature_upsampling_reaches_the_rgb_branch_and_is_validated() -> None:
    default = BTMModel(backbone="resnet18", pre_trained=False, modality="rgb")
    assert default.rgb_branch.feature_upsampling == "adaptive_avg_pool"
    model = BTMModel(backbone="resnet18", pre_trained=False, modality="rgb", feature_upsampling="bilinear")
    assert model.rgb_branch.feature_upsampling == "bilinear"
    with pytest.raises(ValueError, match="feature_upsampling must be one of"):
        BTMModel(pre_trained=False, modality="xyz", feature_upsampling="Bilinear")
    with pytest.raises(ValueError, match=r"preset='btf'.*feature_upsampling='bilinear'"):
        BTMModel(pre_trained=False, modality="xyz", preset="btf", feature_upsampling="bilinear")
