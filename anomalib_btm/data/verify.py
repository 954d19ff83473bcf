# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Pre-flight checks of a dataset's files: every RGB image, XYZ cloud and mask decodes, and RGB and XYZ align.

BTM's Lightning module runs :func:`verify_sample_files` on every split when a fit starts, so that a missing,
half-copied or mis-shaped file stops the run with an error naming it instead of failing in a data-loader worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = ["check_sample_files", "verify_sample_files"]


def _blank(path: object) -> bool:
    """Whether a sample's optional path is absent (``None``, ``""`` or a pandas NaN)."""
    return path is None or (isinstance(path, float) and math.isnan(path)) or str(path) in {"", "nan", "None"}


def _decode_picture(path: str | Path, what: str, split: str) -> tuple[int, int]:
    """Decode a whole RGB image or mask with PIL (what anomalib's readers use).

    Args:
        path (str | Path): The file.
        what (str): ``"RGB"`` or ``"Mask"``, for messages.
        split (str): Split name, for messages.

    Returns:
        tuple[int, int]: ``(width, height)``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it cannot be decoded completely (truncated, damaged, not an image).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{what} file {path} ({split} split) is missing; restore it or remove its sample from the dataset."
        raise FileNotFoundError(msg)
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated or damaged file fails here
            return image.size
    except Exception as error:
        msg = (
            f"{what} file {path} ({split} split) cannot be decoded ({error}): the file is damaged or incomplete "
            "(a half-copied file?). Restore it or remove its sample from the dataset."
        )
        raise ValueError(msg) from error


def _decode_xyz(path: str | Path, split: str) -> tuple[int, ...]:
    """Decode a whole XYZ TIFF with tifffile (what anomalib's MVTec3D / Folder3D use).

    Args:
        path (str | Path): The file.
        split (str): Split name, for messages.

    Returns:
        tuple[int, ...]: The array's shape.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it is not a TIFF, cannot be decoded completely, or is not an ``(H, W, 3)`` cloud.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"XYZ file {path} ({split} split) is missing; restore it or remove its sample from the dataset."
        raise FileNotFoundError(msg)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as error:
        msg = f"XYZ file {path} is not a readable TIFF ({error}); re-export it as an (H, W, 3) float32 TIFF."
        raise ValueError(msg) from error
    with tif:
        try:
            shape = tuple(np.asarray(tif.asarray()).shape)  # decodes every strip / tile
        except Exception as error:
            msg = (
                f"XYZ file {path} ({split} split) cannot be decoded ({error}): the file is damaged or incomplete "
                "(a half-copied file?). Restore it or re-export it as an (H, W, 3) float32 TIFF."
            )
            raise ValueError(msg) from error
    if len(shape) != 3 or shape[-1] != 3:
        msg = (
            f"XYZ file {path} holds an array of shape {shape}, not an organized (H, W, 3) cloud; "
            "convert depth images with python -m anomalib_btm.data.depth."
        )
        raise ValueError(msg)
    return shape


def _verify_sample(
    image_path: str | Path, depth_path: object, mask_path: object, split: str, check_pairs: bool, tolerance: float
) -> None:
    """Decode one sample's files completely and check that its RGB and XYZ can be aligned (see ``verify_sample_files``).

    Args:
        image_path (str | Path): RGB file.
        depth_path (object): XYZ TIFF, or a blank value.
        mask_path (object): Mask, or a blank value.
        split (str): Split name, for messages.
        check_pairs (bool): Check the RGB / XYZ aspect ratios.
        tolerance (float): Allowed relative difference of the aspect ratios.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is damaged, or the pair cannot be aligned.
    """
    shape = None if _blank(depth_path) else _decode_xyz(str(depth_path), split)
    width, height = _decode_picture(image_path, "RGB", split)
    if not _blank(mask_path):
        _decode_picture(str(mask_path), "Mask", split)
    if shape is None or not check_pairs:
        return
    rgb_ratio, xyz_ratio = width / height, shape[1] / shape[0]
    if abs(rgb_ratio - xyz_ratio) > tolerance * xyz_ratio:
        msg = (
            f"RGB {image_path} is {width}×{height} but XYZ {depth_path} is {shape[1]}×{shape[0]}: their aspect "
            "ratios differ, so no resize aligns them. Pair each image with the cloud captured with it, or crop "
            "both alike."
        )
        raise ValueError(msg)


def verify_sample_files(
    image_paths: Sequence[str | Path],
    depth_paths: Sequence[object] | None = None,
    mask_paths: Sequence[object] | None = None,
    split: str = "train",
    check_pairs: bool = True,
    tolerance: float = 0.02,
    threads: int | None = None,
) -> None:
    """Decode every file a run will read — RGB, XYZ, mask — completely, before the first batch.

    A file that is only partly there (a half-copied TIFF or PNG) passes a header check and would otherwise fail inside
    a data-loader worker with a message that names no file (``failed to read 1228800 bytes, got 712``). Every file is
    decoded the way anomalib reads it (tifffile, PIL) on a few threads; the first bad sample, in order, raises an
    error that names the file and the split. Also checks what :func:`check_sample_files` checks (an ``(H, W, 3)``
    cloud, RGB and XYZ aspect ratios), the latter only with ``check_pairs``. It costs about as much as reading
    every file once (``benchmarks/verify_files.py`` prints both).

    Args:
        image_paths (Sequence[str | Path]): RGB files.
        depth_paths (Sequence[object] | None): XYZ TIFFs pixel-aligned with ``image_paths`` (blank entries — ``None``,
            ``""``, NaN — are skipped), or ``None`` for image-only data.
        mask_paths (Sequence[object] | None): Ground-truth masks (blank entries skipped), or ``None``.
        split (str): Split name used in messages (``"train"``, ``"val"``, ``"test"``).
        check_pairs (bool): Check that each RGB image and its cloud have the same aspect ratio.
        tolerance (float): Allowed relative difference of the aspect ratios.
        threads (int | None): Decoding threads; default ``min(4, cpu_count)``.

    Raises:
        FileNotFoundError: If a file is missing; names it and the split.
        ValueError: If a file cannot be decoded completely, a TIFF is not an ``(H, W, 3)`` cloud, or a pair's aspect
            ratios differ; names the file (and the split for damaged files).
    """
    count = len(image_paths)
    depths = list(depth_paths) if depth_paths is not None else [None] * count
    masks = list(mask_paths) if mask_paths is not None else [None] * count
    if not len(depths) == len(masks) == count:
        msg = f"image_paths, depth_paths and mask_paths differ in length ({count}, {len(depths)}, {len(masks)})."
        raise ValueError(msg)
    threads = threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        samples = zip(image_paths, depths, masks, strict=True)
        results = pool.map(lambda item: _verify_sample(*item, split, check_pairs, tolerance), samples)
        for _ in results:  # re-raises the first failure, in sample order
            pass


def check_sample_files(
    image_paths: Sequence[str | Path], depth_paths: Sequence[str | Path], tolerance: float = 0.02
) -> None:
    """Check RGB + XYZ file pairs before a run: :func:`verify_sample_files` with ``check_pairs=True``.

    Args:
        image_paths (Sequence[str | Path]): RGB files.
        depth_paths (Sequence[str | Path]): XYZ TIFF files, pixel-aligned with ``image_paths``.
        tolerance (float): Allowed relative difference of the aspect ratios.
    """
    verify_sample_files(image_paths, depth_paths, tolerance=tolerance)
