# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""BTMInferencer and ``python -m anomalib_btm.deploy``: inputs from files/arrays/tensors, clear errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from anomalib_btm.deploy import BTMInferencer
from anomalib_btm.deploy.__main__ import main
from anomalib_btm.deploy.inferencer import MAX_SHAPES, load_image, load_xyz
from anomalib_btm.features import compute_fpfh
from anomalib_btm.models.btm.export import METADATA_KEY, FPFHInput

OUTPUTS = ["pred_score", "pred_label", "anomaly_map", "pred_mask"]


class _TwoInputs(nn.Module):
    """A stand-in with a BTM export's interface (image, xyz → anomalib's four outputs), cheap to export."""

    def forward(self, image: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, ...]:
        score = image.mean(dim=(1, 2, 3)) + xyz[:, 2].mean(dim=(1, 2))
        anomaly_map = image.mean(dim=1, keepdim=True)
        return score, score > 0.5, anomaly_map, anomaly_map > 0.5


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ir") / "model.onnx"
    batch, height, width = (torch.export.Dim(name, min=2) for name in ("batch", "height", "width"))
    xyz_h, xyz_w = torch.export.Dim("xyz_h", min=2), torch.export.Dim("xyz_w", min=2)
    torch.onnx.export(
        _TwoInputs().eval(),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 6, 6)),
        str(path),
        input_names=["image", "xyz"],
        output_names=OUTPUTS,
        dynamo=True,
        dynamic_shapes=({0: batch, 2: height, 3: width}, {0: batch, 2: xyz_h, 3: xyz_w}),
        verbose=False,
    )
    return path


class _FPFHInput(nn.Module):
    """A stand-in with an ``fpfh="inferencer"`` export's interface (image, FPFH map → anomalib's four outputs)."""

    def forward(self, image: torch.Tensor, fpfh: torch.Tensor) -> tuple[torch.Tensor, ...]:
        score = image.mean(dim=(1, 2, 3)) + (fpfh * torch.arange(33.0).reshape(1, 33, 1, 1)).mean(dim=(1, 2, 3))
        anomaly_map = fpfh[:, :1]
        return score, score > 0.5, anomaly_map, anomaly_map > 0.5


FPFH_SPEC = FPFHInput("torch", 0.05, {"max_nn": 40, "normal_max_nn": 12}, (16, 18))
"""What the stand-in's metadata asks the inferencer to compute (a working size unlike the inputs')."""


def _export_fpfh_input_model(path: Path, metadata: str | None) -> Path:
    batch, height, width = (torch.export.Dim(name, min=2) for name in ("batch", "height", "width"))
    program = torch.onnx.export(
        _FPFHInput().eval(),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 33, 16, 18)),
        input_names=["image", "fpfh"],
        output_names=OUTPUTS,
        dynamo=True,
        dynamic_shapes=({0: batch, 2: height, 3: width}, {0: batch}),
        verbose=False,
    )
    if metadata is not None:
        program.model.metadata_props[METADATA_KEY] = metadata
    program.save(str(path))
    return path


@pytest.fixture(scope="module")
def fpfh_input_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_fpfh_input_model(tmp_path_factory.mktemp("fpfh_ir") / "model.onnx", FPFH_SPEC.to_json())


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    v, u = np.meshgrid(np.linspace(-0.02, 0.02, 24), np.linspace(-0.02, 0.02, 20))
    xyz = np.stack([u, v, 0.4 + 0.1 * u], axis=-1).astype(np.float32)
    image_path, xyz_path = tmp_path / "000.png", tmp_path / "000.tiff"
    Image.fromarray(rgb).save(image_path)
    tifffile.imwrite(xyz_path, xyz)
    return image_path, xyz_path, rgb, xyz


def test_load_image_accepts_files_arrays_and_tensors(sample: tuple) -> None:
    image_path, _, rgb, _ = sample
    expected = rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255
    np.testing.assert_allclose(load_image(image_path), expected, atol=1e-7)
    np.testing.assert_allclose(load_image(rgb), expected, atol=1e-7)
    np.testing.assert_allclose(load_image(torch.from_numpy(expected[0])), expected, atol=1e-7)
    np.testing.assert_allclose(load_image(Image.open(image_path)), expected, atol=1e-7)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_image(image_path.parent / "missing.png")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        load_image(np.zeros((4, 5)))


def test_load_xyz_checks_units_and_values(sample: tuple, tmp_path: Path) -> None:
    _, xyz_path, _, xyz = sample
    np.testing.assert_array_equal(load_xyz(xyz_path), xyz.transpose(2, 0, 1)[None])
    np.testing.assert_array_equal(load_xyz(torch.from_numpy(xyz)), xyz.transpose(2, 0, 1)[None])
    millimetres = tmp_path / "mm.tiff"
    tifffile.imwrite(millimetres, xyz * 1000)
    with pytest.raises(ValueError, match=r"mm\.tiff.*metres|metres.*mm\.tiff"):
        load_xyz(millimetres)
    with pytest.raises(ValueError, match="NaN"):
        load_xyz(np.full((4, 4, 3), np.nan, dtype=np.float32))


def test_inferencer_feeds_both_inputs(two_input_model: Path, sample: tuple) -> None:
    image_path, xyz_path, rgb, xyz = sample
    inferencer = BTMInferencer(two_input_model)
    assert inferencer.uses_xyz
    result = inferencer.predict(image_path, xyz_path)
    expected = rgb.astype(np.float32).mean() / 255 + xyz[..., 2].mean()
    np.testing.assert_allclose(result.pred_score, [expected], rtol=1e-5)
    assert result.anomaly_map.shape[-2:] == (20, 24)
    batch = inferencer.predict(np.stack([rgb, rgb]), torch.from_numpy(np.stack([xyz, xyz])))
    np.testing.assert_allclose(batch.pred_score, [expected, expected], rtol=1e-5)


def test_inferencer_errors_name_the_problem(two_input_model: Path, sample: tuple, tmp_path: Path) -> None:
    image_path, _, rgb, xyz = sample
    with pytest.raises(FileNotFoundError, match="anomalib export"):
        BTMInferencer(tmp_path / "none.xml")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.xml.*\.onnx"):
        BTMInferencer(tmp_path / "model.pt")
    inferencer = BTMInferencer(two_input_model)
    with pytest.raises(ValueError, match="pass `xyz`"):
        inferencer.predict(image_path)
    with pytest.raises(ValueError, match="one cloud per image"):
        inferencer.predict(np.stack([rgb, rgb]), xyz)


def test_cli_writes_score_label_and_overlay(two_input_model: Path, sample: tuple, tmp_path: Path) -> None:
    image_path, xyz_path, _, _ = sample
    output = tmp_path / "out"
    assert (
        main([str(two_input_model), "--image", str(image_path), "--xyz", str(xyz_path), "--output", str(output)]) == 0
    )
    record = json.loads((output / "000.json").read_text())
    expected = BTMInferencer(two_input_model).predict(image_path, xyz_path)
    assert record["pred_score"] == pytest.approx(float(expected.pred_score[0]), rel=1e-6)
    assert record["pred_label"] == bool(expected.pred_label[0])
    with Image.open(output / "000_overlay.png") as overlay:
        assert overlay.size == (24, 20)


def test_cli_bad_input_exits_with_a_message_and_writes_nothing(
    two_input_model: Path, sample: tuple, tmp_path: Path
) -> None:
    image_path, _, _, _ = sample
    output = tmp_path / "out"
    command = [sys.executable, "-m", "anomalib_btm.deploy", str(two_input_model), "--image", str(image_path)]
    result = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "pass `xyz`" in result.stderr
    assert not output.exists()


@pytest.mark.slow
def test_cli_on_an_exported_btm(exported_rgbxyz: dict, tmp_path: Path) -> None:
    rgb = sorted((exported_rgbxyz["root"] / "small" / "test" / "dent" / "rgb").glob("*.png"))[0]
    xyz = rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff"
    assert main([str(exported_rgbxyz["xml"]), "--image", str(rgb), "--xyz", str(xyz), "--output", str(tmp_path)]) == 0
    record = json.loads((tmp_path / f"{rgb.stem}.json").read_text())
    expected = BTMInferencer(exported_rgbxyz["xml"]).predict(rgb, xyz)
    assert record["pred_score"] == pytest.approx(float(expected.pred_score[0]), abs=1e-6)
    assert (tmp_path / f"{rgb.stem}_overlay.png").is_file()


def test_static_shape_compilation_matches_the_dynamic_graph(two_input_model: Path, sample: tuple) -> None:
    image_path, xyz_path, rgb, xyz = sample
    static = BTMInferencer(two_input_model)
    dynamic = BTMInferencer(two_input_model, static_shapes=False)
    for images, clouds in ((image_path, xyz_path), (np.stack([rgb] * 3), np.stack([xyz] * 3))):
        a, b = static.predict(images, clouds), dynamic.predict(images, clouds)
        np.testing.assert_allclose(a.pred_score, b.pred_score, rtol=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-6)
    assert len(static._static) == 2  # one compiled model per shape combination
    for batch in range(2, 2 + MAX_SHAPES):
        static.predict(np.stack([rgb] * batch), np.stack([xyz] * batch))
    assert len(static._static) == MAX_SHAPES  # bounded


def _expected_fpfh_score(rgb: np.ndarray, xyz: np.ndarray) -> float:
    """The stand-in's score, with the FPFH computed directly (nearest resize to 16 × 18, then the model's options)."""
    cloud = torch.nn.functional.interpolate(torch.from_numpy(xyz.transpose(2, 0, 1))[None], size=(16, 18))
    fpfh = compute_fpfh(cloud, voxel_size=0.05, max_nn=40, normal_max_nn=12)
    weighted = (fpfh * torch.arange(33.0).reshape(1, 33, 1, 1)).mean()
    return float(rgb.astype(np.float32).mean() / 255 + weighted)


def test_inferencer_computes_the_fpfh_input_the_metadata_describes(fpfh_input_model: Path, sample: tuple) -> None:
    image_path, xyz_path, rgb, xyz = sample
    inferencer = BTMInferencer(fpfh_input_model)
    assert inferencer.input_names == ["image", "fpfh"]
    assert inferencer.uses_xyz
    assert inferencer.fpfh_input == FPFH_SPEC
    feed = inferencer.feed(image_path, xyz_path)
    assert feed["fpfh"].shape == (1, 33, 16, 18)
    assert np.abs(feed["fpfh"]).sum() > 0
    result = inferencer.predict(image_path, xyz_path)
    np.testing.assert_allclose(result.pred_score, [_expected_fpfh_score(rgb, xyz)], rtol=1e-5)
    assert result.anomaly_map.shape[-2:] == (16, 18) or result.anomaly_map.shape[1:3] == (16, 18)
    with pytest.raises(ValueError, match="pass `xyz`"):
        inferencer.predict(image_path)


def test_an_fpfh_input_without_metadata_is_refused(tmp_path: Path) -> None:
    path = _export_fpfh_input_model(tmp_path / "model.onnx", None)
    with pytest.raises(ValueError, match=r"model\.onnx.*no description.*export it again"):
        BTMInferencer(path)
    bad = _export_fpfh_input_model(tmp_path / "bad.onnx", '{"version": 99}')
    with pytest.raises(ValueError, match=r"bad\.onnx.*version 99"):
        BTMInferencer(bad)


def test_predict_many_returns_predict_in_order(fpfh_input_model: Path, sample: tuple) -> None:
    _, _, rgb, xyz = sample
    inferencer = BTMInferencer(fpfh_input_model)
    rng = np.random.default_rng(1)
    samples = [(rng.integers(0, 256, rgb.shape, dtype=np.uint8), xyz * (1 + 0.1 * i)) for i in range(7)]
    samples.insert(3, (rgb[:12], xyz[:14]))  # another shape: another compiled model, same order of results
    many = list(inferencer.predict_many(samples, jobs=2))
    assert len(many) == len(samples)
    for (image, cloud), result in zip(samples, many, strict=True):
        single = inferencer.predict(image, cloud)
        np.testing.assert_allclose(result.pred_score, single.pred_score, rtol=1e-6)
        np.testing.assert_allclose(result.anomaly_map, single.anomaly_map, rtol=1e-6)
        np.testing.assert_array_equal(result.image, single.image)


def _sample_folder(root: Path, count: int) -> tuple[Path, Path]:
    images, clouds = root / "rgb", root / "xyz"
    images.mkdir()
    clouds.mkdir()
    rng = np.random.default_rng(0)
    v, u = np.meshgrid(np.linspace(-0.02, 0.02, 24), np.linspace(-0.02, 0.02, 20))
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(images / f"{index:03d}.png")
        tifffile.imwrite(clouds / f"{index:03d}.tiff", np.stack([u, v, 0.4 + 0.1 * u * index], -1).astype(np.float32))
    return images, clouds


def test_cli_scores_a_folder_in_throughput_mode(
    fpfh_input_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, clouds = _sample_folder(tmp_path, 5)
    output = tmp_path / "out"
    command = [str(fpfh_input_model), "--image-dir", str(images), "--xyz-dir", str(clouds), "--output", str(output)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "5 samples" in printed
    assert "samples/s" in printed
    inferencer = BTMInferencer(fpfh_input_model)
    for index in range(5):
        record = json.loads((output / f"{index:03d}.json").read_text())
        expected = inferencer.predict(images / f"{index:03d}.png", clouds / f"{index:03d}.tiff")
        assert record["pred_score"] == pytest.approx(float(expected.pred_score[0]), rel=1e-6)
        assert record["xyz"] == str(clouds / f"{index:03d}.tiff")
        assert (output / f"{index:03d}_overlay.png").is_file()


def test_cli_folder_errors_name_the_missing_file(
    fpfh_input_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, clouds = _sample_folder(tmp_path, 3)
    (clouds / "001.tiff").unlink()
    output = tmp_path / "out"
    exit_code = main(
        [str(fpfh_input_model), "--image-dir", str(images), "--xyz-dir", str(clouds), "--output", str(output)]
    )
    assert exit_code == 2
    message = capsys.readouterr().err
    assert "001.png" in message
    assert "001.tiff" in message
    # an RGB + 3D model needs the clouds
    assert main([str(fpfh_input_model), "--image-dir", str(images), "--output", str(output)]) == 2
    assert "--xyz-dir" in capsys.readouterr().err
    # --xyz belongs to --image
    assert main([str(fpfh_input_model), "--image-dir", str(images), "--xyz", "x.tiff", "--output", str(output)]) == 2
    assert "--xyz goes with --image" in capsys.readouterr().err
    assert not output.exists()
