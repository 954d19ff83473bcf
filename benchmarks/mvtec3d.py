# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Per-category benchmark: BTM RGB + 3D, RGB only, 3D only, the BTF preset and PatchCore, through anomalib's Engine.

Prints a Markdown table of I-AUROC, AUPRO@0.3 and P-AUROC per category and configuration, their mean, and the wall
time per category. Without ``--data-root`` it runs on generated data (``anomalib_btm.data.synthetic``, one category
per ``--generated`` seed, per ``--shapes`` shape) — say so when quoting the numbers; with ``--data-root`` it runs on
the real MVTec 3D-AD. ``--seeds N`` repeats every fit with torch and NumPy seeded 0..N-1 (the coreset's random
projection and first pick) on the same data and prints mean ± standard deviation over the seeds.

    python benchmarks/mvtec3d.py                                    # generated data, offline weights
    python benchmarks/mvtec3d.py --data-root ./datasets/MVTec3D --categories bagel cookie --weights imagenet
    python benchmarks/mvtec3d.py --generated 4 --seeds 3 --configs "BTM RGB" "PatchCore RGB" \
        --model-args '{"feature_upsampling": "bilinear"}'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    # anomalib's PatchCore with the same backbone, layers, coreset ratio, input size (BTM's pre-processor: resize to
    # 224, no crop) and evaluator; its own scoring (reweighted image score, 1-NN map) and bilinear upsampling.
    "PatchCore RGB": {"model": "patchcore"},
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


def patchcore(backbone: dict[str, object]) -> object:
    """PatchCore (anomalib's) with BTM's backbone, layers, input size and evaluator (weights from a local file)."""
    from anomalib.models import Patchcore

    from anomalib_btm import BTM
    from anomalib_btm.models.btm.feature_branches import load_backbone_weights

    weights = backbone["pre_trained"]
    model = Patchcore(
        backbone=str(backbone["backbone"]),
        layers=list(backbone["layers"]),  # type: ignore[call-overload]
        pre_trained=weights is True,
        coreset_sampling_ratio=0.1,
        pre_processor=BTM.configure_pre_processor(),
        evaluator=BTM.configure_evaluator(),
        visualizer=False,
    )
    if isinstance(weights, str):
        load_backbone_weights(model.model.feature_extractor.feature_extractor, weights, str(backbone["backbone"]))
    return model


def evaluate(
    root: Path, category: str, config: dict[str, object], args: argparse.Namespace, work: Path, seed: int = 0
) -> dict:
    """Fit and test one configuration on one category with torch and NumPy seeded; returns the test metrics."""
    import numpy as np
    import torch
    from anomalib.data import MVTec3D
    from anomalib.engine import Engine

    from anomalib_btm import BTM

    torch.manual_seed(seed)
    np.random.seed(seed)  # the coreset's first pick comes from NumPy's global generator (BTM and PatchCore)
    datamodule = MVTec3D(
        root=root, category=category, num_workers=args.num_workers, train_batch_size=8, eval_batch_size=8
    )
    backbone = backbone_args(args.weights, work)
    if config.get("model") == "patchcore":
        model = patchcore(backbone)
    else:
        # No visualizer: overlay images cost time and change no metric.
        kwargs = {**backbone, "fpfh_backend": args.fpfh_backend, "fpfh_options": args.fpfh_options, "visualizer": False}
        model = BTM(**{**kwargs, **config, **args.model_args})
    engine = Engine(default_root_dir=work / "results", logger=False, enable_progress_bar=False, accelerator="auto")
    engine.fit(model=model, datamodule=datamodule)
    return engine.test(model=model, datamodule=datamodule, verbose=False)[0]


def summary(values: list[float], bold: bool = False) -> str:
    """``mean`` for one value, ``mean ± std`` (sample standard deviation) for several."""
    mean = statistics.fmean(values)
    text = f"**{mean:.3f}**" if bold else f"{mean:.3f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.3f}"


def json_object(text: str) -> dict:
    """A JSON object from the command line (``--model-args``)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        msg = f'expected a JSON object such as \'{{"feature_upsampling": "bilinear"}}\', got {text!r}'
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=None, help="MVTec 3D-AD root (default: generated data)")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--generated", type=int, default=2, help="generated categories (without --data-root)")
    parser.add_argument("--n-train", type=int, default=20, help="generated training samples per category")
    parser.add_argument("--n-test-good", type=int, default=8, help="generated good test samples per category")
    parser.add_argument("--n-test-defect", type=int, default=3, help="generated test samples per defect type")
    parser.add_argument("--image-size", type=int, default=224, help="generated image size")
    parser.add_argument(
        "--sensor-size", type=int, nargs=2, metavar=("H", "W"), default=None, help="generated (height, width)"
    )
    parser.add_argument("--shapes", nargs="+", default=None, help="generated object shapes (categories <shape>_<seed>)")
    parser.add_argument(
        "--configs", nargs="+", default=[n for n in CONFIGS if n != "PatchCore RGB"], choices=list(CONFIGS)
    )
    parser.add_argument(
        "--model-args",
        type=json_object,
        default={},
        help='extra BTM arguments as JSON (BTM configurations only), e.g. \'{"feature_upsampling": "bilinear"}\'',
    )
    parser.add_argument("--seeds", type=int, default=1, help="fits per category and configuration, seeds 0..N-1")
    parser.add_argument("--weights", choices=["lite0", "imagenet", "random"], default="lite0")
    parser.add_argument("--fpfh-backend", default="torch")
    parser.add_argument(
        "--fpfh-options", type=json.loads, default=None, help="torch FPFH options as JSON, e.g. '{\"window\": 13}'"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}.")

    work = Path(tempfile.mkdtemp(prefix="btm_bench_"))
    if args.data_root is None:
        from anomalib_btm.data import generate_category

        root = work / "MVTec3D"
        image_size = tuple(args.sensor_size) if args.sensor_size else args.image_size
        # (category, seed, generator arguments); `shape` is passed only when asked for.
        plan: list[tuple[str, int, dict[str, object]]] = (
            [(f"{shape}_{seed}", seed, {"shape": shape}) for shape in args.shapes for seed in range(args.generated)]
            if args.shapes
            else [
                (c, seed, {})
                for seed, c in enumerate(args.categories or [f"synthetic_{s}" for s in range(args.generated)])
            ]
        )
        for category, seed, extra in plan:
            counts = {"n_train": args.n_train, "n_test_good": args.n_test_good, "n_test_per_defect": args.n_test_defect}
            generate_category(root, category, n_validation=0, image_size=image_size, seed=seed, **counts, **extra)
        categories = [category for category, _, _ in plan]
        size = "x".join(map(str, args.sensor_size)) if args.sensor_size else f"{args.image_size}"
        shapes = f", shapes {', '.join(args.shapes)}" if args.shapes else ""
        source = f"generated data ({len(categories)} synthetic categories{shapes}, {size} px, not MVTec 3D-AD)"
    else:
        root = args.data_root
        if not root.is_dir():
            parser.error(f"--data-root {root} does not exist; download MVTec 3D-AD or omit it for generated data.")
        categories = args.categories or [c for c in MVTEC3D_CATEGORIES if (root / c).is_dir()]
        source = f"MVTec 3D-AD at {root}"

    seeds = range(args.seeds)
    results: dict[tuple[str, str, int], dict] = {}
    seconds: dict[tuple[str, str], float] = {}
    for category in categories:
        for name in args.configs:
            start = time.perf_counter()
            for seed in seeds:
                results[category, name, seed] = evaluate(root, category, CONFIGS[name], args, work, seed)
            seconds[category, name] = time.perf_counter() - start
            print(f"done: {category} / {name} in {seconds[category, name]:.0f} s", file=sys.stderr, flush=True)

    fpfh = args.fpfh_backend + (f" {json.dumps(args.fpfh_options)}" if args.fpfh_options else "")
    model_args = f"; BTM arguments: {json.dumps(args.model_args)}" if args.model_args else ""
    spread = (
        f"; mean ± sample std over seeds 0..{args.seeds - 1} (mean row: of the per-seed means over categories)"
        if args.seeds > 1
        else ""
    )
    lines = [f"Data: {source}; backbone weights: {args.weights}; FPFH: {fpfh}{model_args}{spread}.", ""]
    header = "| category | " + " | ".join(f"{n} {m}" for n in args.configs for m, _ in METRICS) + " | time (s) |"
    lines += [header, "|" + " --- |" * (2 + len(args.configs) * len(METRICS))]
    for category in categories:
        cells = [summary([results[category, n, s][key] for s in seeds]) for n in args.configs for _, key in METRICS]
        total = sum(seconds[category, n] for n in args.configs)
        lines.append(f"| {category} | " + " | ".join(cells) + f" | {total:.0f} |")
    # Mean over categories, per seed; its spread over seeds.
    means = [
        summary([statistics.fmean(results[c, n, s][key] for c in categories) for s in seeds], bold=True)
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
