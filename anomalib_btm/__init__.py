# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""anomalib_btm: the BTM (Back to the Metrics) RGB + 3D anomaly detector as an anomalib model.

Importing :mod:`anomalib_btm.models` registers :class:`BTM` with anomalib, so that ``anomalib train --model BTM``,
``anomalib.models.get_model("BTM")`` and ``{"class_path": "BTM"}`` configs find it. The installed
``anomalib_btm.pth`` imports it automatically when ``anomalib.models`` is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["BTM", "BTMModel", "__version__"]

if TYPE_CHECKING:
    from .models import BTM, BTMModel


def __getattr__(name: str) -> Any:
    """Import the model lazily, so that ``python -m anomalib_btm.data.synthetic`` does not load anomalib.

    Args:
        name (str): Attribute name.

    Returns:
        Any: The attribute.

    Raises:
        AttributeError: For unknown names.
    """
    if name in {"BTM", "BTMModel"}:
        from . import models

        return getattr(models, name)
    msg = f"module 'anomalib_btm' has no attribute {name!r}"
    raise AttributeError(msg)
