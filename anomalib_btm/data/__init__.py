# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Data utilities: a synthetic RGB + XYZ generator in the MVTec 3D-AD layout.

The names are loaded lazily, so that ``python -m anomalib_btm.data.synthetic`` does not import the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomalib_btm.data.synthetic import (
        DEFECT_TYPES,
        GEOMETRIC_DEFECTS,
        generate_category,
        render_sample,
        sample_seed,
    )

__all__ = ["DEFECT_TYPES", "GEOMETRIC_DEFECTS", "generate_category", "render_sample", "sample_seed"]


def __getattr__(name: str) -> Any:
    """Load the public names from :mod:`anomalib_btm.data.synthetic` on first use."""
    if name in __all__:
        return getattr(importlib.import_module("anomalib_btm.data.synthetic"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
