# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTM on Lightning DDP: sharded feature extraction and an exact distributed coreset.

Under ``--trainer.strategy ddp --trainer.devices N`` every process (rank) extracts the features of its own shard of
the training set (Lightning's ``DistributedSampler``) and keeps them; nothing is gathered until the coreset. The
greedy coreset (:class:`~.coreset.PrunedKCenterGreedy`) then runs on all ranks at once: the same projection and
first center on every rank (from one seed that rank 0 shares), and at every greedy step one ``all_gather`` of each
rank's farthest point, from which every rank takes the same global one. At the end the selected rows are summed
into one bank on every rank. The result is the single-process bank (same rows, same order) because samples are put
in one global order — by their image path — on every rank and in a single process alike, and ties break by that
order.

``DistributedSampler`` pads the training set to a multiple of the number of ranks by repeating samples; the repeats
are the last sample of some ranks and are dropped before the coreset (:func:`padded_tail`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import DDPStrategy
from torch import distributed as dist
from torch.utils.data import DataLoader, SequentialSampler

from .coreset import Exchange, PrunedKCenterGreedy
from .memory_bank import row_positions, sample_positions

__all__ = [
    "EVAL_DATALOADERS",
    "all_reduce_bank",
    "broadcast_seed",
    "distributed_memory_bank",
    "global_sample_positions",
    "is_distributed",
    "make_exchange",
    "padded_tail",
    "skip_ddp_wrapper",
    "unpadded_eval_dataloaders",
]

EVAL_DATALOADERS = ("val_dataloader", "test_dataloader", "predict_dataloader")


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running.

    Returns:
        ``True`` under DDP with two or more processes.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    """Device for collectives: CUDA for NCCL, CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def padded_tail(dataset_size: int, world_size: int, rank: int, samples_seen: int) -> int:
    """Number of samples at the end of this rank's shard that ``DistributedSampler`` added as padding.

    ``DistributedSampler`` (``drop_last=False``) repeats ``total - dataset_size`` samples, where ``total`` is the
    next multiple of ``world_size``; rank ``r``'s ``j``-th sample has position ``r + j * world_size`` in the padded
    list, so the padding is the last sample of the ranks whose last position is ``>= dataset_size``.

    Args:
        dataset_size: Samples in the training set.
        world_size: Number of ranks.
        rank: This rank.
        samples_seen: Samples this rank extracted.

    Returns:
        ``0`` or ``1``.

    Raises:
        ValueError: If ``samples_seen`` is not what the sampler gives this rank.
    """
    per_rank = math.ceil(dataset_size / world_size)
    if samples_seen != per_rank:
        msg = (
            f"Rank {rank} extracted {samples_seen} training samples, but Lightning's DistributedSampler gives each of "
            f"the {world_size} ranks {per_rank} of {dataset_size}. BTM's distributed fit needs Lightning's sampler "
            "(Trainer(use_distributed_sampler=True), the default) and a train dataloader without drop_last."
        )
        raise ValueError(msg)
    return int(rank + (per_rank - 1) * world_size >= dataset_size)


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed, on every rank.

    Args:
        seed: This rank's seed.

    Returns:
        The seed of rank 0.
    """
    value = torch.tensor([seed % 2**62], dtype=torch.int64, device=_device())
    dist.broadcast(value, src=0)
    return int(value.item())


def global_sample_positions(keys: Sequence[str]) -> tuple[np.ndarray, int]:
    """Positions of this rank's samples in the global order of all ranks' samples (sorted by key).

    Equal keys (a file listed twice) are ordered by rank, then by their order on the rank, which is the order a
    single process sees them in when the sampler does not shuffle; their features are equal anyway.

    Args:
        keys: One key per local sample (its image path).

    Returns:
        ``(positions, total)``: ``(len(keys),)`` global positions and the number of samples over all ranks.

    Raises:
        ValueError: On every rank, if some rank holds no sample.
    """
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(keys))
    empty = [rank for rank, shard in enumerate(gathered) if not shard]
    if empty:
        total = sum(len(shard or ()) for shard in gathered)
        msg = (
            f"BTM's distributed fit: rank(s) {empty} received no training sample ({total} samples for "
            f"{len(gathered)} processes). Use fewer devices (--trainer.devices) or more training images."
        )
        raise ValueError(msg)
    position = sample_positions([key for shard in gathered for key in shard or ()])
    rank = dist.get_rank()
    offset = sum(len(gathered[r] or ()) for r in range(rank))
    return position[offset : offset + len(keys)], len(position)


def make_exchange() -> Exchange:
    """The per-step collective of the distributed coreset: one ``all_gather`` of every rank's farthest point.

    Returns:
        ``exchange(value, index, row) -> (index, row)``: the farthest point over all ranks (largest value, then
        smallest global index; a rank without a candidate passes ``index = -1``) and its projected row.
    """
    world_size = dist.get_world_size()
    device = _device()
    send: torch.Tensor | None = None
    slots: list[torch.Tensor] = []

    def exchange(value: float, index: int, row: np.ndarray) -> tuple[int, np.ndarray]:
        nonlocal send, slots
        if send is None:
            send = torch.empty(row.shape[0] + 2, dtype=torch.float64, device=device)
            slots = [torch.empty_like(send) for _ in range(world_size)]
        send[0] = value if index >= 0 else -math.inf
        send[1] = index
        send[2:] = torch.from_numpy(row.astype(np.float64))
        dist.all_gather(slots, send)
        table = torch.stack(slots).cpu().numpy()
        candidates = [r for r in range(world_size) if table[r, 1] >= 0]
        winner = max(candidates, key=lambda r: (table[r, 0], -table[r, 1]))
        return int(table[winner, 1]), table[winner, 2:].astype(np.float32)

    return exchange


def all_reduce_bank(embedding: torch.Tensor, picks: Sequence[int], local_of: dict[int, int]) -> torch.Tensor:
    """The bank rows of all ranks on every rank: each rank writes its own picks, a sum fills in the others.

    Args:
        embedding: ``(n, D)`` local features.
        picks: Global indices of the coreset, in selection order.
        local_of: Global index → local row, for this rank's rows.

    Returns:
        ``(len(picks), D)`` float32 bank (on the embedding's device).
    """
    bank = torch.zeros((len(picks), embedding.shape[1]), dtype=torch.float32, device=_device())
    mine = [(slot, local_of[g]) for slot, g in enumerate(picks) if g in local_of]
    if mine:
        slots = torch.tensor([s for s, _ in mine], dtype=torch.int64, device=bank.device)
        rows = torch.tensor([r for _, r in mine], dtype=torch.int64, device=embedding.device)
        bank[slots] = embedding[rows].to(device=bank.device, dtype=torch.float32)
    dist.all_reduce(bank, op=dist.ReduceOp.SUM)
    return bank.to(embedding.device)


def distributed_memory_bank(
    embedding: torch.Tensor,
    keys: Sequence[str],
    rows_per_sample: int,
    sampling_ratio: float,
    seed: int,
    max_bank_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The memory bank of all ranks' training features, on every rank (the single-process bank of the union).

    Args:
        embedding: ``(n, D)`` this rank's features, ``rows_per_sample`` rows per sample in the order of ``keys``.
        keys: One key (image path) per local sample.
        rows_per_sample: Patches per sample.
        sampling_ratio: Fraction of all patches kept.
        seed: Seed of the projection and the first center (the same on every rank, see :func:`broadcast_seed`).
        max_bank_size: Upper bound on the bank's rows.
        progress: Show a progress bar (rank 0).

    Returns:
        ``(M, D)`` float32 bank.

    Raises:
        ValueError: On every rank, if a rank has no sample or the ratio selects no row.
    """
    sample_position, n_samples = global_sample_positions(keys)
    order = row_positions(sample_position, rows_per_sample)
    n_total = n_samples * rows_per_sample
    ratio = sampling_ratio
    if max_bank_size is not None and n_total * ratio > max_bank_size:
        ratio = max_bank_size / n_total
    if int(n_total * ratio) < 1:
        msg = f"coreset_sampling_ratio={sampling_ratio} selects no patch of the {n_total} training patches."
        raise ValueError(msg)
    if ratio >= 1.0:
        picks = [int(g) for g in np.arange(n_total)]
    else:
        sampler = PrunedKCenterGreedy(
            embedding,
            ratio,
            seed=seed,
            progress=progress and dist.get_rank() == 0,
            block_rows=rows_per_sample,
            global_index=order,
            n_total=n_total,
            exchange=make_exchange(),
        )
        picks = sampler.select_coreset_idxs()
    local_of = {int(g): i for i, g in enumerate(order)}
    return all_reduce_bank(embedding, picks, local_of)


def skip_ddp_wrapper(strategy: DDPStrategy) -> None:
    """Keep Lightning's DDP processes and samplers, without wrapping the model in ``DistributedDataParallel``.

    ``DistributedDataParallel`` exists to average gradients and refuses a module without trainable parameters,
    which BTM is (a frozen backbone and a memory bank). Lightning itself does not wrap the model when it validates,
    tests or predicts; this does the same for the fit: the module states are synchronised from rank 0 instead.

    Args:
        strategy: The trainer's DDP strategy (changed for this run only).
    """

    def configure_ddp() -> None:
        for tensor in strategy.model.state_dict().values():
            dist.broadcast(tensor, src=0)

    strategy.configure_ddp = configure_ddp  # type: ignore[method-assign]


_LOADER_SETTINGS = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "persistent_workers",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
)
"""The DataLoader settings an evaluation loader keeps when its sampler is replaced."""


def _unpadded(make: Callable[[], Any], num_replicas: int, rank: int) -> Callable[[], Any]:
    """Wrap a datamodule's dataloader method: its ordered dataloaders get Lightning's ``UnrepeatedDistributedSampler``.

    Args:
        make: The datamodule's bound ``*_dataloader`` method.
        num_replicas: Number of ranks.
        rank: This rank.

    Returns:
        The wrapped method.
    """

    def rebuild(loader: Any) -> Any:
        if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler):
            return loader  # shuffled, custom or already distributed: Lightning's choice stands
        if loader.batch_size is None:
            return loader
        sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        return DataLoader(loader.dataset, sampler=sampler, **{name: getattr(loader, name) for name in _LOADER_SETTINGS})

    def wrapped() -> Any:
        loaders = make()
        if isinstance(loaders, (list, tuple)):
            return type(loaders)(rebuild(loader) for loader in loaders)
        if isinstance(loaders, dict):
            return {key: rebuild(loader) for key, loader in loaders.items()}
        return rebuild(loaders)

    return wrapped


def unpadded_eval_dataloaders(datamodule: Any, num_replicas: int, rank: int) -> Callable[[], None]:
    """Make a datamodule's validation, test and predict dataloaders split their samples without repeats.

    Lightning keeps a dataloader's sampler when it is already a ``DistributedSampler``, so each sample is scored
    by exactly one rank and the gathered metrics are those of one process.

    Args:
        datamodule: The trainer's datamodule (its instance methods are wrapped).
        num_replicas: Number of ranks.
        rank: This rank.

    Returns:
        A function that restores the datamodule's own methods.
    """
    wrapped = []
    for name in EVAL_DATALOADERS:
        if name in vars(datamodule) or not callable(getattr(datamodule, name, None)):
            continue
        setattr(datamodule, name, _unpadded(getattr(datamodule, name), num_replicas, rank))
        wrapped.append(name)

    def restore() -> None:
        for name in wrapped:
            vars(datamodule).pop(name, None)

    return restore
