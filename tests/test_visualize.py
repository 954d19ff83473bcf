# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Tests for PLY export and 2-D figures of anomaly maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from anomalib_btm.data.synthetic import RenderedSample, render_sample
from anomalib_btm.visualize import anomaly_colors, save_figure, save_ply


@pytest.fixture(scope="module")
def sample() -> RenderedSample:
    return render_sample(64, "bump", 2)


def _score(xyz: np.ndarray) -> np.ndarray:
    """A smooth map: distance from the image centre (so colours have something to be monotone in)."""
    rows, cols = np.mgrid[: xyz.shape[0], : xyz.shape[1]]
    return np.hypot(rows - xyz.shape[0] / 2, cols - xyz.shape[1] / 2).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_ply_is_readable_with_right_points(tmp_path: Path, sample: RenderedSample, binary: bool) -> None:
    score = _score(sample.xyz)
    written = save_ply(sample.xyz, score, tmp_path / "cloud.ply", binary=binary)
    assert written == [tmp_path / "cloud.ply"]
    header = written[0].read_bytes()[:300]
    assert (b"binary_little_endian" in header) == binary
    assert b"property float scalar_anomaly" in header

    cloud = o3d.io.read_point_cloud(str(written[0]))
    valid = np.all(sample.xyz != 0, axis=-1)
    assert len(cloud.points) == valid.sum()
    np.testing.assert_allclose(np.asarray(cloud.points), sample.xyz[valid], atol=1e-7)
    colors = np.rint(np.asarray(cloud.colors) * 255).astype(np.uint8)
    np.testing.assert_array_equal(colors, anomaly_colors(score[valid], float(score.min()), float(score.max())))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_ply_colours_are_monotone_in_score(tmp_path: Path) -> None:
    xyz = np.ones((1, 256, 3), dtype=np.float32)
    xyz[0, :, 0] = np.arange(1, 257)
    score = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None]
    save_ply(xyz, score, tmp_path / "ramp.ply", cmap="jet")
    colors = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "ramp.ply")).colors)
    # Position of each written colour along the colormap: must not decrease as the score grows.
    lut = colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3]
    position = np.argmin(((colors[:, None, :] - lut[None]) ** 2).sum(-1), axis=1)
    assert np.all(np.diff(position) >= 0)
    assert position[0] == 0
    assert position[-1] == 255
    assert colors[0, 2] > 0.4 > colors[0, 0]  # lowest score: (dark) blue
    assert colors[-1, 0] > 0.4 > colors[-1, 2]  # highest score: (dark) red


def test_ply_vmin_vmax_and_constant_map(tmp_path: Path, sample: RenderedSample) -> None:
    score = _score(sample.xyz)
    save_ply(sample.xyz, score, tmp_path / "clip.ply", vmin=1e6, vmax=2e6)
    colors = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "clip.ply")).colors)
    assert np.allclose(colors, colors[0])  # everything below vmin: the first colour
    save_ply(sample.xyz, np.zeros_like(score), tmp_path / "flat.ply")
    colors = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "flat.ply")).colors)
    assert np.allclose(colors, colors[0])


def test_ply_accepts_torch_channels_first_and_writes_rgb_copy(tmp_path: Path, sample: RenderedSample) -> None:
    xyz = torch.from_numpy(sample.xyz).permute(2, 0, 1)[None]  # (1, 3, H, W)
    score = torch.from_numpy(_score(sample.xyz))[None, None]  # (1, 1, H, W)
    rgb = torch.from_numpy(sample.rgb).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    written = save_ply(xyz, score, tmp_path / "sub" / "t.ply", rgb=rgb)
    assert written == [tmp_path / "sub" / "t.ply", tmp_path / "sub" / "t_rgb.ply"]
    valid = np.all(sample.xyz != 0, axis=-1)
    colored = o3d.io.read_point_cloud(str(written[1]))
    np.testing.assert_allclose(np.asarray(colored.points), sample.xyz[valid], atol=1e-7)
    np.testing.assert_array_equal(np.rint(np.asarray(colored.colors) * 255).astype(np.uint8), sample.rgb[valid])


@pytest.mark.parametrize(
    ("xyz_shape", "map_shape", "error", "match"),
    [
        ((8, 8, 3), (4, 4), ValueError, "resize the map"),
        ((8, 8, 3), (2, 8, 8), ValueError, r"anomaly_map must have shape \(H, W\)"),
        ((8, 8, 2), (8, 8), ValueError, r"xyz must have shape \(H, W, 3\)"),
        ((8, 8), (8, 8), ValueError, "xyz must have shape"),
    ],
)
def test_ply_shape_errors(tmp_path: Path, xyz_shape: tuple, map_shape: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        save_ply(np.ones(xyz_shape, dtype=np.float32), np.zeros(map_shape), tmp_path / "x.ply")
    assert not list(tmp_path.iterdir())


def test_ply_value_errors(tmp_path: Path) -> None:
    xyz = np.ones((4, 4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="no valid point"):
        save_ply(np.zeros_like(xyz), np.zeros((4, 4)), tmp_path / "x.ply")
    bad = xyz.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        save_ply(bad, np.zeros((4, 4)), tmp_path / "x.ply")
    with pytest.raises(ValueError, match="anomaly_map contains NaN"):
        save_ply(xyz, np.full((4, 4), np.inf), tmp_path / "x.ply")
    with pytest.raises(ValueError, match="rgb is 2×2"):
        save_ply(xyz, np.zeros((4, 4)), tmp_path / "x.ply", rgb=np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="normalised"):
        save_ply(xyz, np.zeros((4, 4)), tmp_path / "x.ply", rgb=-np.ones((4, 4, 3)))
    with pytest.raises(TypeError, match="numbers"):
        save_ply(np.array([["a"] * 3] * 4), np.zeros((4, 4)), tmp_path / "x.ply")
    assert not list(tmp_path.iterdir())


def test_figure_written(tmp_path: Path, sample: RenderedSample) -> None:
    score = torch.from_numpy(_score(sample.xyz))[None]
    path = save_figure(sample.rgb, sample.xyz, score, tmp_path / "fig.png", gt_mask=sample.mask, title="bump")
    assert path == tmp_path / "fig.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > image.height > 100
    # Panels of different resolutions and a vector format.
    big_rgb = np.kron(sample.rgb, np.ones((2, 2, 1), dtype=np.uint8))
    pdf = save_figure(big_rgb, sample.xyz, score[0, ::2, ::2], tmp_path / "fig.pdf", gt_mask=sample.mask > 0)
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]


def test_figure_errors(tmp_path: Path, sample: RenderedSample) -> None:
    score = _score(sample.xyz)
    with pytest.raises(ValueError, match="Unsupported figure format"):
        save_figure(sample.rgb, sample.xyz, score, tmp_path / "fig.xyz")
    with pytest.raises(ValueError, match="xyz must have shape"):
        save_figure(sample.rgb, sample.xyz[..., :2], score, tmp_path / "fig.png")
    with pytest.raises(ValueError, match="anomaly_map contains NaN"):
        save_figure(sample.rgb, sample.xyz, np.full_like(score, np.nan), tmp_path / "fig.png")
    assert not list(tmp_path.iterdir())


def _read_ply_colours(path: Path) -> np.ndarray:
    """``(N, 3)`` uint8 vertex colours of a binary PLY written by :func:`save_ply`."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    names = [line.split()[-1] for line in head.decode().splitlines() if line.startswith("property")]
    kinds = {"red": "u1", "green": "u1", "blue": "u1"}
    vertices = np.frombuffer(body, dtype=[(name, kinds.get(name, "<f4")) for name in names])
    return np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=-1)


def test_btm_visualizer_ply_and_overlay_keep_the_image_colours(small_root: Path, tmp_path: Path) -> None:
    """The ``_rgb.ply`` shows the file's colours (not a min-max stretch of the normalised tensor), with or without
    ``image_path`` (then the normalisation is inverted exactly)."""
    from types import SimpleNamespace

    import tifffile
    from anomalib.data import DepthBatch

    from anomalib_btm import BTM
    from anomalib_btm.visualize import BTMVisualizer, display_images

    rgb_path = sorted((small_root / "small" / "test" / "color" / "rgb").glob("*.png"))[0]
    xyz_path = rgb_path.parents[1] / "xyz" / f"{rgb_path.stem}.tiff"
    picture = Image.open(rgb_path).convert("RGB")
    xyz = torch.from_numpy(tifffile.imread(xyz_path)).permute(2, 0, 1)[None].float()
    size = (64, 64)  # the anomaly map's size: the PLY is written there
    model = BTM(
        backbone="resnet18", pre_trained=False, modality="rgb+xyz", pre_processor=BTM.configure_pre_processor(size)
    )
    raw = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    image = model.pre_processor.transform(raw)
    batch = DepthBatch(
        image=image,
        depth_map=xyz,
        anomaly_map=torch.rand(1, *size),
        pred_score=torch.tensor([0.7]),
        image_path=[str(rgb_path)],
    )
    trainer = SimpleNamespace(default_root_dir=tmp_path, datamodule=None)
    BTMVisualizer(save_ply=True, output_dir=tmp_path / "images").on_test_batch_end(trainer, model, None, batch, 0)
    written = sorted((tmp_path / "images" / "ply").rglob("*_rgb.ply"))
    assert len(written) == 1
    expected = np.asarray(picture.resize(size[::-1], Image.Resampling.BILINEAR)).reshape(-1, 3)
    cloud = torch.nn.functional.interpolate(xyz, size=size, mode="nearest")[0].permute(1, 2, 0).reshape(-1, 3)
    valid = (cloud != 0).all(dim=-1).numpy()
    colours = _read_ply_colours(written[0]).astype(int)
    assert np.abs(colours - expected[valid].astype(int)).max() <= 1
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1  # anomalib's 2D overlay

    # Without image_path: Normalize inverted exactly, not stretched.
    restored = display_images(image, None, image.shape[-2:], model)
    torch.testing.assert_close(
        restored, model.pre_processor.transform.transforms[0](raw).clamp(0, 1), atol=1e-5, rtol=0
    )
