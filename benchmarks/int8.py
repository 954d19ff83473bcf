# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""INT8 (``int8_ptq``) vs float32 OpenVINO IR of an RGB + 3D BTM: detection quality, score drift and latency.

For each generated category (``anomalib_btm.data.synthetic``, one object shape each): fits a BTM (default k-NN FPFH)
on its training split, exports the float IR (``to_openvino``, FPFH computed by ``BTMInferencer``) and the INT8 IR
(``compression_type=int8_ptq``), calibrated on ``--calibration`` held-out normal samples of the same shape (another
seed; NNCF sees the image and the FPFH map of each), then scores the test split with both IRs in
:class:`~anomalib_btm.deploy.BTMInferencer`: image AUROC, pixel AUPRO (FPR ≤ 0.3, as the BTM evaluator), the largest
change of a normalised score, label agreement, and batch-1 latency from the files (alternating rounds).

Without internet the backbone has random weights (``pre_trained=False``): the RGB features are then weak and the
absolute AUROC says little about a real deployment; what this measures is how much INT8 moves the float IR's
results on the same features, and what it saves in time.

    python benchmarks/int8.py                                        # 2 shapes, wide_resnet50_2, 224², 300 calib
    python benchmarks/int8.py --shapes bagel --backbone resnet18 --image-size 112 --calibration 300   # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["bagel", "dome"], help="one generated category per shape")
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-test-good", type=int, default=10)
    parser.add_argument("--n-test-per-defect", type=int, default=4)
    parser.add_argument("--calibration", type=int, default=300, help="held-out normal samples for INT8 calibration")
    parser.add_argument("--repeats", type=int, default=10, help="alternating latency rounds")
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from anomalib.data import MVTec3D
    from anomalib.deploy.export import CompressionType
    from anomalib.engine import Engine
    from anomalib.metrics.aupro import _AUPRO
    from torchmetrics.functional.classification import binary_auroc

    from anomalib_btm import BTM
    from anomalib_btm.data import generate_category
    from anomalib_btm.deploy import BTMInferencer

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="btm_int8_bench_"))
    root = work / "MVTec3D"
    size = args.image_size
    rows = []
    for index, shape in enumerate(args.shapes):
        category = f"int8_{shape}"
        counts = {"n_train": args.n_train, "n_test_good": args.n_test_good, "n_test_per_defect": args.n_test_per_defect}
        generate_category(root, category, n_validation=0, image_size=size, seed=10 + index, shape=shape, **counts)
        # Held-out normal samples of the same shape (another seed) as the calibration split: the validation split
        # drawn from their training split (normal samples only). (anomalib's MVTec3D needs an anomalous test sample.)
        counts = {"n_train": args.calibration + 4, "n_test_good": 1, "n_test_per_defect": 1}
        generate_category(root, f"{category}_calibration", n_validation=0, image_size=size, seed=100 + index,
                          shape=shape, defects=("dent",), **counts)  # fmt: skip
        datamodule = MVTec3D(root=root, category=category, num_workers=0, train_batch_size=4, eval_batch_size=4)
        calibration = MVTec3D(root=root, category=f"{category}_calibration", num_workers=0, eval_batch_size=1,
                              val_split_mode="from_train", val_split_ratio=(args.calibration + 0.5) / counts["n_train"],
                              seed=0)  # fmt: skip
        torch.manual_seed(0)
        np.random.seed(0)
        model = BTM(backbone=args.backbone, pre_trained=False, modality="rgb+xyz",
                    pre_processor=BTM.configure_pre_processor((size, size)))  # fmt: skip
        Engine(default_root_dir=work / "results", logger=False, enable_progress_bar=False).fit(
            model=model, datamodule=datamodule
        )
        model.eval()
        float_xml = model.to_openvino(work / category / "float")
        start = time.perf_counter()
        int8_xml = model.to_openvino(
            work / category / "int8", compression_type=CompressionType.INT8_PTQ, datamodule=calibration
        )
        quantize_s = time.perf_counter() - start
        calibration.setup("fit")
        calibrated = len(calibration.val_dataloader().dataset)
        log(f"{category}: int8_ptq on {calibrated} calibration samples in {quantize_s:.0f} s")
        inferencers = {"float32": BTMInferencer(float_xml), "int8": BTMInferencer(int8_xml)}

        datamodule.setup("test")
        scores: dict[str, list[np.ndarray]] = {name: [] for name in inferencers}
        labels: dict[str, list[np.ndarray]] = {name: [] for name in inferencers}
        maps: dict[str, list[torch.Tensor]] = {name: [] for name in inferencers}
        gt_labels, gt_masks, files = [], [], []
        for batch in datamodule.test_dataloader():
            paths = zip(batch.image_path, batch.depth_path, strict=True)
            files += [(Path(image), Path(cloud)) for image, cloud in paths]
            gt_labels.append(batch.gt_label.int())
            gt_masks.append(batch.gt_mask.int())
            for name, inferencer in inferencers.items():
                result = inferencer.predict(batch.image, batch.depth_map)
                scores[name].append(np.array(result.pred_score, dtype=np.float32).reshape(-1))
                labels[name].append(np.array(result.pred_label).reshape(-1))
                maps[name].append(torch.tensor(np.array(result.anomaly_map)).reshape(batch.gt_mask.shape))
        quality = {}
        for name in inferencers:
            aupro = _AUPRO(fpr_limit=0.3)
            aupro.update(torch.cat(maps[name]), torch.cat(gt_masks))
            image_auroc = binary_auroc(torch.from_numpy(np.concatenate(scores[name])), torch.cat(gt_labels))
            quality[name] = (float(image_auroc), float(aupro.compute()))
        drift = float(np.abs(np.concatenate(scores["int8"]) - np.concatenate(scores["float32"])).max())
        agree = float((np.concatenate(labels["int8"]) == np.concatenate(labels["float32"])).mean())

        latency: dict[str, list[float]] = {name: [] for name in inferencers}
        for inferencer in inferencers.values():  # warm-up
            inferencer.predict(*files[0])
        for round_index in range(args.repeats):
            image, cloud = files[round_index % len(files)]
            for name, inferencer in inferencers.items():
                inferencer.predict(image, cloud)  # untimed: let the other model's worker threads settle
                start = time.perf_counter()
                inferencer.predict(image, cloud)
                latency[name].append((time.perf_counter() - start) * 1000)
        medians = {name: statistics.median(values) for name, values in latency.items()}
        rows.append((shape, calibrated, len(files), quality, drift, agree, medians))
        log(f"{category}: {quality}, drift {drift:.2e}, labels {agree:.3f}, latency {medians}")

    lines = [
        f"RGB + 3D BTM, backbone {args.backbone} (random weights: no internet), {size}×{size}, {args.n_train} training "
        "samples per category; INT8 = int8_ptq calibrated on held-out normal samples; latency: batch 1 from the "
        f"files, median of {args.repeats} alternating rounds, {torch.get_num_threads()} threads.",
        "",
        "| category (shape) | calibration samples | test samples | IR | image AUROC | pixel AUPRO (0.3) | "
        "max abs(d score) vs float | labels equal | latency (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, calibrated, tested, quality, drift, agree, medians in rows:
        for name in ("float32", "int8"):
            auroc, aupro = quality[name]
            delta = "" if name == "float32" else f"{drift:.2e}"
            equal = "" if name == "float32" else f"{agree:.1%}"
            lines.append(
                f"| {shape} | {calibrated} | {tested} | {name} | {auroc:.3f} | {aupro:.3f} | {delta} | {equal} | "
                f"{medians[name]:.0f} ({medians[name] / medians['float32']:.2f}×) |"
            )
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
