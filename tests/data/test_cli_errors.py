# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Every ``python -m anomalib_btm.…`` command reports a user error as one line ``PROG: error: …`` and returns 2."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

COMMANDS = {
    "anomalib_btm.data.depth": ["in", "out", "--intrinsics", "cam.json", "--depth-scale", "x"],
    "anomalib_btm.data.synthetic": ["root", "--image-size", "1", "2", "3"],
    "anomalib_btm.data.background": ["xyz", "out", "--border", "x"],
    "anomalib_btm.weights": ["resnet", "out.pth"],
    "anomalib_btm.analysis.sweep": ["--data-root", "missing"],
    "anomalib_btm.deploy.__main__": ["model.xml", "--output", "out"],
}
"""Module → arguments with one mistake (a bad value, a missing or unknown argument)."""


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_one_line_error_and_status_2(module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(module).main
    prog = "python -m " + module.removesuffix(".__main__")
    assert main([str(tmp_path / arg) if arg in {"in", "out", "root", "xyz"} else arg for arg in COMMANDS[module]]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{prog}: error: ")
    assert captured.err.count("\n") == 1  # no usage block, no traceback
    assert not list(tmp_path.iterdir())  # nothing written


def test_help_shows_the_signature_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from anomalib_btm.data import synthetic

    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
    assert "good training samples (default: 20)" in " ".join(capsys.readouterr().out.split())
