# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Lazy public names of a package (PEP 562): a name's module is imported when the name is first used.

The top-level package does not load anomalib until ``BTM`` is asked for, and ``anomalib_btm.data`` does not import a
module that ``python -m anomalib_btm.data.<module>`` is about to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports each public name from its module on first use.

    Args:
        package (str): The package's ``__name__`` (for the error message).
        where (Mapping[str, str]): Public name → module it is imported from.

    Returns:
        Callable[[str], Any]: The ``__getattr__`` to assign in the package's ``__init__``.

    Example:
        >>> getattr_ = lazy_attributes("pkg", {"sqrt": "math"})
        >>> getattr_("sqrt")(9.0)
        3.0
        >>> getattr_("cbrt")
        Traceback (most recent call last):
        ...
        AttributeError: module 'pkg' has no attribute 'cbrt'
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__
