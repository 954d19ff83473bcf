# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Fit and test BTM through anomalib's Engine on 1 process or on Lightning DDP (CPU, gloo); used by the tests.

Lightning's DDP launcher starts the other ranks by running this script again, so it must be a file. Rank 0 writes
``OUT/bank.pt`` (the memory bank), ``OUT/metrics.json`` (test metrics) and ``OUT/ranks.json`` (per-rank training
samples and peak RSS).

Usage::

    python tests/models/btm/ddp_fit.py ROOT CATEGORY OUT --devices 2 [--strategy ddp] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

import torch
from anomalib.data import MVTec3D
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_btm import BTM


def main() -> None:
    """Parse the arguments, fit, test and write the results (rank 0)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("category")
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    seed_everything(args.seed)
    datamodule = MVTec3D(
        root=args.root,
        category=args.category,
        num_workers=0,
        train_batch_size=2,
        eval_batch_size=2,
        val_split_mode="from_test",
        val_split_ratio=0.5,
        seed=0,
    )
    model = BTM(
        backbone="resnet18",
        pre_trained=False,
        modality="rgb+xyz",
        pre_processor=BTM.configure_pre_processor((args.image_size, args.image_size)),
        visualizer=False,
    )
    engine = Engine(
        default_root_dir=args.out / "run",
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
    )
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {"rank": rank, "peak_rss_mib": peak_mib}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        torch.save(model.model.memory_bank.cpu(), args.out / "bank.pt")
        (args.out / "metrics.json").write_text(json.dumps({k: float(v) for k, v in metrics[0].items()}))
        (args.out / "thresholds.json").write_text(
            json.dumps(
                {
                    "image": float(model.post_processor.image_threshold),
                    "pixel": float(model.post_processor.pixel_threshold),
                }
            )
        )


if __name__ == "__main__":
    main()
