# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Bounded memory for BTM's memory bank: a preallocated embedding store and chunked coreset selection.

PatchCore-style models keep a Python list of per-batch embeddings and concatenate it before the coreset, which holds
every feature twice; out-of-memory at coreset time is the most reported failure of BTF/M3DM/PatchCore runs.
:class:`EmbeddingStore` writes each batch into one buffer reserved for the whole training set (optionally float16),
so the training features exist once. :func:`select_memory_bank` then runs the greedy coreset either on the whole
store (the paper's setting) or chunk by chunk (``chunk_size``, each chunk converted to float32 on its own), and caps
the bank at ``max_bank_size`` rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from anomalib_btm.checks import check_choice

from .coreset import KCenterGreedy, PrunedKCenterGreedy, check_coreset_method

logger = logging.getLogger(__name__)

STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


class EmbeddingStore:
    """Append-only store of patch embeddings in one preallocated buffer.

    Call :meth:`reserve` with the expected number of rows when it is known (the Lightning module does, from the
    training set size); otherwise the buffer grows geometrically.

    Args:
        dtype (str): ``"float32"`` or ``"float16"`` (halves the memory; the coreset and the bank stay float32).

    Example:
        >>> store = EmbeddingStore()
        >>> store.expect(samples=5)  # five images of two patches each
        >>> store.append(torch.ones(6, 4), samples=3)
        >>> store.append(torch.zeros(4, 4), samples=2)
        >>> store.embeddings.shape
        torch.Size([10, 4])
    """

    def __init__(self, dtype: str = "float32") -> None:
        check_choice("embedding store dtype", dtype, STORE_DTYPES)
        self.dtype = STORE_DTYPES[dtype]
        self._buffer: torch.Tensor | None = None
        self._rows = 0
        self._samples = 0
        self._expected_samples: int | None = None
        self.keys: list[str] = []

    def __len__(self) -> int:
        """Number of stored rows."""
        return self._rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer (reserved, not only filled)."""
        return 0 if self._buffer is None else self._buffer.numel() * self._buffer.element_size()

    def expect(self, samples: int) -> None:
        """Announce how many samples (images) will come, before rows per sample and dimension are known.

        Args:
            samples (int): Expected number of training samples.
        """
        self._expected_samples = int(samples)

    def reserve(self, rows: int, dim: int, device: torch.device | str = "cpu") -> None:
        """Allocate the buffer for ``rows`` rows of ``dim`` features (keeps rows already stored).

        Args:
            rows (int): Capacity in rows.
            dim (int): Feature dimension.
            device (torch.device | str): Device of the buffer.
        """
        if self._buffer is not None and self._buffer.shape[0] >= rows:
            return
        buffer = torch.empty((rows, dim), dtype=self.dtype, device=device)
        if self._buffer is not None and self._rows:
            buffer[: self._rows].copy_(self._buffer[: self._rows])
        self._buffer = buffer

    def append(self, rows: torch.Tensor, samples: int = 1) -> None:
        """Copy a ``(n, dim)`` block of embeddings into the buffer.

        Args:
            rows (torch.Tensor): Embeddings of one batch.
            samples (int): Number of samples (images) the block holds; with :meth:`expect` it sizes the buffer.

        Raises:
            ValueError: If the feature dimension changes between batches.
        """
        n, dim = rows.shape
        if self._buffer is None:
            expected = (self._expected_samples or 0) * (n // max(samples, 1))
            self.reserve(max(expected, n), dim, rows.device)
        assert self._buffer is not None
        if dim != self._buffer.shape[1]:
            msg = f"Embedding dimension changed from {self._buffer.shape[1]} to {dim} between training batches."
            raise ValueError(msg)
        if self._rows + n > self._buffer.shape[0]:
            self.reserve(max(2 * self._buffer.shape[0], self._rows + n), dim, self._buffer.device)
        self._buffer[self._rows : self._rows + n].copy_(rows.detach())
        self._rows += n
        self._samples += samples

    @property
    def samples(self) -> int:
        """Number of stored samples (images)."""
        return self._samples

    @property
    def rows_per_sample(self) -> int | None:
        """Rows (patches) per sample, or ``None`` when nothing is stored."""
        return self._rows // self._samples if self._samples else None

    def tag(self, keys: Sequence[str]) -> None:
        """Name the samples appended last (their image paths), in order; the names fix the samples' global order.

        Args:
            keys (Sequence[str]): One key per sample of the last :meth:`append` calls not yet tagged.

        Raises:
            ValueError: If there are more keys than untagged samples.
        """
        if len(self.keys) + len(keys) > self._samples:
            msg = f"{len(keys)} keys for {self._samples - len(self.keys)} untagged samples in the embedding store."
            raise ValueError(msg)
        self.keys.extend(str(key) for key in keys)

    def drop_last(self, samples: int) -> None:
        """Forget the last ``samples`` samples (e.g. the padding a distributed sampler repeated).

        Args:
            samples (int): Number of samples to drop from the end.
        """
        if samples <= 0:
            return
        per_sample = self.rows_per_sample or 0
        self._rows -= samples * per_sample
        self._samples -= samples
        del self.keys[self._samples :]

    def sample_order(self) -> np.ndarray | None:
        """Global position of every row: samples sorted by key (see :func:`sample_positions`), patches in order.

        Returns:
            np.ndarray | None: ``(rows,)`` int64 positions, or ``None`` when the samples are not all tagged.
        """
        if not self._samples or len(self.keys) != self._samples:
            return None
        return row_positions(sample_positions(self.keys), self.rows_per_sample or 0)

    @property
    def embeddings(self) -> torch.Tensor:
        """The stored rows, a view of the buffer (no copy)."""
        if self._buffer is None:
            return torch.empty(0)
        return self._buffer[: self._rows]

    def clear(self) -> None:
        """Free the buffer."""
        self._buffer = None
        self._rows = 0
        self._samples = 0
        self._expected_samples = None
        self.keys = []


def sample_positions(keys: Sequence[str]) -> np.ndarray:
    """Position of every sample when the samples are sorted by key (a stable sort: equal keys keep their order).

    Args:
        keys (Sequence[str]): One key (image path) per sample.

    Returns:
        np.ndarray: ``(len(keys),)`` int64 positions.
    """
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    positions = np.empty(len(keys), dtype=np.int64)
    positions[np.asarray(order, dtype=np.int64)] = np.arange(len(keys), dtype=np.int64)
    return positions


def row_positions(sample_position: np.ndarray, rows_per_sample: int) -> np.ndarray:
    """Expand sample positions to row positions (the patches of a sample stay together, in order).

    Args:
        sample_position (np.ndarray): ``(S,)`` positions of the samples.
        rows_per_sample (int): Patches per sample.

    Returns:
        np.ndarray: ``(S * rows_per_sample,)`` int64 positions.
    """
    patch = np.arange(rows_per_sample, dtype=np.int64)
    return (sample_position[:, None] * rows_per_sample + patch[None, :]).reshape(-1)


def select_memory_bank(
    embedding: torch.Tensor,
    sampling_ratio: float,
    max_bank_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    *,
    method: str = "pruned",
    seed: int | None = None,
    row_order: np.ndarray | None = None,
    block_rows: int | None = None,
) -> torch.Tensor:
    """Greedy k-center coreset of ``embedding``, whole or chunk by chunk, capped at ``max_bank_size`` rows.

    Args:
        embedding (torch.Tensor): ``(N, D)`` training patch features (float32 or float16).
        sampling_ratio (float): Fraction of rows kept, in ``(0, 1]``; ``1`` keeps everything.
        max_bank_size (int | None): Upper bound on the bank's rows; ``None`` for no bound.
        chunk_size (int | None): Run the coreset on consecutive chunks of this many rows (each chunk keeps
            ``sampling_ratio`` of its rows; memory and time scale with the chunk instead of ``N``), then, if the
            union exceeds ``max_bank_size``, once more on the union. ``None`` selects on all rows at once (the
            paper's setting, identical to anomalib's ``KCenterGreedy``).
        progress (bool): Show a progress bar.
        method (str): ``"pruned"`` (:class:`~.coreset.PrunedKCenterGreedy`) or ``"exact"`` (anomalib's arithmetic,
            :class:`~.coreset.KCenterGreedy`).
        seed (int | None): Seed of the projection and the first center; ``None`` for the global generators.
        row_order (np.ndarray | None): Global position of every row (whole-store selection: the first center and
            ties refer to it, which makes the bank independent of the order the rows arrived in); ``None`` for the
            storage order.
        block_rows (int | None): Rows per projection product of ``"pruned"`` (BTM: the patches of one sample).

    Returns:
        torch.Tensor: ``(M, D)`` float32 memory bank.

    Raises:
        ValueError: On a bad ``max_bank_size``, ``chunk_size`` or ``method``.
    """
    check_coreset_method(method)
    if max_bank_size is not None and max_bank_size < 1:
        msg = f"max_bank_size must be a positive number of patches or None, got {max_bank_size}."
        raise ValueError(msg)
    if chunk_size is not None and chunk_size < 1:
        msg = f"coreset_chunk_size must be a positive number of patches or None, got {chunk_size}."
        raise ValueError(msg)
    n_rows = embedding.shape[0]

    def coreset(rows: torch.Tensor, ratio: float, order: np.ndarray | None = None) -> torch.Tensor:
        if ratio >= 1.0:
            return rows.float()
        if method == "exact":
            if order is not None:  # the rows in their global order: the same first center as "pruned"
                rows = rows[torch.from_numpy(np.argsort(order, kind="stable")).to(rows.device)]
            return KCenterGreedy(rows.float(), sampling_ratio=ratio, seed=seed, progress=progress).sample_coreset()
        sampler = PrunedKCenterGreedy(
            rows, ratio, seed=seed, progress=progress, block_rows=block_rows, global_index=order
        )
        return sampler.sample_coreset().float()

    if chunk_size is None or chunk_size >= n_rows:
        ratio = sampling_ratio
        if max_bank_size is not None and n_rows * ratio > max_bank_size:
            ratio = max_bank_size / n_rows
        return coreset(embedding, ratio, row_order)

    parts = [coreset(embedding[start : start + chunk_size], sampling_ratio) for start in range(0, n_rows, chunk_size)]
    bank = torch.cat(parts)
    logger.info("Chunked coreset: %d chunks of %d patches → %d patches.", len(parts), chunk_size, bank.shape[0])
    if max_bank_size is not None and bank.shape[0] > max_bank_size:
        bank = coreset(bank, max_bank_size / bank.shape[0])
    return bank
