# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Point-cloud features for BTM."""

from anomalib_btm.features.fpfh import FPFH_BACKENDS, FPFH_DIM, compute_fpfh, valid_point_mask
from anomalib_btm.features.fpfh_torch import FPFHTorch

__all__ = ["FPFH_BACKENDS", "FPFH_DIM", "FPFHTorch", "compute_fpfh", "valid_point_mask"]
