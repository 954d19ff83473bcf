# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Fit and test BTM through anomalib's Engine on one process or on Lightning DDP; used by ``scale.py`` and the tests.

Lightning's DDP launcher starts the other ranks by running this script again, so it must be a file. Every rank
writes ``OUT/rank<r>.json`` (training samples and feature-store bytes it held, fit time, peak RSS); rank 0 also
writes ``OUT/bank.pt`` (the memory bank), ``OUT/metrics.json`` (test metrics) and ``OUT/thresholds.json``.

Usage::

    python benchmarks/ddp_fit.py ROOT CATEGORY OUT [--devices 2 --strategy ddp] [--accelerator cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
from anomalib.data import MVTec3D
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_btm import BTM


def main() -> None:
    """Parse the arguments, fit, test and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset root (MVTec 3D-AD layout)")
    parser.add_argument("category")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96, help="model input size (224 is the paper's)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--layers", nargs="+", default=["layer2", "layer3"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--coreset-method", default="pruned")
    args = parser.parse_args()
    seed_everything(args.seed)
    datamodule = MVTec3D(
        root=args.root,
        category=args.category,
        num_workers=0,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        val_split_mode="from_test",
        val_split_ratio=0.5,
        seed=0,
    )
    model = BTM(
        backbone=args.backbone,
        layers=args.layers,
        pre_trained=False,
        modality="rgb+xyz",
        coreset_method=args.coreset_method,
        pre_processor=BTM.configure_pre_processor((args.image_size, args.image_size)),
        visualizer=False,
    )
    held: dict[str, int] = {}
    subsample = model.model.subsample_embedding

    def subsample_embedding(*args: object, **kwargs: object) -> None:
        """Record what this rank holds when the coreset starts (sampler padding already dropped)."""
        held["samples"] = model.model.embedding_store.samples
        held["store_bytes"] = model.model.embedding_store.nbytes
        subsample(*args, **kwargs)

    model.model.subsample_embedding = subsample_embedding  # type: ignore[method-assign]
    engine = Engine(
        default_root_dir=args.out / "run",
        logger=False,
        enable_progress_bar=False,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")) * args.devices
    record = {
        "rank": rank,
        "fit_s": fit_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **held,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        torch.save(model.model.memory_bank.cpu(), args.out / "bank.pt")
        (args.out / "metrics.json").write_text(json.dumps({k: float(v) for k, v in metrics[0].items()}))
        thresholds = {
            "image": float(model.post_processor.image_threshold),
            "pixel": float(model.post_processor.pixel_threshold),
        }
        (args.out / "thresholds.json").write_text(json.dumps(thresholds))


if __name__ == "__main__":
    main()
