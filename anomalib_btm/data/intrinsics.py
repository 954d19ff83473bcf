# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Pinhole intrinsics of a depth image from a JSON file, in a fixed set of layouts (no guessing of key names).

The documented layout, written by ``python -m anomalib_btm.data.synthetic`` as ``calibration/camera_parameters.json``::

    {"fx": 500.0, "fy": 500.0, "cx": 319.5, "cy": 239.5, "image_width": 640, "image_height": 480}

``fx``, ``fy``, ``cx``, ``cy`` in pixels of the depth image; the size (``image_width``/``image_height`` or
``width``/``height``) is optional and, when present, checked against each depth image. Also read, each only with
exactly these keys (case-insensitive; the object may sit at the top level or under ``"intrinsics"`` or ``"camera"``):

* Open3D's ``PinholeCameraIntrinsic`` JSON (``width``, ``height``, column-major ``intrinsic_matrix``), read with
  ``open3d.io.read_pinhole_camera_intrinsic``;
* RealSense's ``ppx``/``ppy`` in place of ``cx``/``cy``;
* a row-major 3×3 ``camera_matrix`` or ``K`` (nested rows, a flat list of 9, or OpenCV's ``{"data": [...]}``);
* ``focal_length`` (scalar or ``[fx, fy]``) with ``principal_point`` (``[cx, cy]``);
* HALCON area-scan parameters (``focus`` and pixel pitch ``sx``, ``sy`` in metres, ``cx``, ``cy`` in pixels).

Any other file is refused with one line naming it and the documented layout.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_number", "load_intrinsics", "read_camera"]

_DISTORTION_KEYS = ("kappa", "k1", "k2", "k3", "p1", "p2", "dist", "distortion", "distortion_coefficients", "d")
_NESTED_KEYS = ("intrinsics", "camera")
FORMAT_HINT = (
    'write {"fx": ..., "fy": ..., "cx": ..., "cy": ...} in pixels of the depth image (optionally "image_width", '
    '"image_height"), or an Open3D PinholeCameraIntrinsic JSON (open3d.io.write_pinhole_camera_intrinsic)'
)
"""What a refused intrinsics file should hold instead."""

Camera = dict[str, float]


def check_number(name: str, value: float, positive: bool = True, unit: str = "") -> float:
    """Return ``value`` as a float, or raise a ``ValueError`` naming the argument.

    Args:
        name (str): Argument name for the message.
        value (float): The value.
        positive (bool): Require ``value > 0`` (else only finiteness).
        unit (str): Unit named in the message, e.g. ``" (metres)"``.

    Returns:
        float: The value.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (positive and number <= 0):
        msg = f"{name}={value!r} is invalid; pass a finite number{' > 0' if positive else ''}{unit}."
        raise ValueError(msg)
    return number


def _numbers(value: Any, size: int) -> np.ndarray | None:
    """``value`` as a flat float array of ``size`` numbers (``{"data": [...]}`` unwrapped), else ``None``."""
    if isinstance(value, Mapping):
        value = {str(key).lower(): item for key, item in value.items()}.get("data")
    if value is None or isinstance(value, str):
        return None
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return array if array.size == size else None


def _pinhole(keys: Mapping[str, Any]) -> Camera | None:
    cx, cy = keys.get("cx", keys.get("ppx")), keys.get("cy", keys.get("ppy"))
    if any(value is None for value in (keys.get("fx"), keys.get("fy"), cx, cy)):
        return None
    return {"fx": keys["fx"], "fy": keys["fy"], "cx": cx, "cy": cy}


def _matrix(keys: Mapping[str, Any]) -> Camera | None:
    matrix = _numbers(keys.get("camera_matrix", keys.get("k")), 9)
    if matrix is None:
        return None
    if not np.array_equal(matrix[6:], [0, 0, 1]):
        msg = (
            f"camera_matrix/K must be row-major [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]; its last row is {matrix[6:]} "
            "(a column-major matrix belongs in an Open3D file with width and height)"
        )
        raise ValueError(msg)
    if matrix[1] != 0:
        warnings.warn("The camera matrix has a skew term; it is ignored.", stacklevel=4)
    return {"fx": matrix[0], "fy": matrix[4], "cx": matrix[2], "cy": matrix[5]}


def _focal_principal(keys: Mapping[str, Any]) -> Camera | None:
    principal = _numbers(keys.get("principal_point"), 2)
    focal = _numbers(keys.get("focal_length"), 2)
    focal = _numbers(keys.get("focal_length"), 1) if focal is None else focal
    if focal is None or principal is None:
        return None
    return {"fx": focal[0], "fy": focal[-1], "cx": principal[0], "cy": principal[1]}


def _halcon(keys: Mapping[str, Any]) -> Camera | None:
    if any(keys.get(key) is None for key in ("focus", "sx", "sy", "cx", "cy")):
        return None
    focus, sx, sy = (check_number(key, keys[key], positive=False) for key in ("focus", "sx", "sy"))
    if focus == 0:
        msg = "focus is 0, i.e. a telecentric camera; depth_to_xyz needs a perspective (pinhole) camera"
        raise ValueError(msg)
    if sx == 0 or sy == 0:
        msg = "sx or sy (pixel pitch) is 0"
        raise ValueError(msg)
    return {"fx": focus / sx, "fy": focus / sy, "cx": keys["cx"], "cy": keys["cy"]}


_LAYOUTS: tuple[Callable[[Mapping[str, Any]], Camera | None], ...] = (_pinhole, _halcon, _matrix, _focal_principal)


def _open3d(path: Path) -> tuple[Camera, tuple[int, int]]:
    """Read an Open3D ``PinholeCameraIntrinsic`` JSON with Open3D itself."""
    import open3d as o3d

    camera = o3d.io.read_pinhole_camera_intrinsic(str(path))
    if camera.width <= 0 or camera.height <= 0:
        msg = f"Intrinsics file {path} is not a valid Open3D PinholeCameraIntrinsic JSON; {FORMAT_HINT}."
        raise ValueError(msg)
    (fx, fy), (cx, cy) = camera.get_focal_length(), camera.get_principal_point()
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy}, (int(camera.width), int(camera.height))


def _size(keys: Mapping[str, Any]) -> tuple[int, int] | None:
    width = keys.get("image_width", keys.get("width"))
    height = keys.get("image_height", keys.get("height"))
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
        return int(width), int(height)
    return None


def _warn_distortion(path: Path, keys: Mapping[str, Any]) -> None:
    distortion = []
    for key in _DISTORTION_KEYS:
        value = keys.get(key)
        if value is None or isinstance(value, (str, Mapping)):
            continue
        try:
            if np.any(np.asarray(value, dtype=np.float64) != 0):
                distortion.append(key)
        except (TypeError, ValueError):
            continue
    if distortion:
        warnings.warn(
            f"Intrinsics file {path} has non-zero lens distortion ({', '.join(distortion)}); it is ignored, "
            "so rectify the depth images first if the distortion matters.",
            stacklevel=4,
        )


def read_camera(path: str | Path) -> tuple[Camera, tuple[int, int] | None]:
    """Intrinsics and, when the file states it, the image size ``(width, height)`` (see :func:`load_intrinsics`).

    Args:
        path (str | Path): The JSON file.

    Returns:
        tuple[Camera, tuple[int, int] | None]: ``{"fx", "fy", "cx", "cy"}`` and the size or ``None``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not JSON, holds no supported layout, or holds invalid values; names the file.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Intrinsics file {path} does not exist."
        raise FileNotFoundError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        msg = f"Intrinsics file {path} is not valid JSON ({error})."
        raise ValueError(msg) from error
    if not isinstance(data, Mapping):
        msg = f"Intrinsics file {path} must hold a JSON object, not {type(data).__name__}."
        raise ValueError(msg)
    top = {str(key).strip().lower(): value for key, value in data.items()}
    if {"intrinsic_matrix", "width", "height"} <= set(data):
        return _open3d(path)
    candidates = [top] + [
        {str(key).strip().lower(): value for key, value in top[name].items()}
        for name in _NESTED_KEYS
        if isinstance(top.get(name), Mapping)
    ]
    for keys in candidates:
        for layout in _LAYOUTS:
            try:
                camera = layout(keys)
                if camera is None:
                    continue
                camera = {key: check_number(key, value, positive=key.startswith("f")) for key, value in camera.items()}
            except ValueError as error:
                msg = f"Intrinsics file {path}: {str(error).rstrip('.')}."
                raise ValueError(msg) from error
            _warn_distortion(path, keys)
            return camera, _size(keys)
    msg = (
        f"Intrinsics file {path} holds no pinhole intrinsics in a supported layout "
        f"(keys: {', '.join(map(str, data)) or 'none'}); {FORMAT_HINT}."
    )
    raise ValueError(msg)


def load_intrinsics(path: str | Path) -> Camera:
    """Read pinhole intrinsics from a JSON file in one of the layouts of this module's docstring.

    Lens distortion coefficients, if present and non-zero, are ignored with a warning.

    Args:
        path: The JSON file.

    Returns:
        ``{"fx": ..., "fy": ..., "cx": ..., "cy": ...}`` as floats, ready for ``depth_to_xyz(depth, **intrinsics)``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not JSON, has no intrinsics in a supported layout, or holds invalid values (the message
            names the file and the documented layout).
    """
    return read_camera(path)[0]
