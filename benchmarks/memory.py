# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Peak RSS of building the memory bank against the number of training samples: BTM vs anomalib PatchCore.

Each run happens in its own subprocess (``ru_maxrss`` is per process) and streams random patch features of BTM's
shape (784 patches × 1569 features per 224² sample, RGB 1536 + FPFH 33) batch by batch, as a training epoch does:

* ``patchcore``: anomalib's way — a Python list of per-batch embeddings, ``torch.cat``, then anomalib's
  ``KCenterGreedy`` on the whole matrix;
* ``btm``: BTM's preallocated ``EmbeddingStore`` (float32 or float16) and ``select_memory_bank`` with a chunked
  coreset and a ``max_bank_size`` cap.

The CNN and FPFH are left out on purpose: their memory does not grow with the training set; the bank does.
Runs are capped by ``RLIMIT_AS`` (``--limit-gb``) and a timeout so that a blow-up is reported, not suffered.

    python benchmarks/memory.py --samples 100 250 500 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PATCHES = 784
DIM = 1536 + 33
BATCH = 32


def worker(kind: str, samples: int, ratio: float, chunk: int, max_bank: int, dtype: str) -> None:
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    start = time.perf_counter()
    batches = [min(BATCH, samples - i) for i in range(0, samples, BATCH)]
    if kind == "patchcore":
        from anomalib.models.components import KCenterGreedy

        store = [torch.randn(n * PATCHES, DIM) for n in batches]
        embedding = torch.cat(store)
        store.clear()
        bank = KCenterGreedy(embedding, sampling_ratio=ratio).sample_coreset()
    else:
        from anomalib_btm.models.btm.memory_bank import EmbeddingStore, select_memory_bank

        store = EmbeddingStore(dtype)
        store.expect(samples)
        for n in batches:
            store.append(torch.randn(n * PATCHES, DIM), samples=n)
        bank = select_memory_bank(store.embeddings, ratio, max_bank_size=max_bank, chunk_size=chunk)
    elapsed = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"seconds": elapsed, "peak_gb": peak_gb, "bank": list(bank.shape)}))


def run(args: argparse.Namespace, kind: str, samples: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--samples", str(samples), "--ratio", str(args.ratio),
               "--chunk", str(args.chunk), "--max-bank", str(args.max_bank), "--dtype", args.dtype]  # fmt: skip
    limit = int(args.limit_gb * 1024**3)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {args.timeout} s"}
    if done.returncode != 0:
        reason = "out of memory" if "memory" in done.stderr.lower() or done.returncode < 0 else "failed"
        return {"status": f"{reason} (limit {args.limit_gb:g} GB)"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset ratio (0.1 is the paper's; slow on CPU)")
    parser.add_argument("--chunk", type=int, default=50_000, help="BTM coreset chunk (patches)")
    parser.add_argument("--max-bank", type=int, default=20_000, help="BTM max_bank_size")
    parser.add_argument("--dtype", default="float16", help="BTM store dtype")
    parser.add_argument("--limit-gb", type=float, default=20.0)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--only", choices=["btm", "patchcore"], default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.samples[0], args.ratio, args.chunk, args.max_bank, args.dtype)
        return 0
    kinds = [args.only] if args.only else ["patchcore", "btm"]
    print(f"features {PATCHES} × {DIM} per sample, coreset ratio {args.ratio}; BTM: {args.dtype} store, "
          f"chunk {args.chunk}, max_bank_size {args.max_bank}")  # fmt: skip
    print("| samples | PatchCore peak RSS (GB) | PatchCore time (s) | BTM peak RSS (GB) | BTM time (s) | RSS ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for samples in args.samples:
        results = {kind: run(args, kind, samples) for kind in kinds}

        def cell(kind: str, key: str, results: dict = results) -> str:
            result = results.get(kind)
            if result is None:
                return "-"
            return f"{result[key]:.2f}" if result["status"] == "ok" else result["status"]

        ratio = "-"
        if all(results.get(k, {}).get("status") == "ok" for k in ("patchcore", "btm")):
            ratio = f"{results['patchcore']['peak_gb'] / results['btm']['peak_gb']:.1f}×"
        print(f"| {samples} | {cell('patchcore', 'peak_gb')} | {cell('patchcore', 'seconds')} | "
              f"{cell('btm', 'peak_gb')} | {cell('btm', 'seconds')} | {ratio} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
