# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Reuse of raw predictions: keys follow the input bytes, the token follows the model state, results are identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch, MVTec3D
from anomalib.engine import Engine

from anomalib_btm import BTM
from anomalib_btm.models.btm.prediction_cache import PredictionCache, model_token, sample_keys
from anomalib_btm.models.btm.torch_model import BTMModel


def test_sample_keys_follow_the_input_bytes() -> None:
    image, xyz = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 10, 10)
    keys = sample_keys(image, xyz)
    assert len(set(keys)) == 3
    assert sample_keys(image.clone(), xyz.clone()) == keys
    assert sample_keys(image[1:], xyz[1:]) == keys[1:]  # per sample, not per batch
    changed = xyz.clone()
    changed[1, 2, 5, 5] += 1e-6
    assert sample_keys(image, changed) == [keys[0], sample_keys(image, changed)[1], keys[2]]
    assert sample_keys(image, changed)[1] != keys[1]
    assert sample_keys(image, None) != keys
    assert sample_keys(image.double(), xyz) != keys  # dtype is part of the key
    half = image.to(torch.bfloat16)
    assert sample_keys(half, None) == sample_keys(half.clone(), None) != sample_keys(half.half(), None)


def test_model_token_changes_with_the_bank_and_the_settings() -> None:
    model = BTMModel(backbone="resnet18", pre_trained=False, modality="rgb")
    model.memory_bank = torch.rand(10, 384)
    token = model_token(model)
    assert model_token(model) == token
    model.memory_bank.add_(0.0)  # rewritten in place (a load_state_dict copies into it)
    assert model_token(model) != token
    token = model_token(model)
    model.memory_bank = torch.rand(10, 384)  # replaced (a refit)
    assert model_token(model) != token
    token = model_token(model)
    model.scorer.k_pixel = 5
    assert model_token(model) != token


def test_cache_answers_only_whole_batches_of_the_same_token_within_its_budget() -> None:
    cache = PredictionCache(max_bytes=3 * (4 * 4 * 4 + 4))
    predictions = InferenceBatch(pred_score=torch.arange(4.0), anomaly_map=torch.rand(4, 1, 4, 4))
    keys = [b"a", b"b", b"c", b"d"]
    cache.store("t", keys, predictions)
    assert len(cache.entries) == 3  # the fourth map did not fit
    assert cache.lookup("t", keys) is None
    hit = cache.lookup("t", keys[:3])
    assert hit is not None
    torch.testing.assert_close(hit.pred_score, predictions.pred_score[:3])
    torch.testing.assert_close(hit.anomaly_map, predictions.anomaly_map[:3])
    assert cache.hits == 3
    cache.store("u", keys[:1], predictions)  # a new model state forgets the old one
    assert cache.lookup("t", keys[:1]) is None
    assert cache.lookup("u", keys[:1]) is not None


def _train_then_test(root: Path, work: Path, cache_predictions: bool) -> tuple[BTM, dict, int]:
    """``anomalib train``'s fit + test; returns the model, the test metrics and the scoring calls of the test pass."""
    # anomalib's default for MVTec 3D-AD: validation is the test split, so `anomalib train` scores it twice.
    datamodule = MVTec3D(root=root, category="small", num_workers=0, train_batch_size=4, eval_batch_size=4, seed=0)
    torch.manual_seed(0)
    model = BTM(backbone="resnet18", pre_trained=False, cache_predictions=cache_predictions)
    engine = Engine(default_root_dir=work, logger=False, accelerator="cpu", enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    scored = model.model.timer.calls["scoring"]
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    return model, metrics, model.model.timer.calls["scoring"] - scored


@pytest.mark.slow
def test_train_then_test_reuses_validation_and_gives_the_same_results(small_root: Path, tmp_path: Path) -> None:
    cached, cached_metrics, cached_calls = _train_then_test(small_root, tmp_path / "cached", cache_predictions=True)
    plain, plain_metrics, plain_calls = _train_then_test(small_root, tmp_path / "plain", cache_predictions=False)
    torch.testing.assert_close(cached.model.memory_bank, plain.model.memory_bank, rtol=0, atol=0)
    assert cached_calls == 0  # every test batch came from validation
    assert cached.prediction_cache.hits == 11  # the whole test split: 5 good, 3 dent, 3 color
    assert plain_calls > 0
    assert cached_metrics == plain_metrics  # identical numbers with and without reuse
