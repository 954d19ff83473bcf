# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""benchmarks/mvtec3d.py at a small size: the table has every configuration and metric, with sane values."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

import anomalib_btm.data

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "mvtec3d.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mvtec3d", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def generator_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments of every ``generate_category`` call the benchmark makes (the calls still run)."""
    calls: list[dict] = []
    original = anomalib_btm.data.generate_category

    def recording(root: Path, category: str, **kwargs: object) -> Path:
        calls.append({"category": category, **kwargs})
        return original(root, category, **kwargs)

    monkeypatch.setattr(anomalib_btm.data, "generate_category", recording)
    return calls


@pytest.mark.slow
def test_benchmark_table_on_generated_data(
    tmp_path: Path, capsys: pytest.CaptureFixture, generator_calls: list[dict]
) -> None:
    module = _load()
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
    assert "±" not in table  # one seed: plain values
    assert table in capsys.readouterr().out
    # Without --shapes the generator is called as before the option existed (no `shape` argument).
    assert [call["category"] for call in generator_calls] == ["synthetic_0"]
    assert "shape" not in generator_calls[0]
    assert generator_calls[0]["image_size"] == 128


@pytest.mark.slow
def test_benchmark_seeds_shapes_model_args_and_patchcore(tmp_path: Path, generator_calls: list[dict]) -> None:
    module = _load()
    output = tmp_path / "table.md"
    args = ["--generated", "1", "--n-train", "4", "--n-test-good", "3", "--n-test-defect", "1", "--seeds", "2"]
    args += ["--shapes", "ring45", "dome", "--sensor-size", "64", "80", "--output", str(output)]
    args += ["--configs", "BTM RGB", "PatchCore RGB", "--model-args", '{"feature_upsampling": "bilinear"}']
    assert module.main(args) == 0
    assert [(c["category"], c["shape"], c["image_size"]) for c in generator_calls] == [
        ("ring45_0", "ring45", (64, 80)),
        ("dome_0", "dome", (64, 80)),
    ]
    table = output.read_text()
    assert 'BTM arguments: {"feature_upsampling": "bilinear"}' in table
    assert "over seeds 0..1" in table
    assert "64x80 px" in table
    header = next(line for line in table.splitlines() if line.startswith("| category"))
    assert "PatchCore RGB I-AUROC" in header
    for category in ("ring45_0", "dome_0", "mean"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {category} "))
        cells = re.findall(r"(\d\.\d{3})\**\s±\s(\d\.\d{3})", row)
        assert len(cells) == 6, row  # mean ± std for 2 configurations × 3 metrics
        assert all(0.0 <= float(mean) <= 1.0 and float(std) >= 0.0 for mean, std in cells)


def test_model_args_must_be_a_json_object(capsys: pytest.CaptureFixture) -> None:
    module = _load()
    with pytest.raises(SystemExit):
        module.main(["--model-args", '["bilinear"]'])
    assert "expected a JSON object" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--seeds", "0"])
    assert "--seeds must be at least 1" in capsys.readouterr().err
