# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Dual-k scorer against hand-computed values on a tiny bank."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from anomalib_btm.models.btm import scoring
from anomalib_btm.models.btm.scoring import DualKScorer, inner_products, knn, squared_distances

# Bank of four 2-D features; two query patches p1 = (0, 0.9) and p2 = (2.5, 0).
BANK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
P1 = (0.0, 0.9)
P2 = (2.5, 0.0)
# Sorted distances, by hand:
# p1: 0.9 (0,0), 1.1 (0,2), sqrt(1.81) (1,0), sqrt(9.81) (3,0)
# p2: 0.5 (3,0), 1.5 (1,0), 2.5 (0,0), sqrt(10.25) (0,2)
D1 = [0.9, 1.1, math.sqrt(1.81), math.sqrt(9.81)]
D2 = [0.5, 1.5, 2.5, math.sqrt(10.25)]


def _embedding() -> torch.Tensor:
    # (B=1, D=2, h=1, w=2)
    return torch.tensor([[P1, P2]]).permute(0, 2, 1).unsqueeze(2)


def test_squared_distances_match_cdist() -> None:
    queries = torch.randn(50, 16)
    bank = torch.randn(70, 16)
    expected = torch.cdist(queries, bank).pow(2)
    torch.testing.assert_close(squared_distances(queries, bank), expected, atol=1e-4, rtol=1e-4)


def test_numpy_blas_products_equal_torch_and_keep_autograd() -> None:
    queries = torch.randn(300, 96)
    bank = torch.randn(500, 96)
    torch.testing.assert_close(inner_products(queries, bank), queries @ bank.T, atol=1e-4, rtol=1e-5)
    # With autograd on a requiring tensor, torch computes it: the gradient flows.
    leaf = queries.clone().requires_grad_()
    squared_distances(leaf, bank).sum().backward()
    expected = 2 * bank.shape[0] * leaf.detach() - 2 * bank.sum(0).expand_as(leaf)
    torch.testing.assert_close(leaf.grad, expected, atol=1e-3, rtol=1e-4)
    # Float64 stays in torch (the result dtype follows the inputs).
    assert squared_distances(queries.double(), bank.double()).dtype == torch.float64


def test_numpy_blas_uses_torchs_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[int] = []

    class _Controller:
        def limit(self, limits: int, user_api: str) -> contextlib.AbstractContextManager:
            assert user_api == "blas"
            requested.append(limits)
            return contextlib.nullcontext()

    monkeypatch.setattr(scoring, "_blas_controller", _Controller)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        inner_products(torch.randn(4, 8), torch.randn(5, 8))
    finally:
        torch.set_num_threads(threads)
    assert requested == [1]


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4096])
def test_knn_sorted_and_chunk_invariant(chunk_size: int | None) -> None:
    patches = torch.tensor([P1, P2])
    dist, idx = knn(patches, BANK, k=3, chunk_size=chunk_size)
    torch.testing.assert_close(dist, torch.tensor([D1[:3], D2[:3]]))
    assert idx.tolist() == [[0, 2, 1], [3, 1, 0]]


@pytest.mark.parametrize(
    ("k_image", "expected"),
    [(1, 0.9), (2, max((0.9 + 1.1) / 2, (0.5 + 1.5) / 2)), (3, max(sum(D1[:3]) / 3, sum(D2[:3]) / 3))],
)
def test_image_score_nearest(k_image: int, expected: float) -> None:
    scores = DualKScorer(k_image=k_image, k_pixel=3)(_embedding(), BANK)
    assert scores.pred_score.shape == (1,)
    assert scores.pred_score.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("pixel_metric", "k_pixel", "expected"),
    [
        ("squared_mean", 3, [sum(d * d for d in D1[:3]) / 3, sum(d * d for d in D2[:3]) / 3]),
        ("mean", 3, [sum(D1[:3]) / 3, sum(D2[:3]) / 3]),
        ("squared_mean", 1, [0.81, 0.25]),
        ("mean", 2, [1.0, 1.0]),
    ],
)
def test_patch_scores(pixel_metric: str, k_pixel: int, expected: list[float]) -> None:
    scores = DualKScorer(k_image=1, k_pixel=k_pixel, pixel_metric=pixel_metric)(_embedding(), BANK)
    assert scores.patch_scores.shape == (1, 1, 2)
    torch.testing.assert_close(scores.patch_scores.flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_image_score_reweighted_by_hand() -> None:
    # s* = 0.9 at p1, m* = (0, 0); its 3 nearest bank features: (0,0) itself, (1,0), (0,2); m* excluded from the sum.
    s_star = 0.9
    scale = math.sqrt(2)
    weight = 1 - math.exp(s_star / scale) / (math.exp(math.sqrt(1.81) / scale) + math.exp(1.1 / scale))
    scores = DualKScorer(k_image=1, k_pixel=3, image_score="reweighted")(_embedding(), BANK)
    assert scores.pred_score.item() == pytest.approx(weight * s_star, rel=1e-5)


def test_batch_is_independent_per_image() -> None:
    bank = torch.randn(200, 8)
    embedding = torch.randn(3, 8, 4, 5)
    batched = DualKScorer(k_image=1, k_pixel=3)(embedding, bank)
    for i in range(3):
        single = DualKScorer(k_image=1, k_pixel=3)(embedding[i : i + 1], bank)
        torch.testing.assert_close(batched.pred_score[i : i + 1], single.pred_score)
        torch.testing.assert_close(batched.patch_scores[i : i + 1], single.patch_scores)


def test_bank_smaller_than_k_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="k_image/k_pixel"):
        DualKScorer(k_image=1, k_pixel=9)(torch.randn(1, 2, 2, 2), BANK)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_image": 0}, "k_image"),
        ({"k_pixel": -1}, "k_pixel"),
        ({"pixel_metric": "max"}, "pixel_metric"),
        ({"image_score": "sum"}, "image_score"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DualKScorer(**kwargs)
