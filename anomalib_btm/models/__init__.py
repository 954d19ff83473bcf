# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Models of anomalib_btm."""

from .btm import BTM, BTMModel

__all__ = ["BTM", "BTMModel"]
