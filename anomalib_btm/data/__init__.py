# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Data utilities: synthetic MVTec 3D-AD data, XYZ clouds, depth + intrinsics → XYZ, file checks, background removal.

The names are loaded lazily, so that ``python -m anomalib_btm.data.<module>`` does not import the module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_btm.lazy import lazy_attributes

if TYPE_CHECKING:
    from anomalib_btm.data.background import (
        foreground_mask,
        remove_background,
        remove_background_cached,
        remove_background_dir,
    )
    from anomalib_btm.data.cloud import check_metric_units, read_xyz, validate_xyz, write_xyz
    from anomalib_btm.data.depth import convert_depth_dir, depth_to_xyz, read_depth
    from anomalib_btm.data.intrinsics import load_intrinsics
    from anomalib_btm.data.synthetic import (
        DEFECT_TYPES,
        GEOMETRIC_DEFECTS,
        SHAPES,
        generate_category,
        render_sample,
        sample_seed,
    )
    from anomalib_btm.data.verify import verify_sample_files

_MODULES: dict[str, tuple[str, ...]] = {
    "anomalib_btm.data.synthetic": (
        "DEFECT_TYPES",
        "GEOMETRIC_DEFECTS",
        "SHAPES",
        "generate_category",
        "render_sample",
        "sample_seed",
    ),
    "anomalib_btm.data.cloud": ("check_metric_units", "read_xyz", "validate_xyz", "write_xyz"),
    "anomalib_btm.data.depth": ("convert_depth_dir", "depth_to_xyz", "read_depth"),
    "anomalib_btm.data.intrinsics": ("load_intrinsics",),
    "anomalib_btm.data.verify": ("verify_sample_files",),
    "anomalib_btm.data.background": (
        "foreground_mask",
        "remove_background",
        "remove_background_cached",
        "remove_background_dir",
    ),
}
_WHERE: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "DEFECT_TYPES",
    "GEOMETRIC_DEFECTS",
    "SHAPES",
    "check_metric_units",
    "convert_depth_dir",
    "depth_to_xyz",
    "foreground_mask",
    "generate_category",
    "load_intrinsics",
    "read_depth",
    "read_xyz",
    "remove_background",
    "remove_background_cached",
    "remove_background_dir",
    "render_sample",
    "sample_seed",
    "validate_xyz",
    "verify_sample_files",
    "write_xyz",
]


__getattr__ = lazy_attributes(__name__, _WHERE)
