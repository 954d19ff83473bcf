# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests for the synthetic MVTec 3D-AD style generator."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import tifffile
from PIL import Image

from anomalib_btm.data import generate_category, synthetic
from anomalib_btm.data.synthetic import (
    DEFECT_TYPES,
    GEOMETRIC_DEFECTS,
    SHAPES,
    camera_intrinsics,
    render_sample,
    sample_seed,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 96

SMALL = {"n_train": 2, "n_validation": 1, "n_test_good": 2, "n_test_per_defect": 1, "image_size": 64}


@pytest.fixture(scope="module")
def category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return generate_category(root, category="widget", seed=7, **SMALL)


def _valid(xyz: np.ndarray) -> np.ndarray:
    return np.all(xyz != 0, axis=-1)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# Layout, formats
# ---------------------------------------------------------------------------------------------------------------------


def test_layout(category: Path) -> None:
    assert category.name == "widget"
    assert sorted(p.name for p in category.parent.iterdir()) == ["widget"]  # no staging leftovers
    for split, count in (("train", 2), ("validation", 1)):
        base = category / split / "good"
        assert sorted(p.name for p in base.iterdir()) == ["rgb", "xyz"]
        assert sorted(p.name for p in (base / "rgb").iterdir()) == [f"{i:03d}.png" for i in range(count)]
        assert sorted(p.name for p in (base / "xyz").iterdir()) == [f"{i:03d}.tiff" for i in range(count)]
    assert sorted(p.name for p in (category / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
    for label in ("good", *DEFECT_TYPES):
        base = category / "test" / label
        count = 2 if label == "good" else 1
        assert sorted(p.name for p in base.iterdir()) == ["gt", "rgb", "xyz"]
        for sub, ext in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
            assert sorted(p.name for p in (base / sub).iterdir()) == [f"{i:03d}.{ext}" for i in range(count)]
    calibration = json.loads((category / "calibration" / "camera_parameters.json").read_text())
    expected = camera_intrinsics(64)
    for key in ("fx", "fy", "cx", "cy"):
        assert calibration[key] == pytest.approx(getattr(expected, key))
    assert calibration["image_width"] == calibration["image_height"] == 64


def test_dtypes_and_shapes(category: Path) -> None:
    for rgb_path in sorted(category.rglob("rgb/*.png")):
        image = Image.open(rgb_path)
        assert image.mode == "RGB"
        assert np.asarray(image).shape == (64, 64, 3)
        assert np.asarray(image).dtype == np.uint8
        xyz = tifffile.imread(rgb_path.parent.parent / "xyz" / f"{rgb_path.stem}.tiff")
        assert xyz.dtype == np.float32
        assert xyz.shape == (64, 64, 3)
        if rgb_path.parts[-4] == "test":
            gt = Image.open(rgb_path.parent.parent / "gt" / rgb_path.name)
            assert gt.mode == "L"
            assert set(np.unique(np.asarray(gt))) <= {0, 255}


def test_intrinsics_project_points_to_their_pixels() -> None:
    sample = render_sample(SIZE, None, seed=3)
    cam = camera_intrinsics(SIZE)
    valid = _valid(sample.xyz)
    ii, jj = np.nonzero(valid)
    x, y, z = sample.xyz[valid].T.astype(np.float64)
    np.testing.assert_allclose(cam.fx * x / z + cam.cx, jj, atol=1e-3)
    np.testing.assert_allclose(cam.fy * y / z + cam.cy, ii, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry realism
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_invalid_points_are_exact_zeros_and_present(seed: int) -> None:
    xyz = render_sample(SIZE, None, seed=seed).xyz
    any_zero = np.any(xyz == 0, axis=-1)
    all_zero = np.all(xyz == 0, axis=-1)
    np.testing.assert_array_equal(any_zero, all_zero)  # a point is either fully valid or exactly (0, 0, 0)
    invalid = all_zero.mean()
    assert 0.005 < invalid < 0.2


def _height_above_border_plane(xyz: np.ndarray) -> np.ndarray:
    """Height above a plane fitted to the valid points of a 8-px image border (NaN where invalid)."""
    xyz = xyz.astype(np.float64)
    valid = _valid(xyz)
    border = np.zeros(valid.shape, dtype=bool)
    border[:8], border[-8:], border[:, :8], border[:, -8:] = True, True, True, True
    pts = xyz[valid & border]
    center = pts.mean(0)
    normal = np.linalg.svd(pts - center, full_matrices=False)[2][-1]
    normal *= -np.sign(normal[2])  # toward the camera
    return np.where(valid, (xyz - center) @ normal, np.nan)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation with a (2 radius + 1)² square (separable; the image border wraps around)."""
    rows = mask.copy()
    for shift in range(1, radius + 1):
        rows |= np.roll(mask, shift, axis=1) | np.roll(mask, -shift, axis=1)
    out = rows.copy()
    for shift in range(1, radius + 1):
        out |= np.roll(rows, shift, axis=0) | np.roll(rows, -shift, axis=0)
    return out


def test_dropouts_on_steep_flanks_and_random() -> None:
    xyz = render_sample(224, None, seed=5).xyz
    invalid = ~_valid(xyz)
    raised = np.nan_to_num(_height_above_border_plane(xyz), nan=0.0) > 2e-3
    assert invalid.sum() > 200
    # Most missing points hug the object (steep flanks, projector shadow) ...
    near_object = _dilate(raised, 4)
    assert (invalid & near_object).sum() > 0.6 * invalid.sum()
    # ... the outline of the object is mostly missing ...
    outline = _dilate(raised, 2) & ~raised
    assert invalid[outline].mean() > 0.3
    # ... and a few random dropouts lie on the background, away from the object.
    assert 3 <= (invalid & ~_dilate(raised, 8)).sum() < 0.01 * invalid.size


def test_background_plane_and_object() -> None:
    xyz = render_sample(SIZE, None, seed=2).xyz.astype(np.float64)
    valid = _valid(xyz)
    border = np.zeros(valid.shape, dtype=bool)
    border[:8], border[-8:], border[:, :8], border[:, -8:] = True, True, True, True
    pts = xyz[valid & border]
    # The background plane is there, 0.5–0.6 m away and only slightly tilted.
    center = pts.mean(0)
    normal = np.linalg.svd(pts - center, full_matrices=False)[2][-1]
    assert np.abs((pts - center) @ normal).max() < 2e-3
    assert 0.5 < center[2] < 0.6
    assert abs(normal[2]) > np.cos(np.radians(8))
    assert abs(normal[2]) < np.cos(np.radians(1))
    # The object rises a couple of centimetres above the plane and covers a good part of the image.
    height = _height_above_border_plane(xyz)[valid]
    assert 0.012 < height.max() < 0.035
    assert 0.2 < (height > 3e-3).sum() / valid.size < 0.7


def test_noise_is_sub_millimetre() -> None:
    xyz = render_sample(SIZE, None, seed=11).xyz
    height = _height_above_border_plane(xyz)
    # On the background plane the height is pure sensor noise.
    plane = np.abs(np.nan_to_num(height, nan=1.0)) < 2e-3
    plane &= ~_dilate(~plane, 3)
    assert plane.sum() > 1000
    noise = height[plane].std()
    assert 5e-5 < noise < 4e-4


def test_good_samples_vary() -> None:
    a, b = render_sample(SIZE, None, seed=1), render_sample(SIZE, None, seed=2)
    assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() > 3
    assert not np.array_equal(_valid(a.xyz), _valid(b.xyz))


# ---------------------------------------------------------------------------------------------------------------------
# Defects
# ---------------------------------------------------------------------------------------------------------------------


def test_gt_empty_for_good_and_non_empty_for_defects(category: Path) -> None:
    for gt_path in (category / "test" / "good" / "gt").iterdir():
        assert not np.asarray(Image.open(gt_path)).any()
    for label in DEFECT_TYPES:
        for gt_path in (category / "test" / label / "gt").iterdir():
            assert (np.asarray(Image.open(gt_path)) > 0).sum() >= 4


def test_color_defect_changes_only_rgb_inside_mask() -> None:
    for seed in range(3):
        good, bad = render_sample(SIZE, None, seed=seed), render_sample(SIZE, "color", seed=seed)
        # Same seed: the geometry and sensor noise are drawn exactly as for the good sample.
        np.testing.assert_array_equal(good.xyz, bad.xyz)
        mask = bad.mask > 0
        assert mask.sum() > 20
        diff = np.abs(good.rgb.astype(int) - bad.rgb.astype(int)).sum(-1)
        assert not diff[~mask].any()
        assert diff[mask].mean() > 40


def test_color_defect_xyz_statistically_like_good(tmp_path: Path) -> None:
    root = generate_category(
        tmp_path, "stats", n_train=0, n_validation=0, n_test_good=6, n_test_per_defect=6, defects="color", image_size=64
    )

    def stats(label: str) -> np.ndarray:
        rows = []
        for path in sorted((root / "test" / label / "xyz").iterdir()):
            xyz = tifffile.imread(path)
            valid = _valid(xyz)
            rows.append([valid.mean(), xyz[..., 2][valid].min(), np.median(xyz[..., 2][valid])])
        return np.asarray(rows)

    good, color = stats("good"), stats("color")
    np.testing.assert_allclose(good.mean(0), color.mean(0), rtol=0.02)


@pytest.mark.parametrize("defect", GEOMETRIC_DEFECTS)
def test_geometric_defects_change_xyz_inside_mask(defect: str) -> None:
    size = 128
    for seed in range(3):
        good, bad = render_sample(size, None, seed=seed), render_sample(size, defect, seed=seed)
        mask = bad.mask > 0
        assert mask.sum() > 20
        valid_good, valid_bad = _valid(good.xyz), _valid(bad.xyz)
        dz = np.where(valid_good & valid_bad, bad.xyz[..., 2].astype(np.float64) - good.xyz[..., 2], 0.0)
        changed = (np.abs(dz) > 5e-4) | (valid_good != valid_bad)
        assert changed[mask].mean() > 0.4
        # Outside the (slightly grown) defect region the cloud is untouched.
        assert changed[~_dilate(mask, 3)].sum() < 0.002 * mask.size
        inside = dz[mask & valid_good & valid_bad]
        if defect == "bump":
            assert np.percentile(inside, 10) < -1.5e-3  # closer to the camera
        else:
            assert np.percentile(inside, 90) > 1.5e-3  # farther away
        if defect == "hole":
            assert (valid_good & ~valid_bad)[mask].mean() > 0.1  # steep pit walls drop out
        # The defect is visible in the RGB image too (shading / darkening).
        assert np.abs(good.rgb.astype(int) - bad.rgb.astype(int))[mask].mean() > 3


def test_defect_depths_are_a_few_millimetres() -> None:
    for defect, low in (("dent", 2e-3), ("bump", 2e-3), ("hole", 5e-3)):
        good, bad = render_sample(224, None, seed=4), render_sample(224, defect, seed=4)
        valid_both = _valid(good.xyz) & _valid(bad.xyz) & (bad.mask > 0)
        dz = np.abs(bad.xyz[..., 2].astype(np.float64) - good.xyz[..., 2])[valid_both]
        assert dz.max() > low
        radius_px = np.sqrt((bad.mask > 0).sum() / np.pi)
        assert 6 < radius_px < 25


# ---------------------------------------------------------------------------------------------------------------------
# Determinism, errors, atomic writes
# ---------------------------------------------------------------------------------------------------------------------


def test_deterministic_by_seed(tmp_path: Path) -> None:
    kwargs = {**SMALL, "defects": ("dent", "color")}
    a = _files(generate_category(tmp_path / "a", "c", seed=3, **kwargs))
    b = _files(generate_category(tmp_path / "b", "c", seed=3, **kwargs))
    assert a == b
    c = _files(generate_category(tmp_path / "c", "c", seed=4, **kwargs))
    assert a.keys() == c.keys()
    assert a["train/good/xyz/000.tiff"] != c["train/good/xyz/000.tiff"]
    # A sample does not depend on how many others are generated.
    d = _files(generate_category(tmp_path / "d", "c", seed=3, **{**kwargs, "n_train": 1, "defects": ("color",)}))
    assert d["train/good/xyz/000.tiff"] == a["train/good/xyz/000.tiff"]
    assert d["test/color/rgb/000.png"] == a["test/color/rgb/000.png"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"defects": ("dent", "scratch")}, "defects"),
        ({"defects": "dent,scratch"}, "scratch"),
        ({"image_size": 16}, "image_size"),
        ({"image_size": 31}, "at least 32"),
        ({"n_train": -1}, "n_train"),
        ({"n_validation": -2}, "n_validation"),
        ({"n_test_good": -1}, "n_test_good"),
        ({"n_test_per_defect": -1}, "n_test_per_defect"),
        ({"category": "a/b"}, "category"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_category(tmp_path, **{**SMALL, **kwargs})
    assert not any(tmp_path.iterdir())


def test_render_sample_rejects_unknown_defect() -> None:
    with pytest.raises(ValueError, match="defect"):
        render_sample(64, "scratch")


def test_existing_directory_needs_overwrite(tmp_path: Path) -> None:
    kwargs = {**SMALL, "defects": ("hole",)}
    path = generate_category(tmp_path, "c", seed=1, **kwargs)
    before = _files(path)
    with pytest.raises(ValueError, match="overwrite"):
        generate_category(tmp_path, "c", seed=2, **kwargs)
    assert _files(path) == before
    generate_category(tmp_path, "c", seed=2, overwrite=True, **kwargs)
    assert _files(path) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    # An existing but empty directory is simply used.
    (tmp_path / "empty").mkdir()
    generate_category(tmp_path, "empty", **kwargs)
    assert (tmp_path / "empty" / "train" / "good" / "rgb" / "000.png").is_file()


def test_crash_leaves_no_half_category(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = synthetic._write_sample

    def failing_write(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            msg = "disk full"
            raise OSError(msg)
        original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_sample", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_category(tmp_path, "c", **SMALL)
    assert not any(tmp_path.iterdir())
    # With overwrite, a crash keeps the previous complete category.
    monkeypatch.setattr(synthetic, "_write_sample", original)
    path = generate_category(tmp_path, "c", **SMALL)
    before = _files(path)
    monkeypatch.setattr(synthetic, "_write_sample", failing_write)
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        generate_category(tmp_path, "c", seed=9, overwrite=True, **SMALL)
    assert _files(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# ---------------------------------------------------------------------------------------------------------------------
# anomalib and the command line
# ---------------------------------------------------------------------------------------------------------------------


def test_anomalib_mvtec3d_reads_it(category: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib.data import MVTec3D
    from anomalib.data.datamodules.depth import mvtec_3d

    def no_download(*args: object, **kwargs: object) -> None:
        pytest.fail("MVTec3D tried to download the dataset")

    monkeypatch.setattr(mvtec_3d, "download_and_extract", no_download)
    datamodule = MVTec3D(
        root=category.parent, category=category.name, train_batch_size=2, eval_batch_size=4, num_workers=0
    )
    datamodule.prepare_data()
    datamodule.setup()
    assert len(datamodule.train_data) == 2
    assert len(datamodule.test_data) == 2 + len(DEFECT_TYPES)

    train_batch = next(iter(datamodule.train_dataloader()))
    assert tuple(train_batch.image.shape) == (2, 3, 64, 64)
    assert tuple(train_batch.depth_map.shape) == (2, 3, 64, 64)
    assert not train_batch.gt_label.any()

    test_batches = list(datamodule.test_dataloader())
    depth = test_batches[0].depth_map
    assert tuple(depth.shape) == (4, 3, 64, 64)
    # The depth map is the raw organized cloud in metres.
    assert 0.4 < depth[:, 2][depth[:, 2] != 0].median() < 0.7
    labels = np.concatenate([b.gt_label.numpy() for b in test_batches])
    masks = np.concatenate([b.gt_mask.numpy() for b in test_batches])
    assert labels.sum() == len(DEFECT_TYPES)
    for label, mask in zip(labels, masks, strict=True):
        assert mask.shape == (64, 64)
        assert bool(mask.any()) == bool(label)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if p)
    return subprocess.run(
        [sys.executable, "-m", "anomalib_btm.data.synthetic", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


def test_cli(tmp_path: Path) -> None:
    args = [str(tmp_path), "--category", "cli", "--n-train", "1", "--n-validation", "0", "--n-test-good", "1"]
    args += ["--n-test-defect", "1", "--image-size", "48", "--seed", "5", "--defects", "dent,color"]
    result = _run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == tmp_path / "cli"
    assert sorted(p.name for p in (tmp_path / "cli" / "test").iterdir()) == ["color", "dent", "good"]
    assert (tmp_path / "cli" / "test" / "dent" / "gt" / "000.png").is_file()
    assert not any((tmp_path / "cli" / "validation" / "good" / "rgb").iterdir())
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "cli" / "test" / "dent" / "xyz" / "000.tiff"),
        render_sample(48, "dent", seed=sample_seed(5, "test", "dent", 0)).xyz,
    )

    again = _run_cli(*args)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr
    assert _run_cli(*args, "--overwrite").returncode == 0

    bad = _run_cli(str(tmp_path), "--category", "x", "--defects", "dent,scratch")
    assert bad.returncode == 2
    assert "scratch" in bad.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and non-square sensors
# ---------------------------------------------------------------------------------------------------------------------

NEW_SHAPES = [shape for shape in SHAPES if shape != "bagel"]


def _array_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _category_digest(directory: Path) -> str:
    """Digest of a category's decoded images, clouds and other files (independent of the PNG compressor)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        if path.suffix == ".png":
            digest.update(np.asarray(Image.open(path)).tobytes())
        elif path.suffix == ".tiff":
            digest.update(tifffile.imread(path).tobytes())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_default_shape_is_the_unchanged_bagel(category: Path) -> None:
    # Digests written by the generator before the other shapes and non-square sizes existed.
    assert SHAPES[0] == "bagel"
    assert "SHAPES" in synthetic.__all__
    sample = render_sample(64, None, seed=0)
    expected = "2d9540845a5320c20f241d14892c459e4641bde677a4cc4298472874b1976adb"
    assert _array_digest(sample.rgb, sample.xyz, sample.mask) == expected
    dent = render_sample(64, "dent", seed=1, shape="bagel")
    expected = "0f65c86c03b2c937f8f9650037c2b1d12f560ebc8176ee255337965602a234fe"
    assert _array_digest(dent.rgb, dent.xyz, dent.mask) == expected
    assert _category_digest(category) == "7ca2afd1c6c29e830f9145ad0585962d8bab50e31b8cef313983d1a2e16da7ab"
    info = json.loads((category / "synthetic_info.json").read_text())
    assert info["image_size"] == 64
    assert "shape" not in info
    assert "image_width" not in info


@pytest.mark.parametrize("shape", NEW_SHAPES)
def test_every_shape_makes_a_category_anomalib_reads(
    shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib.data import MVTec3D
    from anomalib.data.datamodules.depth import mvtec_3d

    monkeypatch.setattr(mvtec_3d, "download_and_extract", lambda *a, **k: pytest.fail("tried to download"))
    counts = {"n_train": 2, "n_validation": 0, "n_test_good": 1, "n_test_per_defect": 1}
    path = generate_category(tmp_path, shape, image_size=64, seed=2, shape=shape, **counts)
    info = json.loads((path / "synthetic_info.json").read_text())
    assert info["shape"] == shape
    datamodule = MVTec3D(root=tmp_path, category=shape, train_batch_size=2, eval_batch_size=8, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup()
    train_batch = next(iter(datamodule.train_dataloader()))
    assert tuple(train_batch.depth_map.shape) == (2, 3, 64, 64)
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch.gt_label.sum() == len(DEFECT_TYPES)
    for label, mask in zip(test_batch.gt_label.numpy(), test_batch.gt_mask.numpy(), strict=True):
        assert mask.sum() >= (4 if label else 0)
        assert bool(mask.any()) == bool(label)
    # Good samples of a category are the same kind of object in different poses.
    a, b = (tifffile.imread(path / "train" / "good" / "xyz" / f"{i:03d}.tiff") for i in range(2))
    assert not np.array_equal(_valid(a), _valid(b))


def _object_points(size: int | tuple[int, int], shape: str, seed: int, defect: str | None = None) -> tuple:
    """Valid points as object-centred plane coordinates ``(x, y)`` and height ``w`` (metres), with the scene."""
    scene = synthetic._sample_scene(np.random.default_rng(seed), defect, shape)
    xyz = render_sample(size, defect, seed=seed, shape=shape).xyz.astype(np.float64)
    rel = xyz[_valid(xyz)] - scene.plane_point
    du = rel @ scene.basis_u - scene.shape.center[0]
    dv = rel @ scene.basis_v - scene.shape.center[1]
    cos_a, sin_a = np.cos(scene.shape.angle), np.sin(scene.shape.angle)
    return cos_a * du + sin_a * dv, -sin_a * du + cos_a * dv, rel @ scene.plane_normal, scene


def _binned_slope(x: np.ndarray, w: np.ndarray, bins: np.ndarray) -> float:
    """Least-squares ``dx / dw`` with one intercept per bin."""
    num = den = 0.0
    for b in np.unique(bins):
        sel = bins == b
        if sel.sum() >= 3:
            dx, dw = x[sel] - x[sel].mean(), w[sel] - w[sel].mean()
            num, den = num + (dx * dw).sum(), den + (dw * dw).sum()
    assert den > 0
    return num / den


@pytest.mark.parametrize(
    ("shape", "size", "sides"),
    [("ring45", 96, ("inner", "outer")), ("ring60", 96, ("inner", "outer")), ("ring80", 224, ("inner",))],
)
def test_ring_walls_have_their_slope(shape: str, size: int, sides: tuple[str, ...]) -> None:
    angle = float(shape[4:])
    for seed in range(2):
        x, y, w, scene = _object_points(size, shape, seed)
        rho, phi = np.hypot(x, y), np.arctan2(y, x)
        inner, outer, height, _ = scene.shape.dims
        top = scene.shape.scale * height
        middle = scene.shape.scale * (inner + outer) / 2
        wall = (w > 0.15 * top) & (w < 0.8 * top)
        assert w.max() == pytest.approx(top, rel=0.06)
        for side in sides:
            sel = wall & ((rho < middle) if side == "inner" else (rho > middle))
            assert sel.sum() > (50 if angle < 70 else 30)
            # Height against radial distance, one intercept per 15° sector (the ring is slightly elliptic).
            slope = _binned_slope(rho[sel], w[sel], np.floor(phi[sel] / np.radians(15)))
            assert np.sign(slope) == (1 if side == "inner" else -1)
            assert np.degrees(np.arctan(1 / abs(slope))) == pytest.approx(angle, abs=2.0)


def test_ring_wall_points_present_except_at_80_degrees() -> None:
    """Walls of 45° and 60° stay in the cloud; most of an 80° wall drops out (normal nearly across the rays)."""
    fractions = {}
    for shape in ("ring45", "ring60", "ring80"):
        x, y, _, scene = _object_points(128, shape, 0)
        inner, outer, height, tan_wall = scene.shape.dims
        rho = np.hypot(x, y) / scene.shape.scale
        run = height / tan_wall
        on_walls = (np.abs(rho - inner) < 0.3 * run) | (np.abs(rho - outer) < 0.3 * run)
        expected = 2 * np.pi * (inner + outer) * 0.6 * run * scene.shape.scale**2  # area of those bands
        pixel = 0.11 / 128
        fractions[shape] = on_walls.sum() / (expected / pixel**2)
    assert fractions["ring45"] > 0.8
    assert fractions["ring60"] > 0.8
    assert fractions["ring80"] < 0.4


def test_box_is_tilted_with_a_steep_face() -> None:
    for seed in range(2):
        x, y, w, scene = _object_points(160, "box", seed)
        width, length, thickness, tilt = scene.shape.dims
        scale, cos_t, sin_t = scene.shape.scale, np.cos(tilt), np.sin(tilt)
        assert np.radians(20) <= tilt <= np.radians(30)
        xb = x / scale + (width * cos_t - thickness * sin_t) / 2  # tilt frame: lower long edge at 0
        inside = np.abs(y / scale) < length / 2 - 3e-3
        top_face = inside & (xb > -thickness * sin_t + 3e-3) & (xb < width * cos_t - thickness * sin_t - 3e-3)
        end_face = inside & (xb > width * cos_t - thickness * sin_t + 1e-3) & (xb < width * cos_t - 1e-3)
        assert top_face.sum() > 500
        assert end_face.sum() > 20
        rise = 1 / _binned_slope(x[top_face], w[top_face], np.zeros(top_face.sum()))
        assert np.degrees(np.arctan(rise)) == pytest.approx(np.degrees(tilt), abs=1.5)
        fall = 1 / _binned_slope(x[end_face], w[end_face], np.zeros(end_face.sum()))
        assert np.degrees(np.arctan(-fall)) == pytest.approx(90 - np.degrees(tilt), abs=3.0)


@pytest.mark.parametrize(
    ("shape", "low", "high"), [("ring60", 0.010, 0.015), ("dome", 0.017, 0.024), ("box", 0.024, 0.036)]
)
def test_shape_heights(shape: str, low: float, high: float) -> None:
    for seed in range(3):
        height = _height_above_border_plane(render_sample(SIZE, None, seed=seed, shape=shape).xyz)
        assert low < np.nanmax(height) < high


def test_dome_is_a_spherical_cap() -> None:
    x, y, w, scene = _object_points(128, "dome", 1)
    radius, height = scene.shape.dims
    e, scale = scene.shape.ellipticity, scene.shape.scale
    rho = np.hypot(x / e, y * e) / scale
    on = rho < 0.9 * radius
    sphere = (radius**2 + height**2) / (2 * height)
    expected = scale * (np.sqrt(sphere**2 - rho[on] ** 2) - (sphere - height))
    assert np.abs(w[on] - expected).mean() < 5e-4
    # The flanks get steep near the base (about 60° at the rim).
    assert np.degrees(np.arcsin(radius / sphere)) > 55


def test_box_edges_do_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ray that clips a sharp edge between two march samples still hits the box (not the plane below it)."""
    for seed in range(4):
        xyz = render_sample(128, None, seed=seed, shape="box").xyz
        with monkeypatch.context() as patch:
            patch.setattr(synthetic, "_MARCH_STEPS_SHARP", 512)
            reference = render_sample(128, None, seed=seed, shape="box").xyz
        assert (np.abs(xyz[..., 2].astype(np.float64) - reference[..., 2]) > 1e-3).sum() <= 1


@pytest.mark.parametrize("shape", NEW_SHAPES)
def test_defects_land_on_the_object(shape: str) -> None:
    on_wall = 0
    for seed in range(30):
        scene = synthetic._sample_scene(np.random.default_rng(seed), "dent", shape)
        center = np.asarray(scene.defect.center, dtype=np.float32)
        level = synthetic._base_height(scene.shape, center[:1], center[1:])[0] / synthetic._nominal_height(scene.shape)
        assert level > 0.05
        on_wall += level < 0.9
    if shape in ("ring45", "ring60"):
        assert on_wall >= 4  # some defects sit on the walls


@pytest.mark.parametrize("defect", GEOMETRIC_DEFECTS)
@pytest.mark.parametrize("shape", NEW_SHAPES)
def test_geometric_defects_change_xyz_inside_mask_every_shape(shape: str, defect: str) -> None:
    for seed in range(3):
        good, bad = render_sample(SIZE, None, seed=seed, shape=shape), render_sample(SIZE, defect, seed, shape=shape)
        mask = bad.mask > 0
        assert mask.sum() > 20
        valid_good, valid_bad = _valid(good.xyz), _valid(bad.xyz)
        dz = np.where(valid_good & valid_bad, bad.xyz[..., 2].astype(np.float64) - good.xyz[..., 2], 0.0)
        changed = (np.abs(dz) > 5e-4) | (valid_good != valid_bad)
        assert changed[mask].mean() > 0.4
        assert changed[~_dilate(mask, 3)].sum() < 0.002 * mask.size  # a bump may shadow a few points next to it
        inside = dz[mask & valid_good & valid_bad]
        if defect == "bump":
            assert np.percentile(inside, 10) < -1.5e-3
        else:  # a crack is only 2-3 px wide here
            assert np.percentile(inside, 90) > (1e-3 if defect == "crack" else 1.5e-3)
        assert np.abs(good.rgb.astype(int) - bad.rgb.astype(int))[mask].mean() > 3
    color = render_sample(SIZE, "color", seed=0, shape=shape)
    np.testing.assert_array_equal(color.xyz, render_sample(SIZE, None, seed=0, shape=shape).xyz)
    assert (color.mask > 0).sum() > 20


@pytest.mark.parametrize("size", [(48, 64), (64, 48)])
def test_non_square_images(size: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib.data import MVTec3D
    from anomalib.data.datamodules.depth import mvtec_3d

    height, width = size
    cam = camera_intrinsics(size)
    assert (cam.height, cam.width) == size
    assert cam.fx == cam.fy == pytest.approx(min(size) * 0.55 / 0.11)  # the shorter side sees 0.11 m
    sample = render_sample(size, "hole", seed=1, shape="ring60")
    assert sample.rgb.shape == (height, width, 3)
    assert sample.xyz.shape == (height, width, 3)
    assert sample.mask.shape == size
    assert (sample.mask > 0).sum() > 4
    valid = _valid(sample.xyz)
    ii, jj = np.nonzero(valid)
    x, y, z = sample.xyz[valid].T.astype(np.float64)
    np.testing.assert_allclose(cam.fx * x / z + cam.cx, jj, atol=1e-3)
    np.testing.assert_allclose(cam.fy * y / z + cam.cy, ii, atol=1e-3)

    counts = {"n_train": 1, "n_validation": 0, "n_test_good": 1, "n_test_per_defect": 1, "defects": "dent"}
    path = generate_category(tmp_path, "wide", image_size=size, shape="box", **counts)
    for png in path.rglob("*.png"):
        assert np.asarray(Image.open(png)).shape[:2] == size
    for tiff in path.rglob("*.tiff"):
        assert tifffile.imread(tiff).shape == (height, width, 3)
    calibration = json.loads((path / "calibration" / "camera_parameters.json").read_text())
    assert (calibration["image_height"], calibration["image_width"]) == size
    info = json.loads((path / "synthetic_info.json").read_text())
    assert (info["image_height"], info["image_width"]) == size
    assert info["image_size"] == list(size)
    assert info["shape"] == "box"

    monkeypatch.setattr(mvtec_3d, "download_and_extract", lambda *a, **k: pytest.fail("tried to download"))
    datamodule = MVTec3D(root=tmp_path, category="wide", eval_batch_size=2, num_workers=0)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert tuple(batch.image.shape[-2:]) == size
    assert tuple(batch.depth_map.shape[-2:]) == size
    assert tuple(batch.gt_mask.shape[-2:]) == size


def test_square_tuple_equals_int() -> None:
    a, b = render_sample(64, "crack", seed=3, shape="dome"), render_sample((64, 64), "crack", seed=3, shape="dome")
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.rgb, b.rgb)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": "cube"}, "shape"),
        ({"image_size": (16, 64)}, "image_size"),
        ({"image_size": (64,)}, "image_size"),
        ({"image_size": (64, 64, 3)}, "image_size"),
        ({"image_size": (64.0, 64)}, "image_size"),
    ],
)
def test_bad_shape_and_size_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_category(tmp_path, **{**SMALL, **kwargs})
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match=match):
        render_sample(**{"image_size": 64, **kwargs})


def test_cli_shape_and_non_square(tmp_path: Path) -> None:
    args = [str(tmp_path), "--category", "c", "--n-train", "1", "--n-validation", "0", "--n-test-good", "0"]
    args += [
        "--n-test-defect",
        "1",
        "--defects",
        "bump",
        "--shape",
        "ring80",
        "--image-size",
        "40",
        "56",
        "--seed",
        "3",
    ]
    result = _run_cli(*args)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "c" / "test" / "bump" / "xyz" / "000.tiff"),
        render_sample((40, 56), "bump", seed=sample_seed(3, "test", "bump", 0), shape="ring80").xyz,
    )
    assert _run_cli(str(tmp_path), "--category", "d", "--shape", "cube").returncode == 2
    assert _run_cli(str(tmp_path), "--category", "d", "--image-size", "40", "56", "64").returncode == 2
    assert not (tmp_path / "d").exists()
