# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Whether the current call builds a graph (tracing, scripting, ``torch.compile`` or ONNX / ``torch.export``).

Eager-only fast paths (Numba kernels, NumPy's BLAS, memory-format changes) must stay out of captured graphs: one
check, used by the FPFH, feature and scoring modules.
"""

from __future__ import annotations

import torch


def capturing_graph() -> bool:
    """Whether this call is traced, scripted, compiled or exported rather than run eagerly.

    Returns:
        bool: ``True`` inside ``torch.jit`` tracing/scripting, ``torch.compile``, ``torch.export`` or ONNX export.

    Example:
        >>> capturing_graph()
        False
    """
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )
