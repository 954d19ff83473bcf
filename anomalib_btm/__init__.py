# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""anomalib_btm: the BTM (Back to the Metrics) RGB + 3D anomaly detector as an anomalib model.

Importing the package registers :class:`BTM` with anomalib, so that ``anomalib train --model BTM``,
``anomalib.models.get_model("BTM")`` and ``{"class_path": "BTM"}`` configs find it. The installed
``anomalib_btm.pth`` imports the package automatically when ``anomalib.models`` is imported.
"""

from __future__ import annotations

from .models import BTM, BTMModel

__version__ = "0.1.0"
__all__ = ["BTM", "BTMModel", "__version__"]


def _register_with_anomalib() -> None:
    """Expose :class:`BTM` as ``anomalib.models.BTM`` (anomalib looks models up there by name)."""
    import anomalib.models

    if getattr(anomalib.models, "BTM", None) is not BTM:
        anomalib.models.BTM = BTM  # type: ignore[attr-defined]
        if hasattr(anomalib.models, "__all__") and "BTM" not in anomalib.models.__all__:
            anomalib.models.__all__.append("BTM")


_register_with_anomalib()
