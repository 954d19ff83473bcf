# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTM (Back to the Metrics) model: Lightning module and torch model."""

from .lightning_model import BTM
from .torch_model import BTMModel

__all__ = ["BTM", "BTMModel"]
