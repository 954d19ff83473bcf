# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Reuse of BTM's raw predictions for inputs it has already scored against the same memory bank.

``anomalib train`` validates at the end of the fit and then tests; with anomalib's default ``val_split_mode`` for
MVTec 3D-AD (``same_as_test``) both passes score the same samples with the same memory bank, and BTM's scoring is a
pure function of the input tensors, the frozen backbone, the bank and the scoring settings. :class:`PredictionCache`
keeps each sample's raw ``pred_score`` and ``anomaly_map`` keyed by a digest of its input bytes, under a token of
the model's state (the memory bank's identity and version counter, the backbone weights' version counters and the
scoring settings); a batch whose every sample is known is answered from it, any other batch is computed. The
post-processor, metrics and visualizer still run on every batch. Only CPU tensors are cached (on a GPU the
transfer for the digest would cost more than it saves).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch
from anomalib.data import InferenceBatch

if TYPE_CHECKING:
    from collections.abc import Hashable

    from .torch_model import BTMModel

__all__ = ["PredictionCache", "model_token", "sample_keys"]


def sample_keys(image: torch.Tensor, xyz: torch.Tensor | None) -> list[bytes]:
    """One digest per sample of the exact input bytes (image, and cloud when given), shapes and dtypes included.

    Args:
        image (torch.Tensor): ``(B, 3, H, W)`` CPU images as the model receives them.
        xyz (torch.Tensor | None): ``(B, 3, Hx, Wx)`` CPU clouds, or ``None``.

    Returns:
        list[bytes]: ``B`` BLAKE2b digests.
    """
    keys = []
    for index in range(image.shape[0]):
        digest = hashlib.blake2b(digest_size=32)
        for tensor in (image[index], None if xyz is None else xyz[index]):
            if tensor is None:
                digest.update(b"none")
                continue
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: hash the same bytes as int16
                tensor = tensor.view(torch.int16)
            array = tensor.detach().contiguous().numpy()
            digest.update(memoryview(array).cast("B"))
        keys.append(digest.digest())
    return keys


def model_token(model: BTMModel) -> Hashable:
    """What the raw predictions depend on besides the input: changes whenever the bank, weights or settings change.

    Args:
        model (BTMModel): The torch model.

    Returns:
        Hashable: Identity and in-place version counters of the memory bank and of every parameter and buffer (a
        refit replaces or rewrites them; ``load_state_dict`` copies into them), with the scorer's and anomaly-map
        generator's settings.
    """
    tensors = tuple((id(t), t._version, t.data_ptr(), tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))
    settings = tuple(
        sorted(
            (f"{owner}.{name}", repr(value))
            for owner, module in (("scorer", model.scorer), ("map", model.anomaly_map_generator))
            for name, value in vars(module).items()
            if not name.startswith("_") and isinstance(value, int | float | str | bool | tuple | type(None))
        )
    )
    return tensors, settings


class PredictionCache:
    """Raw per-sample predictions of one model state, bounded in bytes.

    Args:
        max_bytes (int): Most bytes of stored predictions; samples beyond it are not stored (they are computed again
            when seen again). Defaults to 512 MiB, about 2,600 anomaly maps at 224².

    Example:
        >>> cache = PredictionCache()
        >>> keys = [b"a", b"b"]
        >>> cache.store("token", keys, InferenceBatch(pred_score=torch.tensor([0.1, 0.9]),
        ...                                           anomaly_map=torch.zeros(2, 1, 4, 4)))
        >>> cache.lookup("token", keys).pred_score
        tensor([0.1000, 0.9000])
        >>> cache.lookup("other token", keys) is None
        True
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.token: Hashable | None = None
        self.entries: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0

    def clear(self) -> None:
        """Forget every stored prediction and the hit count."""
        self.token = None
        self.entries.clear()
        self.bytes = 0
        self.hits = 0

    def lookup(self, token: Hashable, keys: list[bytes]) -> InferenceBatch | None:
        """The batch's predictions if every sample is stored under ``token``, else ``None``.

        Args:
            token (Hashable): The model's current :func:`model_token`.
            keys (list[bytes]): The batch's :func:`sample_keys`.

        Returns:
            InferenceBatch | None: ``pred_score`` and ``anomaly_map`` (copies), or ``None``.
        """
        if token != self.token or not keys or any(key not in self.entries for key in keys):
            return None
        scores, maps = zip(*(self.entries[key] for key in keys), strict=True)
        self.hits += len(keys)
        return InferenceBatch(pred_score=torch.stack(scores), anomaly_map=torch.stack(maps))

    def store(self, token: Hashable, keys: list[bytes], predictions: InferenceBatch) -> None:
        """Keep the batch's predictions under ``token`` (a new token drops what an older model state computed).

        Args:
            token (Hashable): The model's current :func:`model_token`.
            keys (list[bytes]): The batch's :func:`sample_keys`.
            predictions (InferenceBatch): The model's output for the batch.
        """
        if token != self.token:
            self.clear()
            self.token = token
        scores, maps = predictions.pred_score, predictions.anomaly_map
        if scores is None or maps is None or scores.device.type != "cpu":
            return
        for index, key in enumerate(keys):
            size = maps[index].numel() * maps[index].element_size() + scores[index].element_size()
            if key in self.entries or self.bytes + size > self.max_bytes:
                continue
            self.entries[key] = (scores[index].detach().clone(), maps[index].detach().clone())
            self.bytes += size
