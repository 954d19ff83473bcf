# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Import ``anomalib_btm`` right after ``anomalib.models`` is imported, in any Python process.

anomalib resolves bare model names (``anomalib train --model BTM``, ``get_model("BTM")``) only among classes
that are already imported, and has no plugin entry points. The installed ``anomalib_btm.pth`` imports this tiny
module at interpreter start-up; it adds one meta-path finder that does nothing until ``anomalib.models`` is
imported, and then imports ``anomalib_btm.models`` (which registers ``BTM``). Programs that never import anomalib pay
one string comparison per first import of a module.

Set ``ANOMALIB_BTM_NO_HOOK=1`` to disable it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

_TRIGGER = "anomalib.models"
_PLUGIN = "anomalib_btm.models"


class _Loader(importlib.abc.Loader):
    """Runs the real loader of ``anomalib.models``, then imports the plugin."""

    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        # importlib binds ``anomalib.models`` on its parent only after this returns; the plugin needs it now.
        parent, _, child = _TRIGGER.rpartition(".")
        setattr(sys.modules[parent], child, module)
        try:
            importlib.import_module(_PLUGIN)
        except Exception as error:
            import warnings

            warnings.warn(f"anomalib_btm could not be loaded ({error!r}); the BTM model is unavailable.", stacklevel=2)


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``anomalib.models``; ignores every other module."""

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TRIGGER:
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec without recursing into ourselves
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Add the finder (once), unless disabled or anomalib is already imported."""
    if os.environ.get("ANOMALIB_BTM_NO_HOOK"):
        return
    if _TRIGGER in sys.modules:
        importlib.import_module(_PLUGIN)
        return
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
