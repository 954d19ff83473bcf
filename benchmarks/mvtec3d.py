# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Per-category benchmark: BTM RGB + 3D, RGB only, 3D only and the BTF preset, through anomalib's Engine.

Prints a Markdown table of I-AUROC, AUPRO@0.3 and P-AUROC per category and configuration, their mean, and the wall
time per category. Without ``--data-root`` it runs on generated data (``anomalib_btm.data.synthetic``, one category
per ``--generated`` seed) — say so when quoting the numbers; with ``--data-root`` it runs on the real MVTec 3D-AD.

    python benchmarks/mvtec3d.py                                    # generated data, offline weights
    python benchmarks/mvtec3d.py --data-root ./datasets/MVTec3D --categories bagel cookie --weights imagenet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MVTEC3D_CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
CONFIGS: dict[str, dict[str, object]] = {
    "BTM RGB+3D": {"modality": "rgb+xyz"},
    "BTM RGB": {"modality": "rgb"},
    "BTM 3D": {"modality": "xyz"},
    "BTF RGB+3D": {"modality": "rgb+xyz", "preset": "btf"},
}
METRICS = (("I-AUROC", "image_AUROC"), ("AUPRO@0.3", "pixel_AUPRO"), ("P-AUROC", "pixel_AUROC"))


def backbone_args(weights: str, weights_dir: Path) -> dict[str, object]:
    """Backbone arguments: timm's ImageNet wide_resnet50_2 (needs internet) or the offline EfficientNet-Lite0."""
    if weights == "imagenet":
        return {"backbone": "wide_resnet50_2", "layers": ("layer2", "layer3"), "pre_trained": True}
    if weights == "random":
        return {"backbone": "wide_resnet50_2", "layers": ("layer2", "layer3"), "pre_trained": False}
    import torch

    from anomalib_btm.weights import (
        EFFICIENTNET_LITE0_BACKBONE,
        EFFICIENTNET_LITE0_LAYERS,
        efficientnet_lite0_state_dict,
    )

    path = weights_dir / f"{EFFICIENTNET_LITE0_BACKBONE}.pth"
    if not path.is_file():
        torch.save(efficientnet_lite0_state_dict(), path)
    return {"backbone": EFFICIENTNET_LITE0_BACKBONE, "layers": EFFICIENTNET_LITE0_LAYERS, "pre_trained": str(path)}


def evaluate(root: Path, category: str, config: dict[str, object], args: argparse.Namespace, work: Path) -> dict:
    """Fit and test one configuration on one category; returns the test metrics."""
    import torch
    from anomalib.data import MVTec3D
    from anomalib.engine import Engine

    from anomalib_btm import BTM

    torch.manual_seed(0)
    datamodule = MVTec3D(
        root=root, category=category, num_workers=args.num_workers, train_batch_size=8, eval_batch_size=8
    )
    model = BTM(
        **backbone_args(args.weights, work), fpfh_backend=args.fpfh_backend, fpfh_options=args.fpfh_options, **config
    )
    engine = Engine(default_root_dir=work / "results", logger=False, enable_progress_bar=False, accelerator="auto")
    engine.fit(model=model, datamodule=datamodule)
    return engine.test(model=model, datamodule=datamodule, verbose=False)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=None, help="MVTec 3D-AD root (default: generated data)")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--generated", type=int, default=2, help="generated categories (without --data-root)")
    parser.add_argument("--n-train", type=int, default=20, help="generated training samples per category")
    parser.add_argument("--n-test-good", type=int, default=8, help="generated good test samples per category")
    parser.add_argument("--n-test-defect", type=int, default=3, help="generated test samples per defect type")
    parser.add_argument("--image-size", type=int, default=224, help="generated image size")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--weights", choices=["lite0", "imagenet", "random"], default="lite0")
    parser.add_argument("--fpfh-backend", default="torch")
    parser.add_argument(
        "--fpfh-options", type=json.loads, default=None, help="torch FPFH options as JSON, e.g. '{\"window\": 13}'"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="btm_bench_"))
    if args.data_root is None:
        from anomalib_btm.data import generate_category

        root = work / "MVTec3D"
        categories = args.categories or [f"synthetic_{seed}" for seed in range(args.generated)]
        for seed, category in enumerate(categories):
            generate_category(root, category, n_train=args.n_train, n_validation=0, n_test_good=args.n_test_good,
                              n_test_per_defect=args.n_test_defect, image_size=args.image_size, seed=seed)  # fmt: skip
        source = f"generated data ({len(categories)} synthetic categories, not MVTec 3D-AD)"
    else:
        root = args.data_root
        if not root.is_dir():
            parser.error(f"--data-root {root} does not exist; download MVTec 3D-AD or omit it for generated data.")
        categories = args.categories or [c for c in MVTEC3D_CATEGORIES if (root / c).is_dir()]
        source = f"MVTec 3D-AD at {root}"

    results: dict[tuple[str, str], dict] = {}
    seconds: dict[tuple[str, str], float] = {}
    for category in categories:
        for name in args.configs:
            start = time.perf_counter()
            results[category, name] = evaluate(root, category, CONFIGS[name], args, work)
            seconds[category, name] = time.perf_counter() - start
            print(f"done: {category} / {name} in {seconds[category, name]:.0f} s", file=sys.stderr, flush=True)

    fpfh = args.fpfh_backend + (f" {json.dumps(args.fpfh_options)}" if args.fpfh_options else "")
    lines = [f"Data: {source}; backbone weights: {args.weights}; FPFH: {fpfh}.", ""]
    header = "| category | " + " | ".join(f"{n} {m}" for n in args.configs for m, _ in METRICS) + " | time (s) |"
    lines += [header, "|" + " --- |" * (2 + len(args.configs) * len(METRICS))]
    for category in categories:
        cells = [f"{results[category, n][key]:.3f}" for n in args.configs for _, key in METRICS]
        total = sum(seconds[category, n] for n in args.configs)
        lines.append(f"| {category} | " + " | ".join(cells) + f" | {total:.0f} |")
    means = [
        f"**{sum(results[c, n][key] for c in categories) / len(categories):.3f}**"
        for n in args.configs
        for _, key in METRICS
    ]
    lines.append("| mean | " + " | ".join(means) + " | |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
