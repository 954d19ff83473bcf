# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Preallocated embedding store and bounded / chunked coreset selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalib_btm.models.btm.coreset import KCenterGreedy
from anomalib_btm.models.btm.memory_bank import EmbeddingStore, select_memory_bank


def test_store_allocates_once_for_the_expected_training_set() -> None:
    store = EmbeddingStore()
    store.expect(samples=10)
    first = torch.randn(3 * 16, 8)
    store.append(first, samples=3)
    buffer = store.embeddings.untyped_storage().data_ptr()
    assert store.nbytes == 10 * 16 * 8 * 4  # reserved for all ten samples at the first batch
    blocks = [first] + [torch.randn(16, 8) for _ in range(7)]
    for block in blocks[1:]:
        store.append(block, samples=1)
    assert store.embeddings.untyped_storage().data_ptr() == buffer  # never reallocated
    torch.testing.assert_close(store.embeddings, torch.cat(blocks))
    store.clear()
    assert len(store) == 0
    assert store.nbytes == 0


def test_store_grows_without_a_size_hint_and_float16_halves_memory() -> None:
    store = EmbeddingStore("float16")
    blocks = [torch.randn(5, 4) for _ in range(9)]
    for block in blocks:
        store.append(block)
    assert store.embeddings.dtype == torch.float16
    torch.testing.assert_close(store.embeddings.float(), torch.cat(blocks), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="dimension changed"):
        store.append(torch.randn(2, 5))
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingStore("float64")


def _rows_of(bank: torch.Tensor, embedding: torch.Tensor) -> bool:
    return bool((bank[:, None, :] == embedding[None, :, :]).all(dim=-1).any(dim=1).all())


def test_whole_selection_equals_kcenter_greedy() -> None:
    embedding = torch.randn(2000, 32)
    torch.manual_seed(3)
    np.random.seed(3)
    bank = select_memory_bank(embedding, 0.1)
    torch.manual_seed(3)
    np.random.seed(3)
    expected = KCenterGreedy(embedding, 0.1).sample_coreset()
    torch.testing.assert_close(bank, expected, rtol=0, atol=0)


def test_max_bank_size_caps_the_bank() -> None:
    embedding = torch.randn(3000, 16)
    bank = select_memory_bank(embedding, 0.5, max_bank_size=100)
    assert 99 <= bank.shape[0] <= 100
    # Rows of the bank are rows of the embedding.
    assert _rows_of(bank, embedding)


def test_chunked_selection_keeps_the_ratio_per_chunk_then_caps() -> None:
    embedding = torch.randn(3000, 16)
    bank = select_memory_bank(embedding, 0.1, chunk_size=1000)
    assert bank.shape == (300, 16)
    capped = select_memory_bank(embedding, 0.1, chunk_size=1000, max_bank_size=120)
    assert capped.shape[0] <= 120
    assert _rows_of(capped, embedding)
    half = select_memory_bank(embedding.half(), 0.1, chunk_size=1000)
    assert half.dtype == torch.float32


@pytest.mark.parametrize(("kwargs", "match"), [({"max_bank_size": 0}, "max_bank_size"), ({"chunk_size": 0}, "chunk")])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_memory_bank(torch.randn(10, 2), 0.5, **kwargs)


def test_exact_and_pruned_build_the_same_bank_from_shuffled_samples() -> None:
    """Both coreset methods take the rows in their global (image-path) order with the run's seed: one bank."""
    from anomalib_btm.models.btm.memory_bank import row_positions, sample_positions

    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(12, 1, 40, generator=generator) * 3
    embedding = (centres + torch.randn(12, 30, 40, generator=generator)).reshape(-1, 40)
    keys = [f"{i:03d}.png" for i in [5, 2, 9, 0, 11, 3, 7, 1, 8, 4, 10, 6]]
    order = row_positions(sample_positions(keys), 30)
    pruned = select_memory_bank(embedding, 0.05, seed=7, row_order=order, block_rows=30)
    exact = select_memory_bank(embedding, 0.05, seed=7, row_order=order, method="exact")
    assert torch.equal(pruned, exact)
    sorted_rows = embedding[torch.from_numpy(np.argsort(order))]
    assert torch.equal(select_memory_bank(sorted_rows, 0.05, seed=7, method="exact"), exact)
