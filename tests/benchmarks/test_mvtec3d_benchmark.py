# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""benchmarks/mvtec3d.py at a small size: the table has every configuration and metric, with sane values."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "mvtec3d.py"


@pytest.mark.slow
def test_benchmark_table_on_generated_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("bench_mvtec3d", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "table.md"
    args = [
        "--generated",
        "1",
        "--n-train",
        "5",
        "--n-test-defect",
        "1",
        "--image-size",
        "128",
        "--output",
        str(output),
        "--fpfh-backend",
        "torch",
        "--fpfh-options",
        '{"window": 9}',
    ]
    assert module.main([*args, "--configs", "BTM 3D", "BTF RGB+3D"]) == 0
    table = output.read_text()
    assert "generated data" in table
    assert 'FPFH: torch {"window": 9}' in table
    header = next(line for line in table.splitlines() if line.startswith("| category"))
    for name in ("BTM 3D", "BTF RGB+3D"):
        for metric in ("I-AUROC", "AUPRO@0.3", "P-AUROC"):
            assert f"{name} {metric}" in header
    row = next(line for line in table.splitlines() if line.startswith("| synthetic_0"))
    values = [float(v) for v in re.findall(r"\d\.\d{3}", row)]
    assert len(values) == 6
    assert all(0.0 <= v <= 1.0 for v in values)
    assert "| mean |" in table
    assert table in capsys.readouterr().out
