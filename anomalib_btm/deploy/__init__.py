# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Deployment of exported BTM models: :class:`BTMInferencer` and ``python -m anomalib_btm.deploy``."""

from .inferencer import BTMInferencer

__all__ = ["BTMInferencer"]
