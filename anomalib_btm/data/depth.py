# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Depth images to organized point clouds in metres: :func:`depth_to_xyz`, a folder converter and its command line.

BTM consumes organized ``(H, W, 3)`` XYZ clouds in metres (see :mod:`anomalib_btm.data.cloud`). Many sensors deliver
a depth image instead; :func:`depth_to_xyz` back-projects it with the pinhole intrinsics of the depth image (read by
:func:`~anomalib_btm.data.intrinsics.load_intrinsics`).

Conventions:

* Pixel ``(row v, column u)`` has its centre at image coordinates ``(u, v)`` (integer coordinates are pixel centres,
  as in OpenCV and HALCON), so the point seen by it is ``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy``, ``Z =
  depth * depth_scale``. If your calibration puts pixel centres at ``u + 0.5``, subtract 0.5 from ``cx`` and ``cy``.
* Depth 0 is "no measurement" and becomes ``(0, 0, 0)``. Lens distortion is ignored (rectify the depth image first).
* The depth image must be registered to the RGB image (same size, same pixel grid) so that Folder3D's pairing of
  ``rgb/NNN.png`` with ``xyz/NNN.tiff`` puts each 3-D point under its colour pixel.

This module also re-exports the cloud, intrinsics and pre-flight functions it used to hold (``read_xyz``,
``check_metric_units``, ``load_intrinsics``, ``verify_sample_files``...).

Command line (converts a folder of depth images into XYZ TIFFs with the same stems; sources are never modified)::

    python -m anomalib_btm.data.depth DEPTH_DIR XYZ_DIR --intrinsics camera.json --depth-scale 0.001
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from anomalib_btm.cli import ArgumentParser, run, signature_defaults
from anomalib_btm.data.cloud import check_metric_units, read_xyz, validate_xyz, write_xyz
from anomalib_btm.data.intrinsics import check_number, load_intrinsics, read_camera
from anomalib_btm.data.verify import check_sample_files, verify_sample_files
from anomalib_btm.files import atomic_write

__all__ = [
    "DEPTH_SUFFIXES",
    "atomic_write",
    "check_metric_units",
    "check_number",
    "check_sample_files",
    "convert_depth_dir",
    "depth_to_xyz",
    "load_intrinsics",
    "main",
    "read_depth",
    "read_xyz",
    "validate_xyz",
    "verify_sample_files",
    "write_xyz",
]

DEPTH_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")
"""File suffixes :func:`read_depth` and the converter pick up by default."""

ZERO_NUDGE = 1e-9
"""Value (metres) that replaces an exact-zero X or Y of a *valid* point (see :func:`depth_to_xyz`)."""


def depth_to_xyz(
    depth: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    depth_scale: float = 0.001,
) -> np.ndarray:
    """Back-project a depth image into an organized point cloud in metres.

    ``Z = depth * depth_scale`` is the distance along the optical axis; pixel ``(v, u)`` (row, column), whose centre
    is at image coordinates ``(u, v)``, becomes ``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy``. Depth 0 means
    "missing" and gives ``(0, 0, 0)``.

    A valid point whose X or Y would be exactly 0 (the column ``u == cx`` or the row ``v == cy`` when the principal
    point lies on a pixel centre) gets ``ZERO_NUDGE`` (1 nm) there instead, because BTM/BTF treat a point with any
    zero coordinate as missing.

    Args:
        depth: ``(H, W)`` (or ``(H, W, 1)``) depth image, integer or float, in sensor units; 0 = missing.
        fx: Focal length along x (columns), pixels.
        fy: Focal length along y (rows), pixels.
        cx: Principal point column, pixels.
        cy: Principal point row, pixels.
        depth_scale: Metres per depth unit: 0.001 for millimetres (16-bit PNGs of most sensors), 1.0 for depth
            already in metres, 1e-4 for 0.1 mm units.

    Returns:
        ``(H, W, 3)`` float32 XYZ in metres.

    Raises:
        ValueError: If ``depth`` is not a single-channel image, contains NaN/inf or negative values, or an intrinsic
            parameter or ``depth_scale`` is not finite (focal lengths and scale must also be > 0).
    """
    fx = check_number("fx", fx)
    fy = check_number("fy", fy)
    cx = check_number("cx", cx, positive=False)
    cy = check_number("cy", cy, positive=False)
    depth_scale = check_number("depth_scale", depth_scale)

    array = np.asarray(depth)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        msg = f"depth must be a single-channel (H, W) image; got shape {array.shape}."
        raise ValueError(msg)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        msg = f"depth must hold integer or float depth values; got dtype {array.dtype}."
        raise ValueError(msg)
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            msg = (
                f"depth contains {int(bad.sum())} NaN/inf values; mark missing measurements with 0 "
                "(e.g. depth[~np.isfinite(depth)] = 0) before converting."
            )
            raise ValueError(msg)
    if (array < 0).any():
        msg = f"depth contains {int((array < 0).sum())} negative values; depth must be >= 0 (0 = missing)."
        raise ValueError(msg)

    z = array.astype(np.float64) * depth_scale
    height, width = z.shape
    u = (np.arange(width, dtype=np.float64) - cx) / fx
    v = (np.arange(height, dtype=np.float64) - cy) / fy
    xyz = np.empty((height, width, 3), dtype=np.float32)
    xyz[..., 0] = u[None, :] * z
    xyz[..., 1] = v[:, None] * z
    xyz[..., 2] = z
    valid = xyz[..., 2] > 0
    xyz[~valid] = 0.0
    zero_xy = (xyz[..., :2] == 0) & valid[..., None]
    if zero_xy.any():
        xyz[..., :2][zero_xy] = np.float32(ZERO_NUDGE)
    return xyz


def read_depth(path: str | Path) -> np.ndarray:
    """Read a single-channel depth image (16-bit PNG, or integer/float TIFF) without changing its values or dtype.

    Units are whatever the file holds (millimetres in 16-bit PNGs of most sensors; TIFFs may hold millimetres or
    metres); :func:`depth_to_xyz`'s ``depth_scale`` turns them into metres.

    Args:
        path: ``.png``, ``.tif``/``.tiff`` (other formats Pillow reads also work).

    Returns:
        ``(H, W)`` array in the file's dtype (``uint16`` for 16-bit PNGs).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file cannot be read or is not a single-channel image (e.g. an RGB image or an XYZ cloud).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Depth image {path} does not exist."
        raise FileNotFoundError(msg)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as image:
                mode = image.mode
                array = np.asarray(image)
            if mode in ("L", "P", "1"):
                warnings.warn(
                    f"Depth image {path} is 8-bit ({mode}); 8-bit depth is usually a visualisation, not a measurement.",
                    stacklevel=2,
                )
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        msg = f"Depth image {path} could not be read ({error})."
        raise ValueError(msg) from error
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        hint = ""
        if array.ndim == 3 and array.shape[-1] == 3:
            hint = (
                " A 3-channel TIFF is probably already an XYZ point cloud (use it directly);"
                " a 3-channel PNG is an RGB image or a colour-mapped depth visualisation."
            )
        msg = f"Depth image {path} must be single-channel; got shape {array.shape}.{hint}"
        raise ValueError(msg)
    return array


# --------------------------------------------------------------------------------------------------------------------
# Folder conversion and command line
# --------------------------------------------------------------------------------------------------------------------


def _list_inputs(input_dir: Path, pattern: str | None) -> list[Path]:
    if pattern is None:
        files = [p for p in input_dir.iterdir() if p.suffix.lower() in DEPTH_SUFFIXES]
    else:
        files = list(input_dir.glob(pattern))
    return sorted(p for p in files if p.is_file() and not p.name.startswith("."))


def convert_depth_dir(
    input_dir: str | Path,
    output_dir: str | Path,
    intrinsics: str | Path | Mapping[str, float],
    depth_scale: float = 0.001,
    pattern: str | None = None,
    overwrite: bool = False,
    check_units: bool = True,
) -> list[Path]:
    """Convert every depth image of a folder into an XYZ TIFF with the same stem.

    ``INPUT_DIR/NNN.png`` becomes ``OUTPUT_DIR/NNN.tiff`` (float32, ``(H, W, 3)``, metres). Each file is written
    atomically; the sources are only read. Nothing is written if the inputs are ambiguous (two files with one stem)
    or an output already exists (unless ``overwrite``); a file that fails conversion stops the run with an error naming
    it (files converted before it stay, complete).

    Args:
        input_dir: Folder with the depth images (not searched recursively).
        output_dir: Destination folder (created if missing). May not contain the inputs' output names as sources.
        intrinsics: JSON file for :func:`load_intrinsics`, or a mapping with ``fx``, ``fy``, ``cx``, ``cy``.
        depth_scale: Metres per depth unit.
        pattern: Glob pattern inside ``input_dir``; default: every ``.png``, ``.tif`` and ``.tiff``.
        overwrite: Replace existing outputs.
        check_units: Run :func:`check_metric_units` on every converted cloud.

    Returns:
        The written files, sorted.

    Raises:
        FileNotFoundError: If ``input_dir`` or the intrinsics file does not exist.
        ValueError: On no matching input, duplicate stems, an output that would replace an input, existing outputs
            without ``overwrite``, a depth image whose size differs from the intrinsics' image size, or a failed
            conversion or unit check.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        msg = f"Input folder {input_dir} does not exist or is not a folder."
        raise FileNotFoundError(msg)
    size: tuple[int, int] | None = None
    if isinstance(intrinsics, Mapping):
        camera = {key: float(intrinsics[key]) for key in ("fx", "fy", "cx", "cy")}
    else:
        camera, size = read_camera(intrinsics)
    depth_scale = check_number("depth_scale", depth_scale)

    sources = _list_inputs(input_dir, pattern)
    if not sources:
        wanted = pattern if pattern is not None else "*" + ", *".join(DEPTH_SUFFIXES)
        msg = f"No depth images matching {wanted} in {input_dir}."
        raise ValueError(msg)
    targets = [output_dir / f"{source.stem}.tiff" for source in sources]
    stems: dict[str, Path] = {}
    for source in sources:
        if source.stem in stems:
            msg = f"{stems[source.stem].name} and {source.name} in {input_dir} share a stem; keep one of them."
            raise ValueError(msg)
        stems[source.stem] = source
    resolved_sources = {source.resolve() for source in sources}
    for target in targets:
        if target.resolve() in resolved_sources:
            msg = f"Output {target} would replace an input file; choose another output folder."
            raise ValueError(msg)
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        names = ", ".join(t.name for t in existing[:3]) + (" …" if len(existing) > 3 else "")
        msg = (
            f"{len(existing)} output file(s) already exist in {output_dir} ({names}); "
            "pass overwrite=True (--overwrite) to replace them."
        )
        raise ValueError(msg)

    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for source, target in zip(sources, targets, strict=True):
        depth = read_depth(source)
        if size is not None and (depth.shape[1], depth.shape[0]) != size:
            msg = (
                f"Depth image {source} is {depth.shape[1]}×{depth.shape[0]} px but the intrinsics are for "
                f"{size[0]}×{size[1]} px; scale fx, fy, cx, cy to the depth image's resolution."
            )
            raise ValueError(msg)
        try:
            xyz = depth_to_xyz(depth, depth_scale=depth_scale, **camera)
        except ValueError as error:
            msg = f"Depth image {source}: {error}"
            raise ValueError(msg) from error
        if check_units:
            check_metric_units(xyz, source)
        written.append(write_xyz(xyz, target))
    return written


def _build_parser() -> ArgumentParser:
    defaults = signature_defaults(convert_depth_dir)
    parser = ArgumentParser(
        prog="python -m anomalib_btm.data.depth",
        description=(
            "Convert a folder of depth images (16-bit PNG or TIFF) into organized XYZ point clouds in metres "
            "(float32 H×W×3 TIFFs with the same stems), for anomalib's Folder3D / MVTec 3D-AD layout."
        ),
    )
    parser.add_argument("input_dir", type=Path, help="folder with the depth images (read only)")
    parser.add_argument("output_dir", type=Path, help="folder for the XYZ TIFFs (created if missing)")
    parser.add_argument(
        "--intrinsics",
        type=Path,
        required=True,
        help='JSON {"fx", "fy", "cx", "cy"} in pixels, or Open3D PinholeCameraIntrinsic JSON',
    )
    parser.add_argument(
        "--depth-scale",
        type=float,
        default=defaults["depth_scale"],
        help="metres per depth unit: 0.001 for millimetres, 1 for metres",
    )
    parser.add_argument("--glob", dest="pattern", default=None, help="input pattern (default: *.png, *.tif, *.tiff)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-unit-check", action="store_true", help="skip the check that the result is in metres")
    return parser


def _convert(args: argparse.Namespace) -> int:
    written = convert_depth_dir(
        args.input_dir,
        args.output_dir,
        args.intrinsics,
        depth_scale=args.depth_scale,
        pattern=args.pattern,
        overwrite=args.overwrite,
        check_units=not args.no_unit_check,
    )
    print(f"converted {len(written)} depth image(s) from {args.input_dir} to {args.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0 on success, 2 on invalid arguments or a failed conversion (one line on stderr).
    """
    return run(_build_parser(), argv, _convert)


if __name__ == "__main__":
    sys.exit(main())
