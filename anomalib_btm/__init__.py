# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""anomalib_btm: the BTM (Back to the Metrics) RGB + 3D anomaly detector as an anomalib model.

Importing :mod:`anomalib_btm.models` registers :class:`BTM` with anomalib, so that ``anomalib train --model BTM``,
``anomalib.models.get_model("BTM")`` and ``{"class_path": "BTM"}`` configs find it. The installed
``anomalib_btm.pth`` imports it automatically when ``anomalib.models`` is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomalib_btm.lazy import lazy_attributes

__version__ = "0.1.0"
__all__ = ["BTM", "BTMModel", "__version__"]

if TYPE_CHECKING:
    from .models import BTM, BTMModel

# Lazy, so that ``python -m anomalib_btm.data.synthetic`` does not load anomalib.
__getattr__ = lazy_attributes(__name__, {"BTM": "anomalib_btm.models", "BTMModel": "anomalib_btm.models"})
