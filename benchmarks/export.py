# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""End-to-end latency of exported models: BTM RGB and RGB + 3D vs anomalib's PatchCore, PyTorch vs OpenVINO.

Fits each model on the same generated category (``anomalib_btm.data.synthetic``), exports it to OpenVINO IR with
``to_openvino`` and times batch-1 inference from the files (PNG and XYZ TIFF read, inference, score and map out), all
in this process, in alternating rounds (every deployment once per round, on the same sample), so that the load of a
shared machine falls on all rows alike. Rows:

* PatchCore: PyTorch and its IR (static 1 × 3 × H × W: anomalib's dynamic PatchCore export cannot run batch 1);
* BTM RGB: PyTorch and its IR in :class:`~anomalib_btm.deploy.BTMInferencer`;
* BTM RGB + 3D (default k-NN FPFH): PyTorch; the IR with the FPFH computed by the inferencer (``fpfh="inferencer"``,
  the default export: the fused CPU kernels, which pool the FPFH to the patch grid as they go, then the IR); the IR
  with the FPFH inside the graph (``fpfh="graph"``, pixel windows); the INT8 IR (``int8_ptq`` of the default export,
  calibrated on the test split: latency only, ``benchmarks/int8.py`` measures its accuracy).

PatchCore uses the same backbone and layers and the same coreset ratio, so the ratio column isolates what BTM adds
(FPFH, the 33 extra bank dimensions). Then the throughput of ``BTMInferencer.predict_many`` (OpenVINO's THROUGHPUT
hint, ``AsyncInferQueue``) on the test folder against ``predict`` one sample after the other. OpenVINO runs in float32
(``INFERENCE_PRECISION_HINT=f32``, BTMInferencer's setting), each IR compiled for the batch-1 input shapes.

    python benchmarks/export.py                               # wide_resnet50_2 (random weights: latency only)
    python benchmarks/export.py --backbone resnet18 --image-size 112 --repeats 5 --no-graph   # quick
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


def _rounds(runs: dict[str, Callable[[int], object]], samples: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each run, in ``repeats`` alternating rounds (sample ``round % samples``)."""
    for run in runs.values():  # warm-up: first inference, allocations, JIT
        run(0)
        run(1 % samples)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(repeats):
        for name, run in runs.items():
            # One untimed call first: the previous deployment's worker threads (OpenMP, TBB, Numba) may still spin
            # for a while after it returns and would slow down the first call of the next one.
            run(index % samples)
            start = time.perf_counter()
            run(index % samples)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--layers", nargs="+", default=["layer2", "layer3"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=16, help="test samples (latency rounds cycle through them)")
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds")
    parser.add_argument("--no-graph", action="store_true", help="skip the fpfh='graph' export (slow to export)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8_ptq export")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)

    import numpy as np
    import openvino as ov
    import torch
    from anomalib.data import MVTec3D
    from anomalib.deploy.export import CompressionType
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    from anomalib_btm import BTM
    from anomalib_btm.data import generate_category
    from anomalib_btm.deploy import BTMInferencer
    from anomalib_btm.deploy.inferencer import F32_CONFIG, load_image, load_xyz

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="btm_export_bench_"))
    root = work / "MVTec3D"
    size = args.image_size
    good = args.n_test // 2
    generate_category(root, "bench", n_train=args.n_train, n_validation=0, n_test_good=good,
                      n_test_per_defect=args.n_test - good, defects=("dent",), image_size=size, seed=0)  # fmt: skip
    datamodule = MVTec3D(root=root, category="bench", num_workers=0, train_batch_size=4, eval_batch_size=1)
    images = sorted((root / "bench" / "test").glob("*/rgb/*.png"))
    clouds = [image.parent.parent / "xyz" / f"{image.stem}.tiff" for image in images]
    pre_processor = BTM.configure_pre_processor((size, size))
    common = {"backbone": args.backbone, "layers": tuple(args.layers), "pre_trained": False}
    patchcore = Patchcore(**common, coreset_sampling_ratio=0.1, pre_processor=pre_processor)
    btm_rgb = BTM(**common, modality="rgb", pre_processor=pre_processor)
    btm = BTM(**common, modality="rgb+xyz", pre_processor=pre_processor)
    for model in (patchcore, btm_rgb, btm):
        torch.manual_seed(0)
        np.random.seed(0)
        engine = Engine(default_root_dir=work / "results", logger=False, enable_progress_bar=False)
        engine.fit(model=model, datamodule=datamodule)
        model.eval()

    export_seconds: dict[str, float] = {}

    def export(name: str, make: Callable[[], Path]) -> Path:
        start = time.perf_counter()
        path = make()
        export_seconds[name] = time.perf_counter() - start
        log(f"exported {name} in {export_seconds[name]:.0f} s")
        return path

    # anomalib 2.7 exports PatchCore with its batch fixed at the example size (2), which batch 1 cannot run: export it
    # with a static (1, 3, size, size) input instead.
    patchcore_xml = export(
        "PatchCore",
        lambda: patchcore.to_openvino(work / "pc", input_size=(size, size), onnx_kwargs={"dynamic_shapes": None}),
    )
    rgb_xml = export("BTM RGB", lambda: btm_rgb.to_openvino(work / "rgb"))
    btm_xml = export("BTM RGB+3D", lambda: btm.to_openvino(work / "rgbxyz"))
    graph_xml = None
    if not args.no_graph:
        graph_xml = export("BTM RGB+3D graph", lambda: btm.to_openvino(work / "graph", onnx_kwargs={"fpfh": "graph"}))
    int8_xml = None
    if not args.no_int8:
        calibration = MVTec3D(root=root, category="bench", num_workers=0, train_batch_size=1, eval_batch_size=1)
        int8_xml = export(
            "BTM RGB+3D int8",
            lambda: btm.to_openvino(work / "int8", compression_type=CompressionType.INT8_PTQ, datamodule=calibration),
        )

    core = ov.Core()
    patchcore_ir = core.read_model(patchcore_xml)
    patchcore_compiled = core.compile_model(patchcore_ir, "CPU", F32_CONFIG)
    rgb_inferencer = BTMInferencer(rgb_xml)
    btm_inferencer = BTMInferencer(btm_xml)

    def torch_run(model: torch.nn.Module, uses_xyz: bool) -> Callable[[int], object]:
        def run(index: int) -> object:
            image = torch.from_numpy(load_image(images[index]))
            with torch.no_grad():
                if uses_xyz:
                    return model(image, torch.from_numpy(load_xyz(clouds[index])))
                return model(image)

        return run

    runs: dict[str, Callable[[int], object]] = {
        "PatchCore | PyTorch": torch_run(patchcore, uses_xyz=False),
        "PatchCore | OpenVINO IR": lambda i: patchcore_compiled(load_image(images[i])),
        "BTM RGB | PyTorch": torch_run(btm_rgb, uses_xyz=False),
        "BTM RGB | OpenVINO IR": lambda i: rgb_inferencer.predict(images[i]),
        "BTM RGB + 3D | PyTorch": torch_run(btm, uses_xyz=True),
        "BTM RGB + 3D | OpenVINO IR, FPFH in BTMInferencer (default)": lambda i: btm_inferencer.predict(
            images[i], clouds[i]
        ),
    }
    if graph_xml is not None:
        graph_inferencer = BTMInferencer(graph_xml)
        runs["BTM RGB + 3D | OpenVINO IR, FPFH in the graph (fpfh='graph')"] = lambda i: graph_inferencer.predict(
            images[i], clouds[i]
        )
    if int8_xml is not None:
        int8_inferencer = BTMInferencer(int8_xml)
        runs["BTM RGB + 3D | OpenVINO INT8 IR (int8_ptq), FPFH in BTMInferencer"] = lambda i: int8_inferencer.predict(
            images[i], clouds[i]
        )
    # The FPFH stage alone, as BTMInferencer computes it (reading the TIFF included): the k-NN kernels pool the FPFH
    # to the patch grid as they go (the IR's `fpfh` input).
    spec = btm_inferencer.fpfh_input
    assert spec is not None
    runs["(FPFH stage alone: XYZ TIFF → k-NN FPFH pooled to the patch grid, fused kernels)"] = lambda i: spec(
        torch.from_numpy(load_xyz(clouds[i])), (size, size)
    )
    log(f"timing {len(runs)} deployments in {args.repeats} alternating rounds")
    load_before = os.getloadavg()[0]
    times = _rounds(runs, len(images), args.repeats)
    load_after = os.getloadavg()[0]
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["PatchCore | OpenVINO IR"]
    pytorch = medians["BTM RGB + 3D | PyTorch"]

    # Throughput: predict_many on the test folder vs predict one after the other, alternating.
    pairs = list(zip(images, clouds, strict=True))
    throughput: dict[str, list[float]] = {"predict (one after the other)": [], "predict_many (THROUGHPUT, async)": []}
    list(btm_inferencer.predict_many(pairs[:4]))  # compile the throughput model (the inferencer keeps it)
    for _ in range(3):
        start = time.perf_counter()
        for image, cloud in pairs:
            btm_inferencer.predict(image, cloud)
        throughput["predict (one after the other)"].append(len(pairs) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in btm_inferencer.predict_many(pairs):
            pass
        throughput["predict_many (THROUGHPUT, async)"].append(len(pairs) / (time.perf_counter() - start))

    threads = torch.get_num_threads()
    lines = [
        f"Batch 1, {size}×{size}, backbone {args.backbone} {'+'.join(args.layers)} (random weights), {threads} torch "
        f"threads, {os.cpu_count()} CPUs; end to end from the files (PNG, XYZ TIFF) to score and map; median and "
        f"minimum of {args.repeats} alternating rounds over {len(images)} test samples. OpenVINO CPU in float32, IRs "
        "compiled for the batch-1 input shapes (BTMInferencer's default). Load average (1 min) "
        f"{load_before:.1f} before and {load_after:.1f} after the rounds (other processes share the CPUs).",
        "",
        "| model | deployment | median (ms) | min (ms) | median vs PatchCore IR | median vs BTM RGB + 3D PyTorch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, values in times.items():
        model_name, _, deployment = name.partition(" | ")
        lines.append(
            f"| {model_name} | {deployment} | {medians[name]:.0f} | {min(values):.0f} | "
            f"{medians[name] / reference:.2f}× | {medians[name] / pytorch:.2f}× |"
        )
    lines += [
        "",
        f"Throughput of BTM RGB + 3D (FPFH in BTMInferencer) on the {len(pairs)} test samples, median of 3 alternating "
        "rounds:",
        "",
        "| BTMInferencer | samples/s | vs predict |",
        "| --- | --- | --- |",
    ]
    base = statistics.median(throughput["predict (one after the other)"])
    for name, values in throughput.items():
        lines.append(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f}× |")
    lines += ["", "Export time (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in export_seconds.items())]
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
