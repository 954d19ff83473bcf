# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Benchmark: the cost of decoding every RGB, XYZ and mask file of a category before the first batch.

``BTM`` calls :func:`anomalib_btm.data.verify_sample_files` on every split when a fit starts (and on the test split
for ``anomalib test`` / ``predict``). This times it on a category in the MVTec 3D-AD layout — by default a generated
one of 250 samples — against reading the same files once with the decoders anomalib's dataset uses (PIL, tifffile),
single-threaded, in the same run.

Usage::

    python benchmarks/verify_files.py                            # 250 generated samples at 800 x 800
    python benchmarks/verify_files.py --root DATA --category bagel   # an existing category
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from anomalib_btm.data import generate_category, verify_sample_files


def _samples(root: Path, category: str) -> list[tuple[Path, Path | None, Path | None]]:
    """Every (rgb, xyz, mask) triple of the category, train, validation and test."""
    triples = []
    for rgb in sorted((root / category).glob("*/*/rgb/*.png")):
        xyz = rgb.parent.parent / "xyz" / (rgb.stem + ".tiff")
        mask = rgb.parent.parent / "gt" / rgb.name
        triples.append((rgb, xyz if xyz.is_file() else None, mask if mask.is_file() else None))
    return triples


def _read_once(triples: list[tuple[Path, Path | None, Path | None]]) -> None:
    """Decode every file once, one after the other (the reference)."""
    for rgb, xyz, mask in triples:
        np.asarray(Image.open(rgb).convert("RGB"))
        if xyz is not None:
            tifffile.imread(xyz)
        if mask is not None:
            np.asarray(Image.open(mask))


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, time both and print a table.

    Args:
        argv: Command line (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("bench_output/verify"))
    parser.add_argument("--category", default="verify250")
    parser.add_argument("--size", type=int, default=800, help="generated image size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.root / args.category).is_dir():
        generate_category(
            args.root, args.category, n_train=200, n_validation=10, n_test_good=15, n_test_per_defect=5,
            image_size=args.size, seed=0,
        )  # fmt: skip
    triples = _samples(args.root, args.category)
    rgb, xyz, masks = zip(*triples, strict=True)
    timings: dict[str, list[float]] = {"verify_sample_files (BTM)": [], "read every file once (1 thread)": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        verify_sample_files(list(rgb), list(xyz), list(masks), split="all")
        timings["verify_sample_files (BTM)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _read_once(triples)
        timings["read every file once (1 thread)"].append(time.perf_counter() - start)
    files = sum(1 for triple in triples for path in triple if path is not None)
    print(f"{len(triples)} samples, {files} files ({args.root / args.category}); median of {args.repeats} runs:\n")
    print("| what | time (s) | vs reading once |")
    print("| --- | --- | --- |")
    reference = statistics.median(timings["read every file once (1 thread)"])
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / reference:.2f}× |")


if __name__ == "__main__":
    main()
