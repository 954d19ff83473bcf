# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests for the optional background removal (BTF's plane + DBSCAN preprocessing) and its cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from anomalib_btm.data import background
from anomalib_btm.data.background import (
    foreground_mask,
    main,
    remove_background,
    remove_background_cached,
    remove_background_dir,
)
from anomalib_btm.data.synthetic import RenderedSample, render_sample

SIZE = 224


def _height_above_plane(xyz: np.ndarray, border: int = 10) -> np.ndarray:
    """Height of every point above the background plane, fitted by least squares to the border (inliers refined)."""
    valid = np.all(xyz != 0, axis=-1)
    frame = np.ones(valid.shape, dtype=bool)
    frame[border:-border, border:-border] = False
    points = xyz[frame & valid].astype(np.float64)
    for _ in range(3):
        design = np.c_[points[:, :2], np.ones(len(points))]
        (a, b, c), *_ = np.linalg.lstsq(design, points[:, 2], rcond=None)
        normal = np.array([a, b, -1.0]) / np.linalg.norm([a, b, -1.0])  # Z = aX + bY + c; the camera is at Z < plane
        offset = c / np.linalg.norm([a, b, -1.0])
        points = points[np.abs(points @ normal + offset) < 1e-3]
    return xyz.astype(np.float64) @ normal + offset


@pytest.fixture(scope="module", params=[(0, None), (1, "hole"), (2, "bump")], ids=["good0", "hole1", "bump2"])
def scene(request: pytest.FixtureRequest) -> RenderedSample:
    seed, defect = request.param
    return render_sample(SIZE, defect, seed)


def _add_debris(xyz: np.ndarray, rows: slice, cols: slice, lift: float = 0.01) -> np.ndarray:
    """Move a patch of (background) points ``lift`` metres toward the camera along their rays."""
    out = xyz.copy()
    patch = out[rows, cols]
    z = patch[..., 2:3]
    out[rows, cols] = np.where(z > 0, patch * (z - lift) / np.where(z > 0, z, 1), 0)
    return out


def test_removes_known_plane_keeps_object(scene: RenderedSample) -> None:
    xyz_before, rgb_before = scene.xyz.copy(), scene.rgb.copy()
    height = _height_above_plane(scene.xyz)
    valid = np.all(scene.xyz != 0, axis=-1)
    plane = valid & (np.abs(height) < 1e-3)
    obj = valid & (height > 2e-3)
    assert plane.sum() > 20_000
    assert obj.sum() > 10_000

    xyz, rgb = remove_background(scene.xyz, scene.rgb)
    kept = np.all(xyz != 0, axis=-1)
    assert 1 - kept[plane].mean() >= 0.95
    assert kept[obj].mean() >= 0.95
    assert kept[valid & (height > 6e-3)].all()  # clearly above plane_distance: every point stays

    # Kept points are untouched, removed ones are zero in both arrays; missing points keep their colour.
    np.testing.assert_array_equal(xyz[kept], scene.xyz[kept])
    removed = valid & ~kept
    assert not rgb[removed].any()
    np.testing.assert_array_equal(rgb[~removed], scene.rgb[~removed])
    # Inputs are not modified.
    np.testing.assert_array_equal(scene.xyz, xyz_before)
    np.testing.assert_array_equal(scene.rgb, rgb_before)


def test_removes_separate_debris_cluster(scene: RenderedSample) -> None:
    xyz = _add_debris(scene.xyz, slice(12, 24), slice(12, 24))  # a 12×12 px blob 10 mm above a corner
    debris = np.zeros(xyz.shape[:2], dtype=bool)
    debris[12:24, 12:24] = np.all(xyz[12:24, 12:24] != 0, axis=-1)
    height = _height_above_plane(scene.xyz)
    obj = np.all(scene.xyz != 0, axis=-1) & (height > 2e-3)

    exact = foreground_mask(xyz, dbscan_max_points=None)
    assert not exact[debris].any()  # 144 points: a cluster, but not the largest
    assert exact[obj].mean() >= 0.95

    subsampled = foreground_mask(xyz, dbscan_max_points=4_000)  # forces the grid-subsample path (stride 2)
    assert not subsampled[debris].any()
    valid = np.all(xyz != 0, axis=-1)
    assert (subsampled == exact)[valid].mean() >= 0.995


def test_rgb_is_optional_and_deterministic() -> None:
    scene = render_sample(128, "crack", 3)
    xyz_a, rgb = remove_background(scene.xyz)
    xyz_b, _ = remove_background(scene.xyz, seed=0)
    assert rgb is None
    np.testing.assert_array_equal(xyz_a, xyz_b)
    _, gray = remove_background(scene.xyz.astype(np.float64), scene.rgb[..., 0])
    assert gray.shape == (128, 128)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"border": 0}, "border=0"),
        ({"border": 120}, "no interior"),
        ({"ransac_n": 2}, "ransac_n=2"),
        ({"dbscan_eps": -1.0}, "dbscan_eps"),
        ({"plane_distance": float("nan")}, "plane_distance"),
        ({"dbscan_min_points": 0}, "dbscan_min_points"),
        ({"dbscan_max_points": 10}, "dbscan_max_points"),
    ],
)
def test_invalid_parameters(kwargs: dict, match: str) -> None:
    xyz = render_sample(64, None, 0).xyz
    with pytest.raises(ValueError, match=match):
        remove_background(xyz, **kwargs)


def test_failure_modes() -> None:
    xyz = render_sample(64, None, 0).xyz
    with pytest.raises(ValueError, match="pixel-aligned"):
        remove_background(xyz, np.zeros((32, 32, 3), dtype=np.uint8))
    no_border = xyz.copy()
    no_border[:10] = 0
    no_border[-10:] = 0
    no_border[:, :10] = 0
    no_border[:, -10:] = 0
    with pytest.raises(ValueError, match="cannot be fitted"):
        remove_background(no_border)
    flat = np.zeros_like(xyz)
    flat[..., 0], flat[..., 1] = np.meshgrid(np.linspace(-0.05, 0.05, 64), np.linspace(-0.05, 0.05, 64))
    flat[..., 2] = 0.5
    with pytest.raises(ValueError, match="Plane removal left no point"):
        remove_background(flat)
    with pytest.raises(ValueError, match="no valid point"):
        remove_background(np.zeros((64, 64, 3), dtype=np.float32))


# ------------------------------------------------------------------------------------------------------------------
# Cache and folder processing
# ------------------------------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    xyz_dir, rgb_dir = tmp_path / "xyz", tmp_path / "rgb"
    xyz_dir.mkdir()
    rgb_dir.mkdir()
    for index in range(2):
        sample = render_sample(128, None, index)
        tifffile.imwrite(xyz_dir / f"{index:03d}.tiff", sample.xyz, photometric="rgb")
        Image.fromarray(sample.rgb).save(rgb_dir / f"{index:03d}.png")
    return xyz_dir, rgb_dir


def test_cached_reuses_result_and_never_touches_sources(
    tmp_path: Path, files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    xyz_dir, rgb_dir = files
    source, rgb_source = xyz_dir / "000.tiff", rgb_dir / "000.png"
    before = {p: (_digest(p), p.stat().st_mtime_ns) for p in (source, rgb_source)}
    cache = tmp_path / "cache"

    first = remove_background_cached(source, cache, rgb_source)
    assert first.parent == cache
    assert first.name.startswith("000-")
    assert first.with_suffix(".png").is_file()
    expected_xyz, expected_rgb = remove_background(tifffile.imread(source), np.asarray(Image.open(rgb_source)))
    np.testing.assert_array_equal(tifffile.imread(first), expected_xyz)
    np.testing.assert_array_equal(np.asarray(Image.open(first.with_suffix(".png"))), expected_rgb)
    stamp = first.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(background, "remove_background", fail)
    assert remove_background_cached(source, cache, rgb_source) == first
    assert first.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    # Another parameter, or a modified source, gives another entry.
    other = remove_background_cached(source, cache, rgb_source, plane_distance=0.004)
    assert other != first
    xyz_only = remove_background_cached(source, cache)
    assert xyz_only not in (first, other)
    os.utime(source, ns=(stamp, source.stat().st_mtime_ns + 10**9))
    assert remove_background_cached(source, cache) != xyz_only
    before[source] = (before[source][0], source.stat().st_mtime_ns)

    assert {p: (_digest(p), p.stat().st_mtime_ns) for p in (source, rgb_source)} == before
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left

    with pytest.raises(TypeError, match="unknown parameter"):
        remove_background_cached(source, cache, eps=0.1)
    with pytest.raises(FileNotFoundError):
        remove_background_cached(xyz_dir / "999.tiff", cache)


def test_cached_names_the_failing_file(tmp_path: Path) -> None:
    path = tmp_path / "mm.tiff"
    tifffile.imwrite(path, render_sample(64, None, 0).xyz * 1000)
    with pytest.raises(ValueError, match=r"mm\.tiff looks like millimetres"):
        remove_background_cached(path, tmp_path / "cache")


def test_dir_and_command(
    tmp_path: Path, files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    xyz_dir, rgb_dir = files
    out = tmp_path / "out"
    written = remove_background_dir(xyz_dir, out, rgb_dir)
    assert [p.name for p in written] == ["000.tiff", "001.tiff"]
    assert sorted(p.name for p in (out / "rgb").iterdir()) == ["000.png", "001.png"]
    assert (out / ".cache").is_dir()
    cloud = tifffile.imread(out / "xyz" / "000.tiff")
    assert 0 < np.all(cloud != 0, axis=-1).sum() < np.all(tifffile.imread(xyz_dir / "000.tiff") != 0, axis=-1).sum()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(background, "remove_background", fail)
    assert main([str(xyz_dir), str(out), "--rgb-dir", str(rgb_dir)]) == 0
    assert "processed 2 cloud(s)" in capsys.readouterr().out
    monkeypatch.undo()

    (rgb_dir / "001.png").unlink()
    assert main([str(xyz_dir), str(out), "--rgb-dir", str(rgb_dir)]) == 2
    assert "No RGB image" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), str(out)]) == 2
