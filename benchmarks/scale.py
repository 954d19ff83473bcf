# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Benchmark: the fit at real size — coreset per mode, and fit time / peak RSS per rank for 1 and N processes.

(a) **Coreset.** The training features of a real-size category (224 generated training samples at 400 × 400,
wide_resnet50_2 layer2+layer3 + FPFH: 224 × 784 = 175,616 patches × 1,569, the size of an MVTec 3D-AD category)
are extracted once (``--cache`` keeps them) and reduced at 10 % by ``coreset_method="exact"`` (the plain greedy
loop, anomalib's ``KCenterGreedy`` arithmetic: the reference) and ``"pruned"`` (triangle-inequality pruning), in the
same run. The table gives the time, the ratio to exact, the share of the plain loop's distance evaluations the
pruned loop measured, and whether both selected the same rows (same seed, same order).

(b) **Distributed fit.** ``benchmarks/ddp_fit.py`` fits and tests BTM through the Engine on the same category with
1 process and with ``--devices`` processes (Lightning DDP, gloo on CPU, NCCL with ``--accelerator gpu``); the table
gives per rank the training samples and feature-store memory it held, the fit time and the peak RSS, and says
whether the banks and test metrics agree.

The backbone has random weights (no download); time and memory do not depend on the weights.

Usage::

    python benchmarks/scale.py                         # (a) and (b), about 15 minutes on 2 cores
    python benchmarks/scale.py --skip-exact            # (a) without the ~7-minute reference
    python benchmarks/scale.py --skip-coreset --devices 2 --accelerator gpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024**2


def _category(root: Path, category: str, n_train: int, size: int) -> None:
    """Generate the benchmark category unless it exists (seeded: the same files every time)."""
    from anomalib_btm.data import generate_category

    if not (root / category / "train").is_dir():
        generate_category(
            root, category, n_train=n_train, n_validation=4, n_test_good=20, n_test_per_defect=6, image_size=size,
            seed=3,
        )  # fmt: skip


def _extract(root: Path, category: str, cache: Path | None) -> torch.Tensor:
    """The training features of the category (BTM's default RGB + 3D model, random backbone weights)."""
    if cache is not None and cache.is_file():
        return torch.load(cache)
    from anomalib.data import MVTec3D

    from anomalib_btm import BTM

    torch.manual_seed(0)
    datamodule = MVTec3D(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=0)
    datamodule.setup()
    model = BTM(pre_trained=False)
    model.model.train()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            model.model(model.pre_processor(batch.image), batch.depth_map)
    embedding = model.model.embedding_store.embeddings.clone()
    print(f"features: {tuple(embedding.shape)} in {time.perf_counter() - start:.0f} s", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(embedding, cache)
    return embedding


def coreset_table(embedding: torch.Tensor, ratio: float, seed: int, skip_exact: bool) -> str:
    """Time both coreset modes on ``embedding`` and return a Markdown table.

    Args:
        embedding: ``(N, D)`` training features.
        ratio: Coreset sampling ratio.
        seed: Seed of the projection and the first center.
        skip_exact: Skip the exact (reference) mode.

    Returns:
        The table.
    """
    from anomalib_btm.models.btm.coreset import KCenterGreedy, PrunedKCenterGreedy

    n = embedding.shape[0]
    rows: list[tuple[str, float, float | None, list[int]]] = []
    pruned = PrunedKCenterGreedy(embedding, ratio, seed=seed)
    start = time.perf_counter()
    picks = pruned.select_coreset_idxs()
    rows.append(("pruned", time.perf_counter() - start, pruned.measured / (n * len(picks)), picks))
    if not skip_exact:
        exact = KCenterGreedy(embedding, ratio, seed=seed)
        start = time.perf_counter()
        picks = [int(i) for i in exact.select_coreset_idxs()]
        rows.append(("exact", time.perf_counter() - start, 1.0, picks))
    reference = rows[-1] if not skip_exact else None
    lines = [
        f"Coreset of {n:,} × {embedding.shape[1]:,} at {ratio:.0%} ({len(rows[0][3]):,} picks), "
        f"{torch.get_num_threads()} threads:",
        "",
        "| coreset_method | time (s) | vs exact | distances measured | same rows as exact |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, seconds, measured, picks in rows:
        if reference is None:
            ratio_text, same = "n/a (--skip-exact)", "n/a"
        elif name == "exact":
            ratio_text, same = "reference", "reference"
        else:
            ratio_text = f"{reference[1] / seconds:.1f}× faster"
            same = "yes" if picks == reference[3] else _first_difference(picks, reference)
        lines.append(f"| {name} | {seconds:.1f} | {ratio_text} | {measured:.2%} | {same} |")
    return "\n".join(lines)


def _first_difference(picks: list[int], reference: tuple) -> str:
    other = reference[3]
    same = sum(a == b for a, b in zip(picks, other, strict=False))
    first = next((i for i, (a, b) in enumerate(zip(picks, other, strict=False)) if a != b), len(picks))
    return f"no: {same:,} of {len(other):,} equal, first difference at pick {first:,}"


def _fit(root: Path, category: str, out: Path, devices: int, accelerator: str, image_size: int) -> float:
    """Run ``ddp_fit.py`` and return its wall time."""
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "ddp_fit.py"), str(root), category, str(out),
        "--backbone", "wide_resnet50_2", "--image-size", str(image_size), "--batch-size", "8",
        "--accelerator", accelerator,
    ]  # fmt: skip
    if devices > 1:
        command += ["--devices", str(devices), "--strategy", "ddp"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"ddp_fit.py with {devices} process(es) failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def ddp_table(root: Path, category: str, work: Path, devices: int, accelerator: str, image_size: int) -> str:
    """Fit and test with 1 and ``devices`` processes and return a Markdown table per rank.

    Args:
        root: Dataset root.
        category: Category.
        work: Output folder.
        devices: Number of processes of the distributed run.
        accelerator: ``"cpu"`` or ``"gpu"``.
        image_size: Model input size.

    Returns:
        The table.
    """
    lines = [
        f"Fit + test through the Engine, {accelerator}, wide_resnet50_2 (random weights), {image_size}²:",
        "",
        "| processes | rank | training samples | feature store (MiB) | fit (s) | peak RSS (MiB) | fit + test (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    results = {}
    for count in (1, devices):
        out = work / f"devices{count}"
        wall = _fit(root, category, out, count, accelerator, image_size)
        results[count] = out
        for rank in range(count):
            record = json.loads((out / f"rank{rank}.json").read_text())
            lines.append(
                f"| {count} | {rank} | {record['samples']} | {record['store_bytes'] / MIB:,.0f} | "
                f"{record['fit_s']:.0f} | {record['peak_rss_mib']:,.0f} | {wall:.0f} |"
            )
    one, many = results[1], results[devices]
    bank_one, bank_many = torch.load(one / "bank.pt"), torch.load(many / "bank.pt")
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_many = json.loads((many / "metrics.json").read_text())
    gap = max(abs(metrics_one[k] - metrics_many[k]) for k in metrics_one)
    if torch.equal(bank_one, bank_many):
        same = "the same bank (same rows, same order)"
    else:
        rows = {tuple(row) for row in bank_one.numpy().round(3).tolist()}
        shared = sum(tuple(row) in rows for row in bank_many.numpy().round(3).tolist())
        same = f"{shared:,} of {len(bank_one):,} bank rows equal to 3 decimals (the CNN rounds by thread count)"
    lines += ["", f"{devices} processes vs 1: {same}; largest test-metric difference {gap:.2g}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and print the tables.

    Args:
        argv: Command line (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("bench_output/scale"), help="dataset root")
    parser.add_argument("--category", default="realsize")
    parser.add_argument("--n-train", type=int, default=224)
    parser.add_argument("--size", type=int, default=400, help="generated image size")
    parser.add_argument("--cache", type=Path, default=None, help="save / reuse the training features here")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-exact", action="store_true", help="skip the exact coreset (the reference)")
    parser.add_argument("--skip-coreset", action="store_true", help="only the distributed fit table")
    parser.add_argument("--skip-ddp", action="store_true", help="only the coreset table")
    parser.add_argument("--devices", type=int, default=2, help="processes of the distributed fit")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--image-size", type=int, default=224, help="model input size")
    args = parser.parse_args(argv)
    if args.devices < 2:
        parser.error(f"--devices must be at least 2 for the distributed fit, got {args.devices}.")
    _category(args.root, args.category, args.n_train, args.size)
    if not args.skip_coreset:
        embedding = _extract(args.root, args.category, args.cache)
        print(coreset_table(embedding, args.ratio, args.seed, args.skip_exact), flush=True)
        del embedding
        print()
    if not args.skip_ddp:
        print(ddp_table(args.root, args.category, args.root / "runs", args.devices, args.accelerator, args.image_size))


if __name__ == "__main__":
    main()
