# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Benchmark: BTM's two eager CPU paths for scoring and the CNN, each against the plain torch call it replaces.

* Scoring: the k-NN query's distance matmul (``‖x‖² − 2x·m + ‖m‖²``) of a batch of patch features against a real-size
  memory bank (17,561 × 1,569: 10 % of 224 images' patches, WRN50 layer2+3 + FPFH) — torch's ``addmm`` (the exported
  graph's arithmetic) vs :func:`~anomalib_btm.models.btm.scoring.squared_distances`, whose matmul runs in NumPy's
  BLAS on CPU.
* CNN: the RGB branch (wide_resnet50_2 layer2+3, random weights) on an NCHW batch vs BTM's NHWC (channels-last)
  input.

Both variants run alternately in the same process (median of ``--repeats``), with the largest difference of their
outputs, so the ratio holds on a busy machine.

Usage::

    python benchmarks/cpu_paths.py
    python benchmarks/cpu_paths.py --queries 25088 --batch 32   # one test batch of 32 images
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from anomalib_btm.models.btm.feature_branches import RGBBranch
from anomalib_btm.models.btm.scoring import squared_distances


def _torch_squared_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """The reference: one ``addmm`` in torch's BLAS (what the exported graph computes)."""
    q_sq = queries.pow(2).sum(dim=1, keepdim=True)
    return torch.addmm(q_sq + bank_sq.unsqueeze(0), queries, bank.T, beta=1.0, alpha=-2.0).clamp_min(0.0)


def _time_pair(
    reference: Callable[[], torch.Tensor], candidate: Callable[[], torch.Tensor], repeats: int
) -> tuple[float, float, float]:
    """Median seconds of both (alternating rounds, one warm-up each) and the largest output difference."""
    ref_out, cand_out = reference(), candidate()
    diff = float((ref_out.float() - cand_out.float()).abs().max())
    ref_times, cand_times = [], []
    for _ in range(repeats):
        for fn, times in ((reference, ref_times), (candidate, cand_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(ref_times), statistics.median(cand_times), diff


def main(argv: list[str] | None = None) -> None:
    """Time both pairs and print a Markdown table.

    Args:
        argv: Command line (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4096, help="patch features per distance block")
    parser.add_argument("--bank", type=int, default=17561, help="memory-bank rows")
    parser.add_argument("--dim", type=int, default=1569, help="feature dimension")
    parser.add_argument("--batch", type=int, default=8, help="images per CNN batch (224 x 224)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(args.queries, args.dim, generator=generator)
    bank = torch.randn(args.bank, args.dim, generator=generator)
    bank_sq = bank.pow(2).sum(dim=1)
    rows = []
    with torch.inference_mode():
        ref, cand, diff = _time_pair(
            lambda: _torch_squared_distances(queries, bank, bank_sq),
            lambda: squared_distances(queries, bank, bank_sq),
            args.repeats,
        )
        flops = 2.0 * args.queries * args.bank * args.dim
        rows.append(
            (
                f"distances {args.queries} × {args.bank} × {args.dim}",
                "torch addmm",
                ref,
                "NumPy BLAS",
                cand,
                diff,
                f"{flops / ref / 1e9:.0f} → {flops / cand / 1e9:.0f} GFLOP/s",
            )
        )

        branch = RGBBranch("wide_resnet50_2", ("layer2", "layer3"), pre_trained=False)
        images = torch.randn(args.batch, 3, 224, 224, generator=generator)
        ref, cand, diff = _time_pair(
            lambda: branch.extractor(images)["layer3"],  # NCHW, as torch runs it by default
            lambda: branch.extractor(images.contiguous(memory_format=torch.channels_last))["layer3"],
            args.repeats,
        )
        rows.append((f"CNN wide_resnet50_2, batch {args.batch}", "NCHW", ref, "NHWC", cand, diff, ""))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| stage | reference | ref. s | BTM | BTM s | speed-up | max abs diff | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for stage, ref_name, ref_s, cand_name, cand_s, diff, note in rows:
        print(
            f"| {stage} | {ref_name} | {ref_s:.3f} | {cand_name} | {cand_s:.3f} | {ref_s / cand_s:.2f}× "
            f"| {diff:.2e} | {note} |"
        )


if __name__ == "__main__":
    main()
