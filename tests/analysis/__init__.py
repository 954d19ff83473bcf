# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0
