# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""RGB branch: frozen backbone, BTM's 3×3 mean with padding 1, local weights files and their errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import timm
import torch
from torch.nn import functional as F

from anomalib_btm.features import compute_fpfh
from anomalib_btm.features.fpfh_math import pool_separable
from anomalib_btm.features.fpfh_torch import TORCH_OPTIONS, fpfh_torch
from anomalib_btm.models.btm.feature_branches import RGBBranch, XYZBranch, patch_pooling
from anomalib_btm.weights import EFFICIENTNET_LITE0_BACKBONE, EFFICIENTNET_LITE0_LAYERS
from tests.features.test_fpfh import make_cloud


def test_rgb_branch_shapes_and_pooling() -> None:
    branch = RGBBranch("resnet18", ("layer2", "layer3"), pre_trained=False)
    image = torch.randn(2, 3, 224, 224)
    out = branch(image)
    assert out.shape == (2, 128 + 256, 28, 28)
    feats = branch.extractor(image)
    layer2 = F.avg_pool2d(feats["layer2"], 3, 1, 1)
    layer3 = F.adaptive_avg_pool2d(F.avg_pool2d(feats["layer3"], 3, 1, 1), (28, 28))
    torch.testing.assert_close(out, torch.cat([layer2, layer3], 1))
    assert not any(p.requires_grad for p in branch.parameters())
    branch.train()
    assert not branch.extractor.training  # batch-norm statistics stay frozen


def test_full_and_features_only_state_dicts_load(tmp_path: Path, lite0_weights: Path) -> None:
    branch = RGBBranch(EFFICIENTNET_LITE0_BACKBONE, EFFICIENTNET_LITE0_LAYERS, pre_trained=str(lite0_weights))
    state = torch.load(lite0_weights, weights_only=True)
    loaded = branch.extractor.feature_extractor.state_dict()
    torch.testing.assert_close(loaded["blocks.2.0.conv_pw.weight"], state["blocks.2.0.conv_pw.weight"])
    # A features_only state_dict (saved from the feature model) loads too.
    features_only = tmp_path / "features_only.pth"
    torch.save(branch.extractor.feature_extractor.state_dict(), features_only)
    again = RGBBranch(EFFICIENTNET_LITE0_BACKBONE, EFFICIENTNET_LITE0_LAYERS, pre_trained=str(features_only))
    image = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(again(image), branch(image))
    random = RGBBranch(EFFICIENTNET_LITE0_BACKBONE, EFFICIENTNET_LITE0_LAYERS, pre_trained=False)
    assert not torch.allclose(random(image), branch(image))


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pre_trained=.*no such weights file"):
        RGBBranch("resnet18", ("layer2",), pre_trained=str(tmp_path / "nope.pth"))


def test_mismatched_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not match backbone 'resnet18'"):
        RGBBranch("resnet18", ("layer2", "layer3"), pre_trained=str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not read the weights file"):
        RGBBranch("resnet18", ("layer2",), pre_trained=str(garbage))


def test_unknown_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"layers: \['layer9'\] not found"):
        RGBBranch("resnet18", ("layer2", "layer9"), pre_trained=False)


def test_xyz_branch_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fpfh_backend"):
        XYZBranch(fpfh_backend="pcl")
    with pytest.raises(ValueError, match="voxel_size"):
        XYZBranch(voxel_size=0.0)
    with pytest.raises(ValueError, match=r"\['windows'\].*valid options"):
        XYZBranch(fpfh_backend="torch", fpfh_options={"windows": 9})
    with pytest.raises(ValueError, match=r"`window`.*odd"):
        XYZBranch(fpfh_backend="torch", fpfh_options={"window": 12})
    with pytest.raises(ValueError, match="`max_nn` must be an integer"):
        XYZBranch(fpfh_backend="torch", fpfh_options={"max_nn": 99.5})
    with pytest.raises(ValueError, match="normal_orientation"):
        XYZBranch(fpfh_backend="torch", fpfh_options={"normal_orientation": "up"})
    with pytest.raises(ValueError, match="fpfh_backend='torch' only"):
        XYZBranch(fpfh_backend="open3d", fpfh_options={"window": 9})


def test_torch_options_are_the_keyword_options_of_fpfh_torch() -> None:
    # `fpfh_options` accepts exactly what `fpfh_torch` takes (besides the cloud, the voxel size and the pooling,
    # which XYZBranch sets from the grid).
    parameters = set(inspect.signature(fpfh_torch).parameters) - {"xyz", "voxel_size", "pooling"}
    assert set(TORCH_OPTIONS) == parameters


def test_xyz_branch_passes_its_options_to_the_torch_fpfh() -> None:
    options = {"search": "window", "window": 5, "normal_window": 3, "selection": "exact"}
    branch = XYZBranch(fpfh_backend="torch", fpfh_options=options)
    xyz = make_cloud(56, seed=2)[None]
    expected = branch.pool(compute_fpfh(xyz, backend="torch", **options), (28, 28))
    default = XYZBranch(fpfh_backend="torch")(xyz, (56, 56), (28, 28))
    out = branch(xyz, (56, 56), (28, 28))
    # The branch pools with the separable matrices (XYZBranch.pooling): equal up to the order of the float sums.
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-4)
    assert not torch.allclose(out, default)  # the options change the features


def test_btf_patch_pooling_has_no_padding_then_adaptive_pooling() -> None:
    branch = RGBBranch("resnet18", ("layer2", "layer3"), pre_trained=False, patch_padding=False)
    image = torch.randn(1, 3, 224, 224)
    feats = branch.extractor(image)
    expected = torch.cat(
        [F.adaptive_avg_pool2d(F.avg_pool2d(feats[layer], 3, 1, 0), (28, 28)) for layer in ("layer2", "layer3")], 1
    )
    torch.testing.assert_close(branch(image), expected)


def test_bilinear_feature_upsampling_is_patchcores_embedding() -> None:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    branch = RGBBranch("resnet18", ("layer2", "layer3"), pre_trained=False, feature_upsampling="bilinear")
    patchcore = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False).eval()
    patchcore.feature_extractor.load_state_dict(branch.extractor.state_dict())
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = patchcore.feature_extractor(image)
        expected = patchcore.generate_embedding({k: patchcore.feature_pooler(v) for k, v in features.items()})
    torch.testing.assert_close(branch(image), expected, rtol=0, atol=0)
    # The default replicates each layer3 value into a 2 × 2 block instead (BTF's adaptive average pooling).
    default = RGBBranch("resnet18", ("layer2", "layer3"), pre_trained=False)
    default.load_state_dict(branch.state_dict())
    layer3 = default(image)[:, 128:]
    torch.testing.assert_close(layer3[..., ::2, ::2], layer3[..., 1::2, 1::2], rtol=0, atol=0)
    assert not torch.allclose(layer3, expected[:, 128:], atol=1e-3)
    torch.testing.assert_close(default(image)[:, :128], expected[:, :128], rtol=0, atol=0)  # layer2 is untouched


def test_patch_mean_counts_the_zero_padding_at_the_borders_like_patchcore() -> None:
    # BTM's 3 × 3 mean is a 1/9 mean convolution with zero padding (the paper's "mean convolution kernel ... padding
    # = 1"), i.e. AvgPool2d(3, 1, 1) with count_include_pad=True — PatchCore's feature_pooler, value for value.
    branch = RGBBranch("resnet18", ("layer2",), pre_trained=False)
    ones = torch.ones(1, 1, 5, 5)
    pooled = branch.pooler(ones)[0, 0]
    assert pooled[0, 0] == pytest.approx(4 / 9)
    assert pooled[0, 2] == pytest.approx(6 / 9)
    assert pooled[2, 2] == pytest.approx(1.0)
    torch.testing.assert_close(pooled, torch.nn.AvgPool2d(3, 1, 1)(ones)[0, 0], rtol=0, atol=0)


def test_unknown_feature_upsampling_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"feature_upsampling must be one of \('adaptive_avg_pool', 'bilinear'\)"):
        RGBBranch("resnet18", ("layer2", "layer3"), pre_trained=False, feature_upsampling="nearest")


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize(("size", "grid"), [((224, 224), (28, 28)), ((72, 88), (9, 11)), ((100, 90), (13, 11)),
                                            ((16, 16), (32, 32))])  # fmt: skip
def test_patch_pooling_is_the_branchs_pool_as_matrices(
    size: tuple[int, int], grid: tuple[int, int], padding: bool
) -> None:
    # Integer and adaptive (overlapping bins) down-scaling, up-scaling, with and without the 3 × 3 mean's padding.
    branch = XYZBranch(patch_padding=padding)
    maps = torch.rand(2, 33, *size, dtype=torch.float64)
    pooled = pool_separable(maps, branch.pooling(size, grid))
    torch.testing.assert_close(pooled, branch.pool(maps, grid), rtol=0, atol=1e-12)
    rows, columns = patch_pooling(size, grid, padding)
    assert rows.shape == (grid[0], size[0])
    assert columns.shape == (grid[1], size[1])
