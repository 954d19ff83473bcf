# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Models of anomalib_btm. Importing this module registers :class:`BTM` with anomalib."""

from __future__ import annotations

from .btm import BTM, BTMModel

__all__ = ["BTM", "BTMModel"]


def _register_with_anomalib() -> None:
    """Expose :class:`BTM` as ``anomalib.models.BTM``: anomalib looks models up there by name."""
    import anomalib.models

    if getattr(anomalib.models, "BTM", None) is not BTM:
        anomalib.models.BTM = BTM  # type: ignore[attr-defined]
        if hasattr(anomalib.models, "__all__") and "BTM" not in anomalib.models.__all__:
            anomalib.models.__all__.append("BTM")


_register_with_anomalib()
