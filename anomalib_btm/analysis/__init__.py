# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Analysis tools for BTM's distance metrics (paper §2.3 and §3.5–3.7).

* :mod:`anomalib_btm.analysis.contours`: contour plots of kNN and reweighted score functions around a small 2-D
  coreset (Figures 3–7).
* :mod:`anomalib_btm.analysis.sweep`: image AUROC, pixel AUROC and AUPRO of a fitted BTM for k = 1..K from one kNN
  query per test batch (Figures 8–10); ``python -m anomalib_btm.analysis.sweep --help``.

The submodules are imported on first use, so that importing this package loads neither matplotlib nor anomalib.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["contours", "sweep"]


def __getattr__(name: str) -> ModuleType:
    """Import a submodule lazily.

    Args:
        name (str): ``"contours"`` or ``"sweep"``.

    Returns:
        ModuleType: The submodule.

    Raises:
        AttributeError: For unknown names.
    """
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
