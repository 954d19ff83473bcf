# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTM on several processes: the distributed coreset (gloo, 2 processes) and Lightning DDP through the Engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch import Trainer
from torch import distributed as dist

from anomalib_btm import BTM
from anomalib_btm.models.btm.distributed import distributed_memory_bank, padded_tail, unpadded_eval_dataloaders
from anomalib_btm.models.btm.memory_bank import row_positions, sample_positions, select_memory_bank

REPO = Path(__file__).resolve().parents[3]
ROWS = 48  # patches per sample
ORDER = [4, 7, 1, 0, 8, 2, 6, 3, 5]  # the order a shuffling sampler delivers the nine samples in


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _samples() -> tuple[torch.Tensor, list[str]]:
    """Nine samples of ``ROWS`` clustered patch features (each sample around its own centre), keyed by name."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(9, 1, 40, generator=generator) * 3
    features = centres + torch.randn(9, ROWS, 40, generator=generator)
    return features, [f"train/good/{i:03d}.png" for i in range(9)]


def _shard_worker(rank: int, world_size: int, port: int, runs: list[list[list[int]]], out: str) -> None:
    """Build the distributed bank of this rank's shard, once per run (module level: spawned processes import it)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        features, keys = _samples()
        for run, shards in enumerate(runs):
            mine = shards[rank]
            local = features[mine].reshape(-1, features.shape[-1]) if mine else torch.empty(0, features.shape[-1])
            try:
                bank = distributed_memory_bank(local, [keys[i] for i in mine], ROWS, 0.05, seed=123)
                torch.save(bank, f"{out}.{run}.{rank}.pt")
            except ValueError as error:
                Path(f"{out}.{run}.{rank}.err").write_text(str(error))
    finally:
        dist.destroy_process_group()


def _single_bank() -> torch.Tensor:
    """The bank one process builds from the samples in ``ORDER`` (rows tagged with their keys)."""
    features, keys = _samples()
    store_keys = [keys[i] for i in ORDER]
    embedding = features[ORDER].reshape(-1, features.shape[-1])
    order = row_positions(sample_positions(store_keys), ROWS)
    return select_memory_bank(embedding, 0.05, seed=123, row_order=order, block_rows=ROWS)


def test_distributed_coreset_equals_single_process(tmp_path: Path) -> None:
    """Two gloo processes holding different shards build, on both ranks, the bank of one process (same rows).

    A second run on the same process group gives rank 1 no sample: every rank stops with a message that says what
    to change.
    """
    runs = [[ORDER[0::2], ORDER[1::2]], [list(range(9)), []]]
    mp.spawn(_shard_worker, args=(2, _free_port(), runs, str(tmp_path / "bank")), nprocs=2)
    single = _single_bank()
    for rank in range(2):
        bank = torch.load(tmp_path / f"bank.0.{rank}.pt")
        assert bank.shape == single.shape == (int(9 * ROWS * 0.05), 40)
        assert torch.equal(bank, single)
        message = (tmp_path / f"bank.1.{rank}.err").read_text()
        assert "rank(s) [1] received no training sample" in message
        assert "--trainer.devices" in message
    # the single-process bank does not depend on the order the samples arrived in
    features, keys = _samples()
    reversed_order = ORDER[::-1]
    order = row_positions(sample_positions([keys[i] for i in reversed_order]), ROWS)
    again = select_memory_bank(
        features[reversed_order].reshape(-1, 40), 0.05, seed=123, row_order=order, block_rows=ROWS
    )
    assert torch.equal(again, single)


@pytest.mark.parametrize(
    ("size", "world_size", "expected"),
    [(7, 2, [0, 1]), (8, 2, [0, 0]), (10, 4, [0, 0, 1, 1]), (3, 3, [0, 0, 0])],
)
def test_padded_tail(size: int, world_size: int, expected: list[int]) -> None:
    """The repeated sample is the last one of the ranks whose shard runs past the dataset."""
    per_rank = -(-size // world_size)
    assert [padded_tail(size, world_size, rank, per_rank) for rank in range(world_size)] == expected
    for rank in range(world_size):  # the same rule as torch's DistributedSampler
        sampler = torch.utils.data.DistributedSampler(range(size), world_size, rank, shuffle=False)
        indices = list(sampler)
        assert len(indices) - len(set(range(rank, size, world_size))) == expected[rank]


def test_padded_tail_refuses_a_foreign_sampler() -> None:
    """A shard of another size than the sampler's is named, not silently trimmed."""
    with pytest.raises(ValueError, match=r"Rank 1 extracted 3 training samples.*gives each of the 2 ranks 4 of 7"):
        padded_tail(7, 2, 1, 3)


class _DataModule:
    """The dataloader methods of a datamodule: ordered evaluation sets, a shuffled training set."""

    def __init__(self, size: int) -> None:
        self.size = size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(range(self.size), batch_size=2, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(range(self.size), batch_size=2)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(range(self.size), batch_size=2)


@pytest.mark.parametrize(("size", "world_size"), [(5, 2), (9, 4), (7, 3)])
def test_eval_dataloaders_score_each_sample_once(size: int, world_size: int) -> None:
    """The datamodule's evaluation loaders split the set over the ranks without repeats (torch's sampler would
    repeat samples to even the ranks out); the training loader and the datamodule afterwards stay as they were."""
    shards = []
    for rank in range(world_size):
        datamodule = _DataModule(size)
        restore = unpadded_eval_dataloaders(datamodule, world_size, rank)
        for name in ("val_dataloader", "test_dataloader"):
            loader = getattr(datamodule, name)()
            assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)  # Lightning keeps it
            batches = [int(i) for batch in loader for i in batch]
            assert batches == list(range(rank, size, world_size))
        shards.append(batches)
        assert not isinstance(datamodule.train_dataloader().sampler, torch.utils.data.DistributedSampler)
        restore()
        assert "test_dataloader" not in vars(datamodule)
        assert isinstance(datamodule.test_dataloader().sampler, torch.utils.data.SequentialSampler)
    assert sorted(i for shard in shards for i in shard) == list(range(size))


@pytest.mark.parametrize(
    ("strategy", "model_args", "match"),
    [
        ("ddp_spawn", {}, "ddp_spawn / ddp_fork / ddp_notebook"),
        ("ddp", {"coreset_method": "exact"}, "coreset_method='exact' runs on one process"),
        ("ddp", {"coreset_chunk_size": 1000}, "coreset_chunk_size cannot be combined"),
    ],
)
def test_bad_distributed_combinations_are_refused(strategy: str, model_args: dict, match: str) -> None:
    """Launchers and options that cannot give one bank fail before any work, with the fix in the message."""
    model = BTM(backbone="resnet18", pre_trained=False, **model_args)
    trainer = Trainer(strategy=strategy, devices=2, accelerator="cpu", logger=False)
    model.trainer = trainer
    with pytest.raises(ValueError, match=match):
        model.setup("fit")


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven training samples (the sampler repeats one on rank 1), five validation and five test samples."""
    from anomalib_btm.data import generate_category

    root = tmp_path_factory.mktemp("ddp") / "MVTec3D"
    generate_category(
        root, "odd", n_train=7, n_validation=0, n_test_good=4, n_test_per_defect=3, defects=("dent", "color"),
        image_size=96, seed=2,
    )  # fmt: skip
    return root


def _engine_run(root: Path, out: Path, devices: int) -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "ddp_fit.py"), str(root), "odd", str(out)]
    if devices > 1:
        command += ["--devices", str(devices), "--strategy", "ddp"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_engine_ddp_two_processes_equal_one(odd_root: Path, tmp_path: Path) -> None:
    """``Engine(strategy="ddp", devices=2)`` on CPU/gloo: the single-process bank, thresholds and test metrics.

    Each rank extracts its own shard (4 + 3 samples, the repeated one dropped), one checkpoint is written, and it
    loads in a single process with the same bank.
    """
    _engine_run(odd_root, tmp_path / "one", 1)
    _engine_run(odd_root, tmp_path / "two", 2)
    one, two = tmp_path / "one", tmp_path / "two"
    single = torch.load(one / "bank.pt")
    assert torch.equal(torch.load(two / "bank.pt"), single)
    assert json.loads((two / "thresholds.json").read_text()) == json.loads((one / "thresholds.json").read_text())
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert metrics_one.keys() == metrics_two.keys() >= {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}
    for name, value in metrics_one.items():
        assert metrics_two[name] == pytest.approx(value, abs=1e-6), name
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in range(2)]
    assert sorted(r["samples"] for r in ranks) == [3, 4]
    assert json.loads((one / "rank0.json").read_text())["samples"] == 7
    checkpoints = list((two / "run").rglob("*.ckpt"))
    assert len(checkpoints) == 1
    loaded = BTM.load_from_checkpoint(checkpoints[0], map_location="cpu")
    assert torch.equal(loaded.model.memory_bank, single)
    assert np.isfinite(single.numpy()).all()
