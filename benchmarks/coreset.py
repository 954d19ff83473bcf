# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Benchmark: our flat-memory k-center coreset against anomalib's ``KCenterGreedy``.

Each implementation runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own. Both build the same
random float32 embedding, reset torch's and NumPy's global generators to the same seed (anomalib reads both), and
select a coreset; the parent prints a Markdown table with the time, the peak RSS, the ratios and whether the
selected indices agree.

anomalib's sampler is O(N^2) with a fresh ``N x k`` temporary per step, so at the default size (10 % of
100,000 x 1569) it does not finish within a reasonable time on a small CPU. It therefore runs under a time limit
(and, like ours, an RSS cap enforced by the parent): when it stops early, the table says so, gives the measured
time as a lower bound and an extrapolation from its per-step rate, and compares the indices it did select with our
first ones (the greedy sequence is deterministic, so a prefix must agree). ``--anomalib-max-n`` additionally runs
both implementations on a smaller N that anomalib can finish.

Usage::

    python benchmarks/coreset.py                       # 100,000 x 1569, ratio 0.1, at most ~8 minutes
    python benchmarks/coreset.py --n 20000 --d 256 --ratio 0.1
    python benchmarks/coreset.py --anomalib-max-n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


class _Deadline(Exception):
    """Raised inside the anomalib worker when its time limit is reached."""


def _peak_rss_bytes() -> int:
    """Return this process's peak resident set size in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _make_embedding(n: int, d: int, seed: int) -> Any:
    """Build the benchmark embedding and reset the global generators to ``seed`` afterwards.

    Args:
        n: Rows.
        d: Columns.
        seed: Seed of the embedding and of the selection.

    Returns:
        ``torch.randn(n, d)`` in float32.
    """
    import numpy as np
    import torch

    embedding = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    np.random.seed(seed)
    return embedding


def _run_ours(embedding: Any, ratio: float) -> dict[str, Any]:
    """Select with our implementation.

    Args:
        embedding: Embedding.
        ratio: Sampling ratio.

    Returns:
        Worker result fields.
    """
    from anomalib_btm.models.btm.coreset import KCenterGreedy

    start = time.perf_counter()
    idxs = KCenterGreedy(embedding, ratio).select_coreset_idxs()
    return {"time_s": time.perf_counter() - start, "idxs": idxs, "finished": True}


def _run_anomalib(embedding: Any, ratio: float, time_limit_s: float) -> dict[str, Any]:
    """Select with anomalib's implementation, stopping cleanly at ``time_limit_s``.

    Args:
        embedding: Embedding.
        ratio: Sampling ratio.
        time_limit_s: Wall-clock limit of the selection.

    Returns:
        Worker result fields, with the indices selected so far if it stopped early.
    """
    from anomalib.models.components.sampling import KCenterGreedy

    picks: list[int] = []
    clock: dict[str, float] = {}

    class _Recording(KCenterGreedy):
        """anomalib's sampler, recording its picks and checking the deadline once per step."""

        def update_distances(self, cluster_center: Any) -> None:
            if not picks:  # the random first center
                clock["first_step"] = time.perf_counter()
                picks.append(int(cluster_center))
            super().update_distances(cluster_center)

        def get_new_idx(self) -> Any:
            idx = super().get_new_idx()
            picks.append(int(idx))
            if time.perf_counter() > deadline:
                raise _Deadline
            return idx

    sampler = _Recording(embedding=embedding, sampling_ratio=ratio)
    start = time.perf_counter()
    deadline = start + time_limit_s
    try:
        idxs = sampler.select_coreset_idxs()
        finished = True
    except _Deadline:
        idxs = picks
        finished = False
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {"time_s": elapsed, "idxs": idxs, "finished": finished}
    if not finished:
        setup = clock["first_step"] - start
        steps_done = len(picks) - 1
        steps_total = sampler.coreset_size - 1
        result["estimated_time_s"] = setup + (elapsed - setup) * steps_total / max(1, steps_done)
    return result


def worker(args: argparse.Namespace) -> None:
    """Run one implementation and write its result as JSON to ``args.out``.

    The implementation is imported and the embedding built before the baseline RSS is taken, so the difference
    between the peak and the baseline is what the selection itself needed.

    Args:
        args: Parsed command line (``--worker``, sizes, ``--out``, ``--time-limit``).
    """
    if args.worker == "ours":
        import anomalib_btm.models.btm.coreset  # noqa: F401
    else:
        import anomalib.models.components.sampling  # noqa: F401
    embedding = _make_embedding(args.n, args.d, args.seed)
    rss_before = _peak_rss_bytes()
    if args.worker == "ours":
        result = _run_ours(embedding, args.ratio)
    else:
        result = _run_anomalib(embedding, args.ratio, args.time_limit)
    result.update(
        {
            "peak_rss_gb": _peak_rss_bytes() / GIB,
            "rss_before_gb": rss_before / GIB,
            "coreset_size": int(args.n * args.ratio),
        }
    )
    Path(args.out).write_text(json.dumps(result))


def _current_rss_bytes(pid: int) -> int:
    """Return the current RSS of ``pid`` in bytes (0 if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Run:
    """Outcome of one worker subprocess."""

    impl: str
    n: int
    wall_s: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None


def _spawn(impl: str, n: int, args: argparse.Namespace, time_limit_s: float) -> Run:
    """Run a worker subprocess under a time limit and an RSS cap.

    Args:
        impl: ``"ours"`` or ``"anomalib"``.
        n: Rows of the embedding.
        args: Parsed command line of the parent.
        time_limit_s: Selection time limit (anomalib stops itself there; both are killed 90 s later).

    Returns:
        The run, with the worker's JSON result or a description of the failure.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--n", str(n), "--d", str(args.d)]
        cmd += ["--ratio", str(args.ratio), "--seed", str(args.seed), "--time-limit", str(time_limit_s)]
        cmd += ["--out", str(out)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        start = time.perf_counter()
        # stderr goes to a file, not a pipe: anomalib's progress bar would fill a pipe (64 KiB) and block the worker.
        log = Path(tmp) / "stderr.log"
        with log.open("w") as stderr_file:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)
        run = Run(impl, n)
        peak = 0
        hard_limit = time_limit_s + 90
        while proc.poll() is None:
            rss = _current_rss_bytes(proc.pid)
            peak = max(peak, rss)
            elapsed = time.perf_counter() - start
            if rss > args.rss_cap_gb * GIB:
                proc.kill()
                run.failure = f"killed at {rss / GIB:.1f} GB RSS after {elapsed:.0f} s"
            elif elapsed > hard_limit:
                proc.kill()
                run.failure = f"killed after {elapsed:.0f} s (time limit), RSS {peak / GIB:.2f} GB"
            time.sleep(0.2)
        stderr = log.read_text(errors="replace")
        run.wall_s = time.perf_counter() - start
        if run.failure is None and proc.returncode != 0:
            tail = stderr.strip().splitlines()[-1:] or ["?"]
            run.failure = f"exit code {proc.returncode}: {tail[0]}"
        if run.failure is None:
            run.result = json.loads(out.read_text())
        return run


def _agreement(ours: Run, other: Run) -> str:
    """Describe whether the indices of ``other`` equal (a prefix of) ours."""
    if ours.failure or other.failure:
        return "n/a"
    mine, theirs = ours.result["idxs"], other.result["idxs"]
    if other.result["finished"]:
        return "yes" if mine == theirs else _first_difference(mine, theirs)
    if mine[: len(theirs)] == theirs:
        return f"yes (all {len(theirs):,} anomalib selected before its limit)"
    return _first_difference(mine, theirs)


def _first_difference(a: list[int], b: list[int]) -> str:
    """Describe where two index lists first differ."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"NO: first difference at pick {i}"
    return f"NO: lengths {len(a)} vs {len(b)}"


def _table(runs: list[Run]) -> str:
    """Format the runs as a Markdown table (ratios against ours at the same N)."""
    ours_by_n = {r.n: r for r in runs if r.impl == "ours"}
    lines = [
        "| implementation | N | time (s) | peak RSS (GB) | RSS before selection (GB) | time ratio (anomalib / ours) "
        "| RSS ratio (anomalib / ours) | indices agree |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        name = "ours (anomalib_btm)" if run.impl == "ours" else "anomalib KCenterGreedy"
        if run.failure:
            lines.append(f"| {name} | {run.n:,} | {run.failure} | | | | | n/a |")
            continue
        res = run.result
        finished = res["finished"]
        time_cell = f"{res['time_s']:.1f}"
        if not finished:
            done = len(res["idxs"])
            time_cell = (
                f"> {res['time_s']:.0f} (stopped at {done:,}/{res['coreset_size']:,} picks; "
                f"extrapolated {res['estimated_time_s']:.0f})"
            )
        rss_cell = f"{res['peak_rss_gb']:.2f}" + ("" if finished else " (until stop)")
        time_ratio = rss_ratio = agree = "-"
        ours = ours_by_n.get(run.n)
        if run.impl == "anomalib" and ours is not None and not ours.failure:
            mine = ours.result
            if finished:
                time_ratio = f"{res['time_s'] / mine['time_s']:.1f}x"
            else:
                time_ratio = (
                    f">= {res['time_s'] / mine['time_s']:.1f}x (extrapolated "
                    f"{res['estimated_time_s'] / mine['time_s']:.1f}x)"
                )
            rss_ratio = f"{res['peak_rss_gb'] / mine['peak_rss_gb']:.2f}x"
            agree = _agreement(ours, run)
        lines.append(
            f"| {name} | {run.n:,} | {time_cell} | {rss_cell} | {res['rss_before_gb']:.2f} | {time_ratio} "
            f"| {rss_ratio} | {agree} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark (or one worker)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows of the embedding (default 100000)")
    parser.add_argument("--d", type=int, default=1569, help="columns of the embedding (default 1569)")
    parser.add_argument("--ratio", type=float, default=0.1, help="sampling ratio (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embedding and the selection")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="total wall-clock budget; anomalib gets what ours leaves, at least 60 s (default 420)",
    )
    parser.add_argument("--anomalib-time-limit", type=float, default=None, help="fixed time limit for anomalib (s)")
    parser.add_argument(
        "--anomalib-max-n",
        type=int,
        default=None,
        help="also run both implementations at this smaller N (anomalib gets no time limit there)",
    )
    parser.add_argument("--rss-cap-gb", type=float, default=16.0, help="kill a worker above this RSS (default 16)")
    parser.add_argument("--worker", choices=["ours", "anomalib"], help=argparse.SUPPRESS)
    parser.add_argument("--time-limit", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    started = time.perf_counter()
    print(
        f"coreset benchmark: {args.ratio:.0%} of {args.n:,} x {args.d} float32, seed {args.seed}, "
        f"torch threads default, RSS cap {args.rss_cap_gb:g} GB, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    runs: list[Run] = []
    small_n = args.anomalib_max_n if args.anomalib_max_n and args.anomalib_max_n < args.n else None
    if small_n:
        for impl in ("ours", "anomalib"):
            print(f"running {impl} at N={small_n:,} ...", flush=True)
            runs.append(_spawn(impl, small_n, args, time_limit_s=args.budget_s))
    print(f"running ours at N={args.n:,} ...", flush=True)
    runs.append(_spawn("ours", args.n, args, time_limit_s=args.budget_s))
    limit = args.anomalib_time_limit
    if limit is None:
        limit = max(60.0, args.budget_s - (time.perf_counter() - started) - 30.0)
    print(f"running anomalib at N={args.n:,} (time limit {limit:.0f} s) ...", flush=True)
    runs.append(_spawn("anomalib", args.n, args, time_limit_s=limit))
    print()
    print(_table(runs))
    print()
    print(f"load average {os.getloadavg()[0]:.1f} at the end; total {time.perf_counter() - started:.0f} s.")
    print(
        "Peak RSS includes the imports and the embedding, which 'RSS before selection' measures. A time '> t' means "
        "anomalib hit its time limit; its ratio is then a lower bound, and 'extrapolated' assumes its measured "
        "per-step time stays constant (each step costs O(N k) regardless of how many points were picked)."
    )


if __name__ == "__main__":
    main()
