# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Optional background removal for organized point clouds (BTF's preprocessing), non-destructive and cached.

BTM's and BTF's headline MVTec 3D-AD numbers are on **raw** clouds; this preprocessing is an option. Steps, with BTF's
parameters as defaults:

1. Fit a plane with Open3D's RANSAC (``segment_plane``: inlier distance 0.004 m, ``ransac_n`` 50, 1000 iterations) to
   the valid points of the ``border``-pixel frame of the image, which shows the background.
2. Remove every point within ``plane_distance`` (0.005 m) of that plane, on either side.
3. Cluster the remaining points with DBSCAN (Open3D ``cluster_dbscan``, eps 0.006 m, 30 points) and keep the largest
   cluster.

Removed points become ``(0, 0, 0)`` in the cloud and 0 in the RGB image (pixels that were already missing in the
cloud keep their colour). Inputs are never modified: :func:`remove_background` returns copies, and
:func:`remove_background_cached` / the command line write new files.

Cost: Open3D's DBSCAN gathers every point's eps-neighbourhood, so time and memory grow with the number of points times
the points per neighbourhood: large clouds with dense neighbourhoods cost minutes and gigabytes. Above
``dbscan_max_points`` remaining points (default 50,000), DBSCAN therefore runs on a regular grid subsample (every
k-th row and column, k = ceil(sqrt(n / dbscan_max_points)), with ``min_points`` divided by k²), and a point of the full
cloud is kept iff it lies within eps of a point of the subsample's largest cluster — DBSCAN's own rule for border
points. Pass ``dbscan_max_points=None`` for exact DBSCAN on all points.

Command line (writes ``OUTPUT_DIR/xyz/<stem>.tiff`` and, with ``--rgb-dir``, ``OUTPUT_DIR/rgb/<stem>.png``, reusing a
cache in ``OUTPUT_DIR/.cache`` unless ``--cache-dir`` says otherwise)::

    python -m anomalib_btm.data.background XYZ_DIR OUTPUT_DIR --rgb-dir RGB_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomalib_btm.cli import ArgumentParser, run, signature_defaults
from anomalib_btm.data.cloud import read_xyz, validate_xyz, write_xyz
from anomalib_btm.data.intrinsics import check_number
from anomalib_btm.files import atomic_write

__all__ = ["foreground_mask", "main", "remove_background", "remove_background_cached", "remove_background_dir"]

_CACHE_VERSION = 1
_RGB_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        msg = f"{name}={value!r} is invalid; pass an integer >= {minimum}."
        raise ValueError(msg)
    return int(value)


def _check_float(name: str, value: float) -> float:
    return check_number(name, value, unit=" (metres)")


def _largest_cluster(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """Boolean mask of the points of the largest DBSCAN cluster (all False when everything is noise)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    labels = np.asarray(cloud.cluster_dbscan(eps=eps, min_points=min_points, print_progress=False))
    clustered = labels >= 0
    if not clustered.any():
        return clustered
    return labels == np.bincount(labels[clustered]).argmax()


def foreground_mask(
    xyz: np.ndarray,
    border: int = 10,
    plane_distance: float = 0.005,
    ransac_distance: float = 0.004,
    ransac_n: int = 50,
    iterations: int = 1000,
    dbscan_eps: float = 0.006,
    dbscan_min_points: int = 30,
    dbscan_max_points: int | None = 50_000,
    seed: int = 0,
) -> np.ndarray:
    """Mask of the points that background removal keeps (see the module docstring for the steps).

    Args:
        xyz: ``(H, W, 3)`` organized cloud in metres, missing points ``(0, 0, 0)``.
        border: Width in pixels of the image frame whose valid points fit the background plane.
        plane_distance: Points closer than this to the plane (metres) are background.
        ransac_distance: RANSAC inlier distance (metres).
        ransac_n: Points per RANSAC hypothesis (BTF: 50).
        iterations: RANSAC iterations.
        dbscan_eps: DBSCAN neighbourhood radius (metres).
        dbscan_min_points: DBSCAN minimum neighbourhood size (the point itself included, as in Open3D).
        dbscan_max_points: Above this many points left after plane removal, cluster a grid subsample (module
            docstring); ``None`` always clusters all points exactly.
        seed: Seed of Open3D's global random generator, set before RANSAC (so results are reproducible).

    Returns:
        ``(H, W)`` bool mask, True where a valid point is kept.

    Raises:
        ValueError: On an invalid cloud or parameter, too few valid border points for RANSAC, or when nothing would
            remain (plane removal or DBSCAN dropped every point).
    """
    import open3d as o3d

    cloud = validate_xyz(xyz)
    height, width, _ = cloud.shape
    border = _check_int("border", border, 1)
    ransac_n = _check_int("ransac_n", ransac_n, 3)
    iterations = _check_int("iterations", iterations, 1)
    dbscan_min_points = _check_int("dbscan_min_points", dbscan_min_points, 1)
    if dbscan_max_points is not None:
        dbscan_max_points = _check_int("dbscan_max_points", dbscan_max_points, 100)
    plane_distance = _check_float("plane_distance", plane_distance)
    ransac_distance = _check_float("ransac_distance", ransac_distance)
    dbscan_eps = _check_float("dbscan_eps", dbscan_eps)
    seed = _check_int("seed", seed, 0)
    if 2 * border >= min(height, width):
        msg = f"border={border} leaves no interior in a {width}×{height} cloud; pass a smaller border."
        raise ValueError(msg)

    valid = np.all(cloud != 0, axis=-1)
    frame = np.ones((height, width), dtype=bool)
    frame[border:-border, border:-border] = False
    border_points = cloud[frame & valid]
    if len(border_points) < max(ransac_n, 3):
        msg = (
            f"Only {len(border_points)} valid points in the {border}-px image border, fewer than ransac_n={ransac_n}: "
            "the background plane cannot be fitted. Widen `border`, lower `ransac_n`, or skip background removal."
        )
        raise ValueError(msg)

    o3d.utility.random.seed(seed)
    plane_cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(border_points.astype(np.float64)))
    model, _ = plane_cloud.segment_plane(
        distance_threshold=ransac_distance, ransac_n=ransac_n, num_iterations=iterations
    )
    model = np.asarray(model, dtype=np.float64)
    norm = float(np.linalg.norm(model[:3]))
    if not math.isfinite(norm) or norm == 0:
        msg = "RANSAC returned a degenerate plane; check that the image border shows the background."
        raise ValueError(msg)
    distance = np.abs(cloud.astype(np.float64) @ model[:3] + model[3]) / norm
    keep = valid & (distance > plane_distance)
    if not keep.any():
        msg = "Plane removal left no point: the whole cloud lies within plane_distance of the background plane."
        raise ValueError(msg)

    rows, cols = np.nonzero(keep)
    count = len(rows)
    stride = 1
    if dbscan_max_points is not None and count > dbscan_max_points:
        stride = math.ceil(math.sqrt(count / dbscan_max_points))
    if stride == 1:
        in_cluster = _largest_cluster(cloud[rows, cols], dbscan_eps, dbscan_min_points)
        kept_rows, kept_cols = rows[in_cluster], cols[in_cluster]
    else:
        from scipy.spatial import cKDTree

        sample = (rows % stride == 0) & (cols % stride == 0)
        sample_points = cloud[rows[sample], cols[sample]]
        in_cluster = _largest_cluster(sample_points, dbscan_eps, max(1, math.ceil(dbscan_min_points / stride**2)))
        if in_cluster.any():
            tree = cKDTree(sample_points[in_cluster].astype(np.float64))
            distances, _ = tree.query(cloud[rows, cols].astype(np.float64), k=1, distance_upper_bound=dbscan_eps)
            near = np.isfinite(distances)
        else:
            near = np.zeros(count, dtype=bool)
        kept_rows, kept_cols = rows[near], cols[near]
    if len(kept_rows) == 0:
        msg = (
            "DBSCAN found no cluster among the points left after plane removal (all noise); lower "
            "dbscan_min_points or raise dbscan_eps."
        )
        raise ValueError(msg)
    mask = np.zeros((height, width), dtype=bool)
    mask[kept_rows, kept_cols] = True
    return mask


def remove_background(
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    border: int = 10,
    plane_distance: float = 0.005,
    ransac_distance: float = 0.004,
    ransac_n: int = 50,
    iterations: int = 1000,
    dbscan_eps: float = 0.006,
    dbscan_min_points: int = 30,
    dbscan_max_points: int | None = 50_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Remove the background plane and small clusters from an organized cloud (BTF's preprocessing).

    Args:
        xyz: ``(H, W, 3)`` organized cloud in metres, missing points ``(0, 0, 0)``.
        rgb: Optional pixel-aligned image ``(H, W, C)`` or ``(H, W)`` (any dtype); removed points are set to 0 in it.
        border: See :func:`foreground_mask`.
        plane_distance: See :func:`foreground_mask`.
        ransac_distance: See :func:`foreground_mask`.
        ransac_n: See :func:`foreground_mask`.
        iterations: See :func:`foreground_mask`.
        dbscan_eps: See :func:`foreground_mask`.
        dbscan_min_points: See :func:`foreground_mask`.
        dbscan_max_points: See :func:`foreground_mask`.
        seed: See :func:`foreground_mask`.

    Returns:
        ``(xyz, rgb)``: new arrays (float32 cloud; ``rgb`` in its own dtype, or ``None`` if none was given) with the
        removed points set to 0. Points that were already missing keep their RGB values.

    Raises:
        ValueError: On an invalid cloud or parameter, an RGB image of another size, or a failed removal (see
            :func:`foreground_mask`).
    """
    cloud = validate_xyz(xyz)
    image = None
    if rgb is not None:
        image = np.array(rgb, copy=True)
        if image.shape[:2] != cloud.shape[:2]:
            msg = f"rgb has shape {image.shape}; it must be pixel-aligned with xyz {cloud.shape} (same H, W)."
            raise ValueError(msg)
    keep = foreground_mask(
        cloud,
        border=border,
        plane_distance=plane_distance,
        ransac_distance=ransac_distance,
        ransac_n=ransac_n,
        iterations=iterations,
        dbscan_eps=dbscan_eps,
        dbscan_min_points=dbscan_min_points,
        dbscan_max_points=dbscan_max_points,
        seed=seed,
    )
    removed = np.all(cloud != 0, axis=-1) & ~keep
    out = cloud.copy()
    out[removed] = 0
    if image is not None:
        image[removed] = 0
    return out, image


_PARAMETERS = {
    name: parameter.default
    for name, parameter in inspect.signature(remove_background).parameters.items()
    if name not in ("xyz", "rgb")
}


def _file_key(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_mtime_ns, stat.st_size]


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except OSError as error:
        msg = f"RGB image {path} could not be read ({error})."
        raise ValueError(msg) from error


def remove_background_cached(
    xyz_path: str | Path,
    cache_dir: str | Path,
    rgb_path: str | Path | None = None,
    **params: Any,
) -> Path:
    """Background removal of a file, cached on disk.

    The result is written to ``cache_dir/<stem>-<key>.tiff`` (and, with ``rgb_path``, the processed image to
    ``cache_dir/<stem>-<key>.png``, i.e. the returned path with suffix ``.png``), where ``<key>`` hashes the resolved
    source path(s), their modification time and size, and all parameters. A later call with the same inputs returns
    the cached file without recomputing; editing a source or changing a parameter gives a new key. Sources are only
    read; files are written atomically (the TIFF last, so its presence means the entry is complete).

    Args:
        xyz_path: Organized XYZ TIFF (metres).
        cache_dir: Cache folder (created if missing).
        rgb_path: Optional pixel-aligned RGB image to process along.
        **params: Keyword arguments of :func:`remove_background` (defaults: BTF's parameters).

    Returns:
        Path of the processed XYZ TIFF in the cache.

    Raises:
        TypeError: On an unknown parameter name.
        FileNotFoundError: If a source file does not exist.
        ValueError: If a source is invalid or background removal fails (the message names the file).
    """
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        msg = f"remove_background_cached() got unknown parameter(s) {', '.join(unknown)}; use {', '.join(_PARAMETERS)}."
        raise TypeError(msg)
    settings = {**_PARAMETERS, **params}
    xyz_path = Path(xyz_path)
    if not xyz_path.is_file():
        msg = f"XYZ cloud {xyz_path} does not exist."
        raise FileNotFoundError(msg)
    rgb_file = None if rgb_path is None else Path(rgb_path)
    if rgb_file is not None and not rgb_file.is_file():
        msg = f"RGB image {rgb_file} does not exist."
        raise FileNotFoundError(msg)
    description = {
        "version": _CACHE_VERSION,
        "xyz": _file_key(xyz_path),
        "rgb": None if rgb_file is None else _file_key(rgb_file),
        "params": settings,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = Path(cache_dir)
    target = cache / f"{xyz_path.stem}-{key}.tiff"
    rgb_target = target.with_suffix(".png")
    if target.is_file() and (rgb_file is None or rgb_target.is_file()):
        return target

    xyz = read_xyz(xyz_path)
    rgb = None if rgb_file is None else _read_rgb(rgb_file)
    try:
        out, rgb_out = remove_background(xyz, rgb, **settings)
    except ValueError as error:
        msg = f"Background removal of {xyz_path} failed: {error}"
        raise ValueError(msg) from error
    cache.mkdir(parents=True, exist_ok=True)
    if rgb_out is not None:
        atomic_write(rgb_target, lambda tmp: Image.fromarray(rgb_out).save(tmp, format="PNG"))
    write_xyz(out, target)
    return target


def _copy(source: Path, target: Path) -> None:
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def remove_background_dir(
    xyz_dir: str | Path,
    output_dir: str | Path,
    rgb_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    **params: Any,
) -> list[Path]:
    """Background removal of a folder of XYZ TIFFs into ``output_dir/xyz/<stem>.tiff`` (+ ``output_dir/rgb``).

    Uses :func:`remove_background_cached`, so a re-run with the same inputs and parameters only copies cached results.
    With ``rgb_dir``, each cloud's RGB image is the file with the same stem there, and the processed images go to
    ``output_dir/rgb/<stem>.png``. The output folders then suit anomalib's ``Folder3D`` (same stems, same order).

    Args:
        xyz_dir: Folder with ``*.tiff`` / ``*.tif`` clouds.
        output_dir: Destination root.
        rgb_dir: Optional folder with the pixel-aligned RGB images.
        cache_dir: Cache folder; default ``output_dir/.cache``.
        **params: Keyword arguments of :func:`remove_background`.

    Returns:
        The written XYZ files.

    Raises:
        FileNotFoundError: If a folder or a matching RGB image is missing.
        ValueError: If there is no cloud, or a cloud fails.
    """
    xyz_dir, output_dir = Path(xyz_dir), Path(output_dir)
    if not xyz_dir.is_dir():
        msg = f"XYZ folder {xyz_dir} does not exist."
        raise FileNotFoundError(msg)
    sources = sorted(
        p for p in xyz_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file() and p.name[0] != "."
    )
    if not sources:
        msg = f"No *.tiff clouds in {xyz_dir}."
        raise ValueError(msg)
    rgb_by_stem: dict[str, Path] = {}
    if rgb_dir is not None:
        rgb_dir = Path(rgb_dir)
        if not rgb_dir.is_dir():
            msg = f"RGB folder {rgb_dir} does not exist."
            raise FileNotFoundError(msg)
        rgb_by_stem = {p.stem: p for p in sorted(rgb_dir.iterdir()) if p.suffix.lower() in _RGB_SUFFIXES}
        missing = [p.name for p in sources if p.stem not in rgb_by_stem]
        if missing:
            msg = f"No RGB image in {rgb_dir} for {len(missing)} cloud(s) ({', '.join(missing[:3])})."
            raise FileNotFoundError(msg)
    cache = Path(cache_dir) if cache_dir is not None else output_dir / ".cache"
    (output_dir / "xyz").mkdir(parents=True, exist_ok=True)
    if rgb_by_stem:
        (output_dir / "rgb").mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        rgb = rgb_by_stem.get(source.stem)
        cached = remove_background_cached(source, cache, rgb, **params)
        if rgb is not None:
            _copy(cached.with_suffix(".png"), output_dir / "rgb" / f"{source.stem}.png")
        target = output_dir / "xyz" / f"{source.stem}.tiff"
        _copy(cached, target)
        written.append(target)
    return written


_DEFAULTS = signature_defaults(remove_background)
"""The command line's defaults: :func:`remove_background`'s."""


def _build_parser() -> ArgumentParser:
    defaults = _DEFAULTS
    parser = ArgumentParser(
        prog="python -m anomalib_btm.data.background",
        description="Remove the background plane from organized XYZ clouds (BTF's preprocessing), with a cache.",
    )
    parser.add_argument("xyz_dir", type=Path, help="folder with XYZ TIFFs (read only)")
    parser.add_argument("output_dir", type=Path, help="writes OUTPUT_DIR/xyz/<stem>.tiff (and rgb/<stem>.png)")
    parser.add_argument("--rgb-dir", type=Path, default=None, help="pixel-aligned RGB images with the same stems")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: OUTPUT_DIR/.cache)")
    parser.add_argument("--border", type=int, default=defaults["border"], help="border width for the plane fit, px")
    parser.add_argument("--plane-distance", type=float, default=defaults["plane_distance"], help="metres")
    parser.add_argument("--dbscan-eps", type=float, default=defaults["dbscan_eps"], help="metres")
    parser.add_argument("--dbscan-min-points", type=int, default=defaults["dbscan_min_points"], help="points")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="RANSAC seed")
    return parser


def _remove(args: argparse.Namespace) -> int:
    written = remove_background_dir(
        args.xyz_dir,
        args.output_dir,
        rgb_dir=args.rgb_dir,
        cache_dir=args.cache_dir,
        border=args.border,
        plane_distance=args.plane_distance,
        dbscan_eps=args.dbscan_eps,
        dbscan_min_points=args.dbscan_min_points,
        seed=args.seed,
    )
    print(f"processed {len(written)} cloud(s) from {args.xyz_dir} into {args.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 on an error (one line on stderr).
    """
    return run(_build_parser(), argv, _remove)


if __name__ == "__main__":
    sys.exit(main())
