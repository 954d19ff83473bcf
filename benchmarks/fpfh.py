# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Benchmark and parity check of the FPFH backends (Open3D reference vs torch).

Generates organized clouds (224×224, ~45-50k valid points: bumpy height fields and an object on a background
plane, seen by a pinhole camera at ~0.5 m, with missing points), then prints Markdown tables of

* per-cloud time of Open3D and of the torch backend — its default CPU path (``search="knn"``: the exact k-NN
  kernels), the pixel-window kernels (``search="window"``), the eager window graph, ``torch.compile``, CUDA when
  present — at batch 1 and batch ``--batch``, with the speed-up over Open3D measured in the same run;
* parity with Open3D: per-point correlation (1st and 5th percentile, median, mean) and relative L1 distance of the
  33-d descriptors, on all valid points and on points at least ``window // 2`` pixels away from missing points and
  the image border, and the agreement of the window kernels with the window graph;
* the same parity on generated geometry where pixel windows are not Open3D's neighbourhoods: rings with 45°, 60°
  and 80° walls, a dome, a tilted box, and non-square sensors resized to the working size (``--no-geometry``
  skips it).

Usage::

    python benchmarks/fpfh.py                 # full run (CPU compile takes a few minutes per batch size)
    python benchmarks/fpfh.py --no-compile    # the Open3D / kernel / eager-graph comparison in about a minute
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from anomalib_btm.features import compute_fpfh


def make_scene(size: int = 224, seed: int = 0, kind: str = "bumpy", hole_fraction: float = 0.005) -> torch.Tensor:
    """Organized cloud ``(3, size, size)`` in metres, missing points exactly zero.

    ``"bumpy"``: tilted height field with Gaussian bumps and ripples filling the view; ``"object"``: a domed
    object standing 2 cm in front of a bumpy background plane (depth edges), both at ~0.5 m.
    """
    rng = np.random.default_rng(seed)
    depth, width_m = 0.5, 0.15
    focal, centre = size * depth / width_m, (size - 1) / 2
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    xn, yn = (u - centre) / focal, (v - centre) / focal
    x0, y0 = xn * depth, yn * depth
    z = depth + rng.uniform(-0.3, 0.3) * x0 + rng.uniform(-0.3, 0.3) * y0
    z = z + 0.002 * np.sin(2 * np.pi * x0 / rng.uniform(0.02, 0.04)) * np.cos(2 * np.pi * y0 / rng.uniform(0.02, 0.04))
    for _ in range(6):
        cx, cy = rng.uniform(-width_m / 3, width_m / 3, 2)
        sigma, amplitude = rng.uniform(0.01, 0.03), rng.uniform(-0.01, 0.01)
        z = z + amplitude * np.exp(-((x0 - cx) ** 2 + (y0 - cy) ** 2) / (2 * sigma**2))
    if kind == "object":
        radius = np.hypot(x0, y0)
        dome = 0.8 * np.sqrt(np.clip(0.05**2 - radius**2, 0, None))
        z = np.where(radius < 0.05, depth - 0.02 - dome, z + 0.03)
    xyz = np.stack([xn * z, yn * z, z]).astype(np.float32)
    valid = rng.random((size, size)) > hole_fraction
    for _ in range(3):  # missing blobs (shadows)
        cu, cv, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 12)
        valid &= (u - cu) ** 2 + (v - cv) ** 2 > r**2
    return torch.from_numpy(xyz * valid)


def timed(function: Callable[[], torch.Tensor], repeats: int, sync: Callable[[], None]) -> tuple[float, torch.Tensor]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    result = function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def interior_mask(xyz: torch.Tensor, margin: int) -> torch.Tensor:
    """Valid points at least ``margin`` pixels (Chebyshev) away from missing points and the image border."""
    valid = (xyz != 0).all(dim=1, keepdim=True).float()
    eroded = -F.max_pool2d(-F.pad(valid, (margin,) * 4), 2 * margin + 1, stride=1)
    return eroded[:, 0] > 0


def parity(reference: torch.Tensor, ours: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Per-point correlation and relative L1 (to the descriptor mass 600) over ``mask``."""
    a = reference.permute(0, 2, 3, 1)[mask].double()
    b = ours.permute(0, 2, 3, 1)[mask].double()
    ac, bc = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    correlation = (ac * bc).sum(1) / (ac.norm(dim=1) * bc.norm(dim=1)).clamp_min(1e-12)
    relative_l1 = (a - b).abs().sum(1) / 600.0
    return {
        "corr_median": correlation.median().item(),
        "corr_mean": correlation.mean().item(),
        "corr_p01": correlation.quantile(0.01).item(),
        "corr_p05": correlation.quantile(0.05).item(),
        "l1_median": relative_l1.median().item(),
        "l1_mean": relative_l1.mean().item(),
        "points": int(mask.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile on CPU")
    parser.add_argument("--no-eager-cpu", action="store_true", help="skip the (slow) eager CPU timing")
    parser.add_argument("--window", type=int, default=None, help="override the torch backend's window")
    parser.add_argument("--no-geometry", action="store_true", help="skip the parity table on generated geometry")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    options = {} if args.window is None else {"window": args.window}

    kinds = ["bumpy", "object"]
    clouds = torch.stack([make_scene(args.size, seed, kinds[seed % 2]) for seed in range(args.batch)])
    valid_counts = (clouds != 0).all(dim=1).sum(dim=(1, 2))
    print(
        f"{args.batch} clouds {args.size}×{args.size}, valid points {int(valid_counts.min())}-{int(valid_counts.max())}"
        f", torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n"
    )

    rows: list[tuple[str, int, float, float | None]] = []
    cpu_sync: Callable[[], None] = lambda: None  # noqa: E731
    window_options = {"search": "window", "normal_orientation": "camera", **options}

    # Open3D and the torch CPU paths are timed in alternating rounds, so that a noisy neighbour slows all alike;
    # the speed-up is the median of the per-round ratios.
    start = time.perf_counter()
    compute_fpfh(clouds[:1], backend="torch", **options)
    compute_fpfh(clouds[:1], backend="torch", **window_options)
    first_call = time.perf_counter() - start
    reference = compute_fpfh(clouds, backend="open3d")
    kernel_out = compute_fpfh(clouds, backend="torch", search="window", **options)
    rounds: dict[str, list[float]] = {"open3d": [], "single": [], "batch": [], "window": []}
    for _ in range(args.repeats):
        for key, run in (
            ("open3d", lambda: compute_fpfh(clouds, backend="open3d")),
            ("single", lambda: [compute_fpfh(cloud[None], backend="torch", **options) for cloud in clouds]),
            ("batch", lambda: compute_fpfh(clouds, backend="torch", **options)),
            ("window", lambda: compute_fpfh(clouds, backend="torch", **window_options)),
        ):
            start = time.perf_counter()
            run()
            rounds[key].append((time.perf_counter() - start) / args.batch)
    open3d_per_cloud = float(np.median(rounds["open3d"]))
    rows.append(("open3d (CPU)", args.batch, open3d_per_cloud, None))
    for key, batch, label in (
        ("single", 1, f"torch, k-NN kernels (default; first calls {first_call:.1f} s)"),
        ("batch", args.batch, "torch, k-NN kernels (default)"),
        ("window", args.batch, "torch, window kernels (search='window')"),
    ):
        ratios = [o / k for o, k in zip(rounds["open3d"], rounds[key], strict=True)]
        rows.append((label, batch, float(np.median(rounds[key])), float(np.median(ratios))))

    graph_out = None
    if not args.no_eager_cpu:
        eager_time, graph_out = timed(
            lambda: compute_fpfh(clouds[:2], backend="torch", cpu_kernel=False, search="window", **options),
            1,
            cpu_sync,
        )
        rows.append(("torch window graph, eager (CPU)", 2, eager_time / 2, None))

    compiled_out = None
    if not args.no_compile:
        for batch in sorted({1, args.batch}):
            start = time.perf_counter()
            compute_fpfh(clouds[:batch], backend="torch", compile=True, search="window", **options)
            compile_time = time.perf_counter() - start
            elapsed, out = timed(
                lambda b=batch: compute_fpfh(clouds[:b], backend="torch", compile=True, search="window", **options),
                args.repeats,
                cpu_sync,
            )
            rows.append(
                (f"torch window graph compiled (CPU, first call {compile_time:.0f} s)", batch, elapsed / batch, None)
            )
            if batch == args.batch:
                compiled_out = out

    if torch.cuda.is_available():
        gpu = clouds.cuda()
        for label, extra in (
            ("k-NN brute force", {}),
            ("window, eager", {"search": "window"}),
            ("window, compiled", {"search": "window", "compile": True}),
        ):
            for batch in sorted({1, args.batch}):
                elapsed, _ = timed(
                    lambda b=batch, e=extra: compute_fpfh(gpu[:b], backend="torch", **{**options, **e}),
                    max(args.repeats, 5),
                    torch.cuda.synchronize,
                )
                rows.append((f"torch {label} ({torch.cuda.get_device_name()})", batch, elapsed / batch, None))

    print("| backend | batch | ms / cloud | speed-up vs Open3D |")
    print("|---|---:|---:|---:|")
    for name, batch, per_cloud, ratio in rows:
        speed_up = open3d_per_cloud / per_cloud if ratio is None else ratio
        print(f"| {name} | {batch} | {per_cloud * 1000:.1f} | {speed_up:.1f}× |")
    print(f"\n(median of {args.repeats} alternating rounds; CPU-kernel speed-ups are medians of per-round ratios)")

    margin = (options.get("window", 11)) // 2
    interior = interior_mask(clouds, margin)
    valid = (clouds != 0).all(dim=1)
    configs: list[tuple[str, torch.Tensor]] = []
    for label, extra in TORCH_CONFIGS:
        configs.append((label, compute_fpfh(clouds, backend="torch", **{**options, **extra})))
    if compiled_out is not None:
        configs.append(("window, camera normals, compiled", compiled_out))
    if graph_out is not None:
        configs.append(("window, camera normals, torch graph (cpu_kernel=False) [2 clouds]", graph_out))

    print(f"\n{PARITY_HEADER}\n|---|---|---:|---:|---:|---:|---:|---:|")
    for label, out in configs:
        count = out.shape[0]
        for region, mask in (("all valid", valid[:count]), (f"interior (≥{margin} px)", interior[:count])):
            print(parity_row(label, region, parity(reference[:count], out.cpu(), mask)))

    if graph_out is not None:
        count = graph_out.shape[0]
        stats = parity(graph_out, kernel_out[:count], valid[:count])
        off = (kernel_out[:count] - graph_out).abs().amax(dim=1)[valid[:count]]
        print(
            f"\nWindow kernels vs window torch graph ({count} clouds): corr. median {stats['corr_median']:.6f}, "
            f"p05 {stats['corr_p05']:.6f}; points off by > 1e-3: {float((off > 1e-3).float().mean()):.2%}, "
            f"> 1: {float((off > 1).float().mean()):.2%} (pair features within float32 rounding of a bin edge)"
        )

    if not args.no_geometry:
        geometry_parity(args.size, options)


TORCH_CONFIGS: tuple[tuple[str, dict[str, object]], ...] = (
    ("k-NN, Open3D normal signs (default)", {}),
    ("k-NN, camera normals", {"normal_orientation": "camera"}),
    ("window 11/7, camera normals, fast (old default)", {"search": "window", "normal_orientation": "camera"}),
    ("window 11/7, Open3D normal signs", {"search": "window"}),
    ("window 15/9, Open3D signs, exact", {"search": "window", "window": 15, "normal_window": 9, "selection": "exact"}),
)
"""Torch configurations compared with Open3D."""

PARITY_HEADER = (
    "| torch configuration | points | corr. p01 | corr. p05 | corr. median | corr. mean | rel. L1 median | "
    "rel. L1 mean |"
)

GEOMETRIES: tuple[tuple[str, int | tuple[int, int]], ...] = (
    ("bagel", 320),
    ("ring45", 320),
    ("ring60", 320),
    ("ring80", 320),
    ("dome", 320),
    ("box", 320),
    ("bagel", (240, 320)),
    ("ring60", (320, 240)),
)
"""Generated geometry (shape, sensor size), resized with nearest to the working size as BTM does."""


def parity_row(label: str, region: str, stats: dict[str, float]) -> str:
    """One Markdown row of :data:`PARITY_HEADER`."""
    return (
        f"| {label} | {region}, {stats['points']} | {stats['corr_p01']:.4f} | {stats['corr_p05']:.4f} | "
        f"{stats['corr_median']:.4f} | {stats['corr_mean']:.4f} | {stats['l1_median']:.4f} | {stats['l1_mean']:.4f} |"
    )


def geometry_parity(size: int, options: dict[str, object]) -> None:
    """Per-point parity with Open3D on steep walls, a dome, a tilted box and resized non-square sensors."""
    from anomalib_btm.data.synthetic import render_sample

    print(
        f"\nGenerated geometry (anomalib_btm.data.synthetic, one good sample each, resized to {size}² with nearest):"
        f"\n\n| geometry | {PARITY_HEADER[2:]}\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for shape, sensor in GEOMETRIES:
        xyz = torch.from_numpy(render_sample(sensor, seed=3, shape=shape).xyz).permute(2, 0, 1)[None]
        xyz = F.interpolate(xyz, size=(size, size), mode="nearest")
        reference = compute_fpfh(xyz, backend="open3d")
        valid = (xyz != 0).all(dim=1)
        name = f"{shape} {sensor if isinstance(sensor, int) else '×'.join(map(str, sensor))}"
        for label, extra in TORCH_CONFIGS[:4]:
            ours = compute_fpfh(xyz, backend="torch", **{**options, **extra})
            print(f"| {name} " + parity_row(label, "all valid", parity(reference, ours, valid)))


if __name__ == "__main__":
    main()
