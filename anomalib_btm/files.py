# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Writing files so that readers never see a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Write a file atomically: ``writer`` fills a temporary file next to ``path``, which is then renamed onto it.

    Readers never see a half-written file, and an interrupted write leaves no partial file behind (the temporary
    file is hidden and removed on error).

    Args:
        path: Destination file. Its directory must exist.
        writer: Called with the temporary path (same directory and suffix as ``path``); must write the file there.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "note.txt", lambda tmp: tmp.write_text("done")).read_text()
        'done'
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    tmp = Path(temporary)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to the user
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
