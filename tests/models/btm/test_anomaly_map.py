# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Blur and resizes: Gaussian kernel 15 / sigma 4 on the float map, nearest for XYZ, adaptive pooling for features."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from anomalib_btm.models.btm.anomaly_map import AnomalyMapGenerator
from anomalib_btm.models.btm.feature_branches import resize_features, resize_xyz


def _gaussian_1d(size: int = 15, sigma: float = 4.0) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def test_blur_impulse_response_is_the_15x15_sigma4_gaussian() -> None:
    generator = AnomalyMapGenerator()
    impulse = torch.zeros(1, 1, 64, 64)
    impulse[0, 0, 32, 32] = 1.0
    response = generator.blur(impulse)[0, 0]
    g = _gaussian_1d()
    expected = torch.outer(g, g).float()
    torch.testing.assert_close(response[25:40, 25:40], expected, atol=1e-6, rtol=1e-4)
    assert response.sum().item() == pytest.approx(1.0, abs=1e-5)
    # Nothing beyond the 15x15 support.
    assert response[:25].abs().max().item() == 0.0


def test_blur_keeps_constant_maps_and_float_precision() -> None:
    generator = AnomalyMapGenerator()
    constant = torch.full((2, 28, 28), 3.25)
    out = generator(constant, (224, 224))
    assert out.shape == (2, 1, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, 3.25))
    # Float map: values finer than 1/255 survive (BTF quantised to 8 bits; BTM does not).
    ramp = torch.linspace(0, 1e-3, 28 * 28).reshape(1, 28, 28)
    assert generator(ramp, (224, 224)).unique().numel() > 256


def test_map_is_bilinear_upsampling_then_blur() -> None:
    generator = AnomalyMapGenerator()
    scores = torch.rand(1, 28, 28)
    expected = generator.blur(F.interpolate(scores[:, None], size=(224, 224), mode="bilinear", align_corners=False))
    torch.testing.assert_close(generator(scores, (224, 224)), expected)


@pytest.mark.parametrize(("kernel", "sigma"), [(14, 4.0), (0, 4.0), (15, 0.0)])
def test_bad_blur_arguments(kernel: int, sigma: float) -> None:
    with pytest.raises(ValueError, match="blur"):
        AnomalyMapGenerator(kernel, sigma)


def test_xyz_resize_is_nearest_and_invents_no_points() -> None:
    generator = torch.Generator().manual_seed(0)
    xyz = torch.rand(1, 3, 400, 300, generator=generator) + 0.5
    xyz[:, :, 100:200, 50:120] = 0.0  # a hole of missing points
    out = resize_xyz(xyz, (224, 224))
    assert out.shape == (1, 3, 224, 224)
    points_in = {tuple(p) for p in xyz[0].reshape(3, -1).T.tolist()}
    points_out = {tuple(p) for p in out[0].reshape(3, -1).T.tolist()}
    assert points_out <= points_in
    # Points are either fully valid or exactly zero: no blend of a point with the zero background.
    valid = (out != 0).all(dim=1)
    missing = (out == 0).all(dim=1)
    assert bool((valid | missing).all())
    assert int(missing.sum()) > 0


def test_feature_resize_equals_adaptive_average_pooling() -> None:
    features = torch.randn(2, 5, 224, 224)
    torch.testing.assert_close(resize_features(features, (28, 28)), F.adaptive_avg_pool2d(features, (28, 28)))
    small = torch.randn(2, 5, 14, 14)
    torch.testing.assert_close(resize_features(small, (28, 28)), F.adaptive_avg_pool2d(small, (28, 28)))
    for factor in range(2, 9):  # integer up-scaling replicates exactly (nearest-neighbour interpolation)
        up = resize_features(small[..., :13], (14 * factor, 13 * factor))
        assert torch.equal(up, small[..., :13].repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1))
    odd = torch.randn(1, 3, 30, 17)
    torch.testing.assert_close(resize_features(odd, (28, 28)), F.adaptive_avg_pool2d(odd, (28, 28)))


def test_pil_blur_reproduces_btf_quantised_blur() -> None:
    from PIL import Image, ImageFilter

    generator = AnomalyMapGenerator(blur_mode="pil")
    scores = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0)) * 7.0
    out = generator(scores, (224, 224))
    upsampled = F.interpolate(scores[:, None], size=(224, 224), mode="bilinear", align_corners=False)
    for index in range(2):
        peak = upsampled[index].max()
        quantised = (upsampled[index, 0] / peak * 255).to(torch.uint8).numpy()
        blurred = Image.fromarray(quantised, mode="L").filter(ImageFilter.GaussianBlur(radius=4))
        expected = torch.from_numpy(__import__("numpy").asarray(blurred, dtype="float32") / 255.0) * peak
        torch.testing.assert_close(out[index, 0], expected)
    # 8-bit: at most 256 distinct levels per map (BTM's float blur keeps far more).
    assert out[0].unique().numel() <= 256


def test_unknown_blur_mode() -> None:
    with pytest.raises(ValueError, match="blur_mode"):
        AnomalyMapGenerator(blur_mode="box")
