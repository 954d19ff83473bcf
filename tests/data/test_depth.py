# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests for depth → XYZ conversion, intrinsics loading, unit checks and the conversion command."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anomalib_btm.data.cloud import _unit_statistics
from anomalib_btm.data.depth import (
    ZERO_NUDGE,
    check_metric_units,
    convert_depth_dir,
    depth_to_xyz,
    load_intrinsics,
    main,
    read_depth,
    read_xyz,
    validate_xyz,
    write_xyz,
)
from anomalib_btm.data.synthetic import camera_intrinsics, render_sample

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 64


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, dict[str, float]]:
    rendered = render_sample(SIZE, "dent", 5)
    camera = camera_intrinsics(SIZE)
    return rendered.xyz, {"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------------------------
# depth_to_xyz
# ------------------------------------------------------------------------------------------------------------------


def test_depth_to_xyz_reproduces_generator_cloud(sample: tuple[np.ndarray, dict[str, float]]) -> None:
    xyz, camera = sample
    out = depth_to_xyz(xyz[..., 2], depth_scale=1.0, **camera)
    assert out.dtype == np.float32
    assert out.shape == xyz.shape
    np.testing.assert_allclose(out, xyz, atol=1e-7)
    assert np.array_equal(np.all(out == 0, axis=-1), np.all(xyz == 0, axis=-1))


def test_depth_to_xyz_from_16bit_units(sample: tuple[np.ndarray, dict[str, float]]) -> None:
    xyz, camera = sample
    units = np.rint(xyz[..., 2] / 1e-4).astype(np.uint16)  # 0.1 mm units
    out = depth_to_xyz(units, depth_scale=1e-4, **camera)
    valid = np.all(xyz != 0, axis=-1)
    assert np.array_equal(np.all(out != 0, axis=-1), valid)
    assert np.abs(out - xyz)[valid].max() < 6e-5  # half a unit along Z, less in X and Y


def test_depth_to_xyz_convention_columns_rows() -> None:
    depth = np.array([[1000, 0, 1000], [2000, 2000, 2000]], dtype=np.uint16)  # mm; 2 rows, 3 columns
    out = depth_to_xyz(depth, fx=100.0, fy=200.0, cx=0.5, cy=0.25)
    z = np.array([[1.0, 0.0, 1.0], [2.0, 2.0, 2.0]])
    u = np.array([0.0, 1.0, 2.0])[None, :]  # column index
    v = np.array([0.0, 1.0])[:, None]  # row index
    np.testing.assert_allclose(out[..., 2], z)
    np.testing.assert_allclose(out[..., 0], np.where(z > 0, (u - 0.5) * z / 100.0, 0), rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], np.where(z > 0, (v - 0.25) * z / 200.0, 0), rtol=1e-6)
    assert np.all(out[0, 1] == 0)  # missing → exactly (0, 0, 0)


def test_depth_to_xyz_nudges_exact_zero_coordinates() -> None:
    depth = np.full((3, 4), 500.0, dtype=np.float32)
    depth[0, 0] = 0
    out = depth_to_xyz(depth, fx=50.0, fy=50.0, cx=2.0, cy=1.0)  # principal point on pixel centre (1, 2)
    valid = np.all(out != 0, axis=-1)
    assert valid.sum() == depth.size - 1
    assert out[1, 2, 0] == np.float32(ZERO_NUDGE)
    assert out[1, 2, 1] == np.float32(ZERO_NUDGE)
    assert np.all(out[0, 0] == 0)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    fx=st.floats(10, 5000),
    fy=st.floats(10, 5000),
    cx=st.floats(-50, 50),
    cy=st.floats(-50, 50),
    seed=st.integers(0, 2**16),
)
def test_depth_to_xyz_projects_back_to_pixel_centres(
    height: int, width: int, fx: float, fy: float, cx: float, cy: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    depth = rng.integers(0, 3000, size=(height, width)).astype(np.uint16)
    out = depth_to_xyz(depth, fx, fy, cx, cy)
    valid = depth > 0
    assert np.array_equal(np.all(out != 0, axis=-1), valid)
    rows, cols = np.nonzero(valid)
    point = out[rows, cols].astype(np.float64)
    np.testing.assert_allclose(point[:, 2], depth[rows, cols] * 0.001, rtol=1e-6)
    nudged = np.abs(point[:, :2]) <= ZERO_NUDGE
    u = np.where(nudged[:, 0], cols, fx * point[:, 0] / point[:, 2] + cx)
    v = np.where(nudged[:, 1], rows, fy * point[:, 1] / point[:, 2] + cy)
    np.testing.assert_allclose(u, cols, atol=1e-3 * (1 + abs(cx)))
    np.testing.assert_allclose(v, rows, atol=1e-3 * (1 + abs(cy)))


@pytest.mark.parametrize(
    ("depth", "kwargs", "match"),
    [
        (np.array([[1.0, np.nan]]), {}, "depth contains 1 NaN/inf"),
        (np.array([[1.0, np.inf]]), {}, "depth contains 1 NaN/inf"),
        (np.array([[1.0, -2.0]]), {}, "negative"),
        (np.ones((2, 2, 3)), {}, "single-channel"),
        (np.ones(4), {}, "single-channel"),
        (np.ones((2, 2), dtype=bool), {}, "dtype"),
        (np.ones((2, 2)), {"fx": 0.0}, "fx=0.0"),
        (np.ones((2, 2)), {"fy": -1.0}, "fy=-1.0"),
        (np.ones((2, 2)), {"cx": float("nan")}, "cx=nan"),
        (np.ones((2, 2)), {"depth_scale": 0.0}, "depth_scale"),
    ],
)
def test_depth_to_xyz_rejects_bad_input(depth: np.ndarray, kwargs: dict, match: str) -> None:
    camera = {"fx": 100.0, "fy": 100.0, "cx": 0.5, "cy": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        depth_to_xyz(depth, **camera)


def test_depth_to_xyz_accepts_trailing_channel() -> None:
    out = depth_to_xyz(np.full((2, 3, 1), 700, dtype=np.uint16), 100.0, 100.0, 0.5, 0.5)
    assert out.shape == (2, 3, 3)


# ------------------------------------------------------------------------------------------------------------------
# load_intrinsics
# ------------------------------------------------------------------------------------------------------------------

EXPECTED = {"fx": 500.0, "fy": 510.0, "cx": 320.5, "cy": 240.25}


def _write_json(tmp_path: Path, data: object, name: str = "camera.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "data",
    [
        EXPECTED,
        {"FX": 500.0, "Fy": 510.0, "CX": 320.5, "cy": 240.25},
        {"fx": 500.0, "fy": 510.0, "ppx": 320.5, "ppy": 240.25},
        {"camera_matrix": [[500.0, 0, 320.5], [0, 510.0, 240.25], [0, 0, 1]]},
        {"K": [500.0, 0, 320.5, 0, 510.0, 240.25, 0, 0, 1]},
        {"camera_matrix": {"rows": 3, "cols": 3, "data": [500.0, 0, 320.5, 0, 510.0, 240.25, 0, 0, 1]}},
        {"width": 640, "height": 480, "intrinsic_matrix": [500.0, 0, 0, 0, 510.0, 0, 320.5, 240.25, 1]},  # Open3D
        {"focal_length": [500.0, 510.0], "principal_point": [320.5, 240.25]},
        {"intrinsics": EXPECTED, "extrinsics": {"t": [0, 0, 0]}},
        {"camera": {"K": [[500.0, 0, 320.5], [0, 510.0, 240.25], [0, 0, 1]]}},
    ],
)
def test_load_intrinsics_layouts(tmp_path: Path, data: dict) -> None:
    assert load_intrinsics(_write_json(tmp_path, data)) == pytest.approx(EXPECTED)


def test_load_intrinsics_halcon_parameters(tmp_path: Path) -> None:
    data = {
        "type": "area_scan_polynomial",
        "focus": 0.008,
        "k1": 0.0,
        "k2": 0.0,
        "k3": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "sx": 1.6e-5,
        "sy": 1.5e-5,
        "cx": 397.3,
        "cy": 401.8,
        "image_width": 800,
        "image_height": 800,
    }
    intrinsics = load_intrinsics(_write_json(tmp_path, data))
    assert intrinsics == pytest.approx({"fx": 500.0, "fy": 0.008 / 1.5e-5, "cx": 397.3, "cy": 401.8})
    data["k1"] = 120.0
    with pytest.warns(UserWarning, match="distortion"):
        load_intrinsics(_write_json(tmp_path, data))
    data["focus"] = 0.0
    with pytest.raises(ValueError, match="telecentric"):
        load_intrinsics(_write_json(tmp_path, data))


def test_load_intrinsics_synthetic_calibration(tmp_path: Path) -> None:
    camera = camera_intrinsics(96)
    path = _write_json(tmp_path, camera.to_dict(), "camera_parameters.json")
    assert load_intrinsics(path) == pytest.approx({"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy})


def test_load_intrinsics_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_intrinsics(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON"):
        load_intrinsics(bad)
    with pytest.raises(ValueError, match=r"odd\.json.*keys: focal"):
        load_intrinsics(_write_json(tmp_path, {"focal": "x"}, "odd.json"))
    with pytest.raises(ValueError, match="JSON object"):
        load_intrinsics(_write_json(tmp_path, [1, 2, 3], "list.json"))
    with pytest.raises(ValueError, match=r"neg\.json.*fx="):
        load_intrinsics(_write_json(tmp_path, {**EXPECTED, "fx": -5}, "neg.json"))


@pytest.mark.parametrize(
    "data",
    [
        {"focal_x": 500.0, "focal_y": 510.0, "u0": 320.5, "v0": 240.25},
        {"calibration": EXPECTED},
        {"mtx": [[500.0, 0, 320.5], [0, 510.0, 240.25], [0, 0, 1]]},
    ],
)
def test_load_intrinsics_refuses_other_layouts_in_one_line(tmp_path: Path, data: dict) -> None:
    with pytest.raises(ValueError, match=r"alias\.json holds no pinhole intrinsics") as info:
        load_intrinsics(_write_json(tmp_path, data, "alias.json"))
    assert '{"fx": ..., "fy": ..., "cx": ..., "cy": ...}' in str(info.value)
    assert "Open3D" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_intrinsics_refuses_a_column_major_camera_matrix(tmp_path: Path) -> None:
    path = _write_json(tmp_path, {"K": [500.0, 0, 0, 0, 510.0, 0, 320.5, 240.25, 1]}, "cm.json")
    with pytest.raises(ValueError, match=r"cm\.json: camera_matrix/K must be row-major"):
        load_intrinsics(path)


def test_load_intrinsics_reads_open3d_files(tmp_path: Path) -> None:
    import open3d as o3d

    path = tmp_path / "open3d.json"
    o3d.io.write_pinhole_camera_intrinsic(
        str(path), o3d.camera.PinholeCameraIntrinsic(640, 480, 500.0, 510.0, 320.5, 240.25)
    )
    assert load_intrinsics(path) == pytest.approx(EXPECTED)


# ------------------------------------------------------------------------------------------------------------------
# read_depth, read_xyz, write_xyz
# ------------------------------------------------------------------------------------------------------------------


def test_read_depth_png_and_tiff(tmp_path: Path) -> None:
    depth = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    read = read_depth(tmp_path / "d.png")
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, depth)

    metres = depth.astype(np.float32) / 1000
    tifffile.imwrite(tmp_path / "d.tiff", metres)
    np.testing.assert_array_equal(read_depth(tmp_path / "d.tiff"), metres)
    tifffile.imwrite(tmp_path / "c.tif", metres[..., None])
    assert read_depth(tmp_path / "c.tif").shape == (3, 4)


def test_read_depth_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_depth(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png must be single-channel"):
        read_depth(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "xyz.tiff", np.ones((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="already an XYZ point cloud"):
        read_depth(tmp_path / "xyz.tiff")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could not be read"):
        read_depth(tmp_path / "junk.png")
    Image.fromarray(np.full((4, 4), 7, dtype=np.uint8)).save(tmp_path / "eight.png")
    with pytest.warns(UserWarning, match="8-bit"):
        read_depth(tmp_path / "eight.png")


def test_write_and_read_xyz_roundtrip(tmp_path: Path, sample: tuple[np.ndarray, dict[str, float]]) -> None:
    xyz, _ = sample
    path = write_xyz(xyz, tmp_path / "000.tiff")
    np.testing.assert_array_equal(read_xyz(path), xyz)
    assert [p.name for p in tmp_path.iterdir()] == ["000.tiff"]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        read_xyz(tmp_path / "001.tiff")


# ------------------------------------------------------------------------------------------------------------------
# validate_xyz / check_metric_units
# ------------------------------------------------------------------------------------------------------------------


def test_check_metric_units_accepts_metres(sample: tuple[np.ndarray, dict[str, float]]) -> None:
    xyz, _ = sample
    check_metric_units(xyz)
    check_metric_units(render_sample(224, None, 0).xyz)


def test_check_metric_units_detects_millimetres(sample: tuple[np.ndarray, dict[str, float]]) -> None:
    xyz, _ = sample
    with pytest.raises(ValueError, match=r"scan\.tiff looks like millimetres.*depth_scale=0\.001"):
        check_metric_units(xyz * 1000, path="scan.tiff")
    centred = xyz.copy()  # relative heights in mm: |Z| small, but the point spacing gives it away
    valid = np.all(xyz != 0, axis=-1)
    centred[valid] = (xyz[valid] - xyz[valid].mean(axis=0)) * 1000 + 1e-3
    with pytest.raises(ValueError, match="looks like millimetres"):
        check_metric_units(centred)


def test_check_metric_units_detects_double_scaling(sample: tuple[np.ndarray, dict[str, float]]) -> None:
    xyz, _ = sample
    with pytest.raises(ValueError, match=r"depth_scale=1\.0"):
        check_metric_units(xyz * 1e-3)


def test_unit_check_subsample_keeps_the_statistics() -> None:
    xyz = render_sample(224, "dent", 0).xyz
    subsampled = _unit_statistics(xyz)
    full = _unit_statistics(xyz, max_points=xyz.shape[0] * xyz.shape[1])
    assert subsampled == pytest.approx(full, rel=0.01)
    row = np.zeros((200, 200, 3), dtype=np.float32)  # the only adjacent points lie on a row the subsample skips
    row[101, :] = [0.001, 0.001, 0.5]
    row[101, :, 0] += np.arange(200) * 0.0005
    assert _unit_statistics(row, max_points=1000)[1] == pytest.approx(0.0005, rel=1e-3)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.ones((4, 4, 2), dtype=np.float32), r"shape \(H, W, 3\)"),
        (np.ones((3, 4, 5), dtype=np.float32), "channels-first"),
        (np.ones((4, 5), dtype=np.float32), "depth image"),
        (np.zeros((4, 4, 3), dtype=np.float32), "no valid point"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN/inf"),
    ],
)
def test_validate_xyz_errors_name_the_file(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        check_metric_units(array, path="/data/xyz/007.tiff")
    assert "/data/xyz/007.tiff" in str(info.value)


def test_validate_xyz_returns_float32() -> None:
    out = validate_xyz(np.ones((2, 2, 3), dtype=np.float64))
    assert out.dtype == np.float32


# ------------------------------------------------------------------------------------------------------------------
# Folder conversion and command line
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def depth_folder(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Three 16-bit PNGs in 0.1 mm units and the synthetic camera's intrinsics file."""
    source = tmp_path / "depth"
    source.mkdir()
    clouds = {}
    for index in range(3):
        xyz = render_sample(SIZE, None, index).xyz
        Image.fromarray(np.rint(xyz[..., 2] / 1e-4).astype(np.uint16)).save(source / f"{index:03d}.png")
        clouds[f"{index:03d}"] = xyz
    camera = tmp_path / "camera.json"
    camera.write_text(json.dumps(camera_intrinsics(SIZE).to_dict()))
    return source, camera, clouds


def test_main_converts_folder(
    tmp_path: Path, depth_folder: tuple[Path, Path, dict[str, np.ndarray]], capsys: pytest.CaptureFixture
) -> None:
    source, camera, clouds = depth_folder
    before = {p.name: (_digest(p), p.stat().st_mtime_ns) for p in source.iterdir()}
    out = tmp_path / "xyz"
    assert main([str(source), str(out), "--intrinsics", str(camera), "--depth-scale", "0.0001"]) == 0
    assert "converted 3 depth image(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["000.tiff", "001.tiff", "002.tiff"]
    for stem, xyz in clouds.items():
        converted = tifffile.imread(out / f"{stem}.tiff")
        assert converted.dtype == np.float32
        assert converted.shape == (SIZE, SIZE, 3)
        valid = np.all(xyz != 0, axis=-1)
        assert np.array_equal(np.all(converted != 0, axis=-1), valid)
        assert np.abs(converted - xyz)[valid].max() < 6e-5
    assert {p.name: (_digest(p), p.stat().st_mtime_ns) for p in source.iterdir()} == before

    # Existing outputs are kept unless --overwrite.
    assert main([str(source), str(out), "--intrinsics", str(camera), "--depth-scale", "0.0001"]) == 2
    assert "already exist" in capsys.readouterr().err
    args = [str(source), str(out), "--intrinsics", str(camera), "--depth-scale", "0.0001", "--overwrite"]
    assert main([*args, "--glob", "00[01].png"]) == 0
    assert "converted 2 depth image(s)" in capsys.readouterr().out


def test_main_wrong_depth_scale_fails_with_unit_message(
    tmp_path: Path, depth_folder: tuple[Path, Path, dict[str, np.ndarray]], capsys: pytest.CaptureFixture
) -> None:
    source, camera, _ = depth_folder
    out = tmp_path / "xyz"
    assert main([str(source), str(out), "--intrinsics", str(camera), "--depth-scale", "1"]) == 2
    err = capsys.readouterr().err
    assert "000.png looks like millimetres" in err
    assert not list(out.glob("*"))  # the first file failed; nothing (not even a temporary file) was written
    assert main([str(source), str(out), "--intrinsics", str(camera), "--depth-scale", "1", "--no-unit-check"]) == 0


def test_convert_refuses_ambiguous_or_destructive_runs(
    tmp_path: Path, depth_folder: tuple[Path, Path, dict[str, np.ndarray]]
) -> None:
    source, camera, _ = depth_folder
    # An output with the name of an input (TIFF depth converted in place) would destroy the source.
    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    tifffile.imwrite(tiffs / "000.tiff", np.full((SIZE, SIZE), 0.55, dtype=np.float32))
    with pytest.raises(ValueError, match="would replace an input"):
        convert_depth_dir(tiffs, tiffs, camera, depth_scale=1.0, overwrite=True)
    # Two inputs with one stem.
    tifffile.imwrite(source / "000.tif", np.full((SIZE, SIZE), 0.55, dtype=np.float32))
    with pytest.raises(ValueError, match="share a stem"):
        convert_depth_dir(source, tmp_path / "out", camera)
    (source / "000.tif").unlink()
    # Intrinsics for another resolution.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(camera_intrinsics(SIZE * 2).to_dict()))
    with pytest.raises(ValueError, match=r"intrinsics are for 128×128 px"):
        convert_depth_dir(source, tmp_path / "out", other, depth_scale=1e-4)
    with pytest.raises(ValueError, match="No depth images matching"):
        convert_depth_dir(source, tmp_path / "out", camera, pattern="*.exr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_depth_dir(tmp_path / "nothing", tmp_path / "out", camera)
    # A mapping works in place of a file.
    written = convert_depth_dir(source, tmp_path / "out", load_intrinsics(camera), depth_scale=1e-4)
    assert [p.name for p in written] == ["000.tiff", "001.tiff", "002.tiff"]


def test_module_runs_as_command(tmp_path: Path, depth_folder: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    source, camera, _ = depth_folder
    command = [sys.executable, "-m", "anomalib_btm.data.depth", str(source), str(tmp_path / "cli")]
    command += ["--intrinsics", str(camera), "--depth-scale", "0.0001"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "converted 3" in result.stdout


# ------------------------------------------------------------------------------------------------------------------
# Folder3D end to end (own data: RGB + depth PNG + intrinsics → XYZ → anomalib's Folder3D)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_folder3d_reads_converted_example(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_example", REPO_ROOT / "examples/folder3d/make_example.py")
    assert spec is not None
    assert spec.loader is not None
    make_example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_example)
    root = make_example.build(tmp_path / "parts", image_size=SIZE, n_train=3, n_test_good=2, n_per_defect=1)
    for folder in ("train/good", "test/good", "test/bad"):
        args = [str(root / folder / "depth"), str(root / folder / "xyz"), "--intrinsics", str(root / "camera.json")]
        assert main([*args, "--depth-scale", str(make_example.DEPTH_UNIT)]) == 0

    from anomalib.data import Folder3D

    datamodule = Folder3D(
        name="parts",
        root=root,
        normal_dir="train/good/rgb",
        normal_depth_dir="train/good/xyz",
        normal_test_dir="test/good/rgb",
        normal_test_depth_dir="test/good/xyz",
        abnormal_dir="test/bad/rgb",
        abnormal_depth_dir="test/bad/xyz",
        mask_dir="test/bad/gt",
        train_batch_size=2,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="same_as_test",
    )
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (2, 3, SIZE, SIZE)
    assert batch.depth_map.shape == (2, 3, SIZE, SIZE)
    assert batch.depth_map.dtype.is_floating_point
    check_metric_units(batch.depth_map[0].permute(1, 2, 0).numpy())
    test = next(iter(datamodule.test_dataloader()))
    assert len(datamodule.test_data) == 6  # 2 good + 4 defects
    for index, (image_path, depth_path) in enumerate(zip(test.image_path, test.depth_path, strict=True)):
        assert Path(image_path).stem == Path(depth_path).stem
        assert Path(image_path).parent.parent == Path(depth_path).parent.parent
        anomalous = Path(image_path).parent.parent.name == "bad"
        assert bool(test.gt_label[index]) == anomalous
        if anomalous:
            assert Path(test.mask_path[index]).stem == Path(image_path).stem
        else:
            assert not test.gt_mask[index].any()
    assert test.gt_mask.shape == (6, SIZE, SIZE)

    # BTM trains and tests on it through anomalib's Engine; "auto" picks up the clouds.
    from anomalib.engine import Engine

    from anomalib_btm import BTM

    model = BTM(backbone="resnet18", pre_trained=False)
    engine = Engine(default_root_dir=tmp_path / "results", logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert model.model.resolved_modality == "rgb+xyz"
    assert model.model.memory_bank.shape[1] == 128 + 256 + 33
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(metrics)
