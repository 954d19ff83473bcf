# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Per-sample latency of exported models: BTM RGB-only and RGB + 3D vs anomalib's PatchCore, PyTorch vs OpenVINO.

Fits each model on the same generated category (``anomalib_btm.data.synthetic``), exports it to OpenVINO IR with
``to_openvino`` and times batch-1 inference of the PyTorch module (``model(image[, xyz])``, the whole pipeline) and
of the IR (float32, see ``anomalib_btm.deploy.inferencer``) on the test images, all in this process. PatchCore uses
the same backbone and layers and the same coreset ratio, so the ratio column isolates what BTM adds (FPFH, the
33 extra bank dimensions). Prints a Markdown table; thread count is whatever torch/OpenVINO use on this machine.

    python benchmarks/export.py                               # wide_resnet50_2 (random weights: latency only)
    python benchmarks/export.py --backbone resnet18 --image-size 112 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up (OpenVINO's first inference, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs="+", default=["layer2", "layer3"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    import openvino as ov
    import torch
    from anomalib.data import MVTec3D
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    from anomalib_btm import BTM
    from anomalib_btm.data import generate_category
    from anomalib_btm.deploy.inferencer import F32_CONFIG

    work = Path(tempfile.mkdtemp(prefix="btm_export_bench_"))
    root = work / "MVTec3D"
    size = args.image_size
    generate_category(root, "bench", n_train=args.n_train, n_validation=0, n_test_good=2, n_test_per_defect=1,
                      defects=("dent",), image_size=size, seed=0)  # fmt: skip
    datamodule = MVTec3D(root=root, category="bench", num_workers=0, train_batch_size=4, eval_batch_size=1)
    datamodule.setup("test")
    sample = next(iter(datamodule.test_dataloader()))
    image, xyz = sample.image[:1], sample.depth_map[:1]
    pre_processor = BTM.configure_pre_processor((size, size))
    common = {"backbone": args.backbone, "layers": tuple(args.layers), "pre_trained": False}
    models = {
        "PatchCore": (Patchcore(**common, coreset_sampling_ratio=0.1, pre_processor=pre_processor), False),
        "BTM RGB": (BTM(**common, modality="rgb", pre_processor=pre_processor), False),
        "BTM RGB+3D": (BTM(**common, modality="rgb+xyz", fpfh_backend="torch", pre_processor=pre_processor), True),
    }
    core = ov.Core()
    rows: dict[str, tuple[float, float]] = {}
    for name, (model, uses_xyz) in models.items():
        torch.manual_seed(0)
        engine = Engine(default_root_dir=work / "results", logger=False, enable_progress_bar=False)
        engine.fit(model=model, datamodule=datamodule)
        model.eval()
        inputs = (image, xyz) if uses_xyz else (image,)
        with torch.no_grad():
            torch_ms = _median_ms(lambda m=model, i=inputs: m(*i), args.repeats)
        start = time.perf_counter()
        folder = work / name.replace(" ", "_").replace("+", "")
        if isinstance(model, Patchcore):
            # anomalib 2.7 exports PatchCore with its batch fixed at the example size (2), which batch 1 cannot run:
            # export it with a static (1, 3, size, size) input instead.
            xml = model.to_openvino(folder, input_size=(size, size), onnx_kwargs={"dynamic_shapes": None})
        else:
            xml = model.to_openvino(folder)
        export_s = time.perf_counter() - start
        feed = [tensor.numpy() for tensor in inputs]
        ir = core.read_model(xml)  # fixed to the batch-1 shapes, as BTMInferencer compiles it (static_shapes=True)
        ir.reshape({port.any_name: list(array.shape) for port, array in zip(ir.inputs, feed, strict=True)})
        compiled = core.compile_model(ir, "CPU", F32_CONFIG)
        openvino_ms = _median_ms(lambda c=compiled, f=feed: c(f), args.repeats)
        rows[name] = (torch_ms, openvino_ms)
        print(f"done: {name}: torch {torch_ms:.0f} ms, OpenVINO {openvino_ms:.0f} ms, export {export_s:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    reference = rows["PatchCore"][1]
    lines = [
        f"Batch 1, {size}×{size}, backbone {args.backbone} {'+'.join(args.layers)}, {torch.get_num_threads()} torch "
        f"threads, median of {args.repeats}; OpenVINO CPU in float32, IRs compiled for the batch-1 input shapes "
        "(BTMInferencer's default; anomalib's dynamic PatchCore export cannot run batch 1, so PatchCore is exported "
        "static).",
        "",
        "| model | PyTorch (ms) | OpenVINO (ms) | OpenVINO speed-up | OpenVINO latency vs PatchCore |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (torch_ms, openvino_ms) in rows.items():
        lines.append(
            f"| {name} | {torch_ms:.0f} | {openvino_ms:.0f} | {torch_ms / openvino_ms:.1f}× | "
            f"{openvino_ms / reference:.2f}× |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
