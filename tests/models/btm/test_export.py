# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Export of the whole BTM pipeline to ONNX / OpenVINO: two inputs (image, fpfh or xyz), anomalib's outputs, parity."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from anomalib.data import MVTec3D
from anomalib.deploy import OpenVINOInferencer
from anomalib.deploy.export import CompressionType

from anomalib_btm import BTM
from anomalib_btm.deploy import BTMInferencer
from anomalib_btm.deploy.inferencer import F32_CONFIG, load_image
from anomalib_btm.features.fpfh_torch import fpfh_torch
from anomalib_btm.models.btm.export import METADATA_KEY, BTMExportModule, FPFHInput, export_input_names
from tests.conftest import small_datamodule

OUTPUTS = ["pred_score", "pred_label", "anomaly_map", "pred_mask"]


def _datamodule(root: Path) -> MVTec3D:
    datamodule = small_datamodule(root)
    datamodule.setup("test")
    return datamodule


def _as(actual: np.ndarray, expected: torch.Tensor) -> np.ndarray:
    """``actual`` in ``expected``'s layout (NumpyImageBatch stores maps channel-last: (N, H, W, 1))."""
    actual = np.asarray(actual)
    assert actual.size == expected.numel(), (actual.shape, tuple(expected.shape))
    return actual.reshape(expected.shape)


def _like(actual: np.ndarray, expected: torch.Tensor) -> np.ndarray:
    """Difference ``actual - expected`` with matching layouts."""
    return _as(actual, expected) - expected.numpy()


def _fitted_stub(
    modality: str, preset: str = "btm", fpfh_backend: str = "torch", fpfh_options: dict | None = None
) -> BTM:
    """A BTM whose bank and modality are set by hand (cheap; for the checks that run before any tracing)."""
    model = BTM(
        backbone="resnet18",
        pre_trained=False,
        modality=modality,
        fpfh_backend=fpfh_backend,
        fpfh_options=fpfh_options,
        preset=preset,
    )
    dim = {"rgb": 384, "xyz": 33, "rgb+xyz": 417}[modality]
    model.model.memory_bank = torch.rand(16, dim)
    return model.eval()


def _export_module(btm: BTM, fpfh: str = "inferencer") -> BTMExportModule:
    """The export module of a Lightning BTM: its torch model between its pre- and post-processor."""
    return BTMExportModule(btm.model, btm.pre_processor, btm.post_processor, fpfh=fpfh)


def test_export_input_names() -> None:
    assert export_input_names("rgb") == ["input"]
    assert export_input_names("rgb+xyz") == ["image", "fpfh"]
    assert export_input_names("xyz") == ["image", "fpfh"]
    assert export_input_names("rgb", fpfh="graph") == ["input"]
    assert export_input_names("rgb+xyz", fpfh="graph") == ["image", "xyz"]
    with pytest.raises(ValueError, match="`fpfh` must be one of"):
        export_input_names("rgb+xyz", fpfh="numba")


def test_unfitted_and_btf_models_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Only a fitted BTM"):
        BTM(backbone="resnet18", pre_trained=False, modality="xyz").to_onnx(tmp_path)
    with pytest.raises(ValueError, match="preset='btf'"):
        _export_module(_fitted_stub("xyz", preset="btf"))
    assert not list(tmp_path.rglob("*.onnx"))


def test_open3d_models_graph_export_with_open3d_normal_signs_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        module = _export_module(_fitted_stub("xyz", fpfh_backend="open3d"), fpfh="graph")
    assert module.fpfh is not None
    assert module.fpfh.normal_orientation == "open3d"
    assert "fpfh_backend='open3d'" in caplog.text
    # A torch-backend model exports the torch FPFH's own default orientation.
    default = inspect.signature(fpfh_torch).parameters["normal_orientation"].default
    graph = _export_module(_fitted_stub("xyz"), fpfh="graph").fpfh
    assert graph is not None
    assert graph.normal_orientation == default


def test_the_graph_fpfh_uses_the_models_torch_options() -> None:
    options = {"window": 9, "normal_orientation": "open3d", "selection": "exact", "cpu_kernel": False}
    fpfh = _export_module(_fitted_stub("xyz", fpfh_options=options), fpfh="graph").fpfh
    assert fpfh is not None
    assert (fpfh.window, fpfh.normal_orientation, fpfh.selection) == (9, "open3d", "exact")
    assert fpfh.normal_window == 7  # unset options keep their defaults


def test_inferencer_export_describes_the_models_own_fpfh(caplog: pytest.LogCaptureFixture) -> None:
    options = {"max_nn": 60, "normal_orientation": "camera"}
    model = _fitted_stub("rgb+xyz", fpfh_options=options)
    model.pre_processor = BTM.configure_pre_processor((48, 40))
    with caplog.at_level("WARNING"):
        module = _export_module(model)
    assert module.fpfh is None  # no FPFH in the graph, and no warning about an approximation
    assert not caplog.text
    # A fixed working size: the inferencer pools to the RGB branch's grid (48 × 40 / 8), with the model's padding.
    assert module.fpfh_input == FPFHInput("torch", 0.05, options, (48, 40), grid=(6, 5), patch_padding=True)
    assert FPFHInput.from_json(module.fpfh_input.to_json()) == module.fpfh_input
    # IRs exported before the pooled input (metadata version 1) still describe their full-map input.
    record = json.loads(module.fpfh_input.to_json())
    record = {key: value for key, value in record.items() if key not in {"grid", "patch_padding"}} | {"version": 1}
    assert FPFHInput.from_json(json.dumps(record)) == FPFHInput("torch", 0.05, options, (48, 40))
    open3d = _export_module(_fitted_stub("xyz", fpfh_backend="open3d")).fpfh_input
    assert open3d is not None
    assert open3d.backend == "open3d"  # the inferencer computes Open3D's FPFH, as the model does
    no_resize = _fitted_stub("rgb+xyz")
    no_resize.pre_processor = None
    assert _export_module(no_resize).fpfh_input.working_size is None  # type: ignore[union-attr]


def test_fpfh_metadata_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"model\.xml.*not valid JSON"):
        FPFHInput.from_json("{", "model.xml")
    with pytest.raises(ValueError, match=r"model\.xml.*version 7.*export the model again"):
        FPFHInput.from_json('{"version": 7}', "model.xml")
    text = FPFHInput("torch", 0.05, {"window": 4}, None).to_json()
    with pytest.raises(ValueError, match="window"):
        FPFHInput.from_json(text)


def test_an_aspect_keeping_resize_is_refused_for_the_inferencer_export() -> None:
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    model = _fitted_stub("rgb+xyz")
    model.pre_processor = PreProcessor(transform=Resize(32))  # shorter side to 32: the size depends on the input
    module = _export_module(model, fpfh="graph")  # the graph resizes the cloud to whatever comes out
    assert module.fpfh is not None
    with pytest.raises(ValueError, match=r"depends on the input size.*fpfh='graph'"):
        _export_module(model)


def test_compression_checks_run_before_anything_is_written(tmp_path: Path) -> None:
    model = _fitted_stub("rgb+xyz")
    with pytest.raises(ValueError, match=r"int8_acq.*xyz"):
        model.to_openvino(tmp_path, compression_type=CompressionType.INT8_ACQ, datamodule=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass the datamodule"):
        model.to_openvino(tmp_path, compression_type=CompressionType.INT8_PTQ)
    with pytest.raises(ValueError, match="dynamo=False"):
        model.to_onnx(tmp_path, dynamo=False)
    assert not list(tmp_path.rglob("*.*"))


def test_eager_export_module_equals_the_lightning_forward() -> None:
    torch.manual_seed(0)
    model = _fitted_stub("rgb")
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(image)
        actual = _export_module(model).eval()(image)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)


def test_eager_inferencer_export_with_its_fpfh_input_equals_the_knn_model() -> None:
    torch.manual_seed(0)
    model = _fitted_stub("rgb+xyz")
    model.pre_processor = BTM.configure_pre_processor((40, 40))
    image = torch.rand(2, 3, 56, 48)
    v, u = torch.meshgrid(torch.linspace(-0.03, 0.03, 30), torch.linspace(-0.03, 0.03, 36), indexing="ij")
    xyz = torch.stack([u, v, 0.5 + 0.1 * u + 0.02 * torch.sin(60 * v)])[None].repeat(2, 1, 1, 1)
    xyz[1, :, :5] = 0  # missing points
    module = _export_module(model).eval()
    assert module.fpfh_input is not None
    fpfh = module.fpfh_input(xyz, (56, 48))
    assert fpfh.shape == (2, 33, 5, 5)  # pooled to the patch grid of the 40 × 40 working size
    with torch.no_grad():
        expected = model(image, xyz)
        actual = module(image, fpfh)
    # The same k-NN FPFH as the model computes: equal, not approximately equal.
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass the FPFH input `fpfh`"):
        module(image)


@pytest.mark.slow
def test_openvino_ir_matches_the_torch_model_on_the_test_set(exported_rgbxyz: dict) -> None:
    # The fixture's model uses the default k-NN FPFH; its IR (exported by `anomalib export`, fpfh="inferencer") takes
    # the FPFH patch features, which BTMInferencer computes with the model's own kernels: the IR reproduces the model.
    model = BTM.load_from_checkpoint(exported_rgbxyz["checkpoint"]).eval()
    assert model.model.xyz_branch.fpfh_options.get("search", "knn") == "knn"
    inferencer = BTMInferencer(exported_rgbxyz["xml"])
    assert inferencer.input_names == ["image", "fpfh"]
    assert inferencer.fpfh_input == FPFHInput("torch", 0.05, {}, (96, 96), grid=(12, 12))  # pooled input
    assert sorted(next(iter(o.names)) for o in inferencer.model.outputs) == sorted(OUTPUTS)
    score_error, map_error, samples, anomalous = 0.0, 0.0, 0, 0
    for batch in _datamodule(exported_rgbxyz["root"]).test_dataloader():
        with torch.no_grad():
            expected = model(batch.image, batch.depth_map)
        result = inferencer.predict(batch.image, batch.depth_map)
        score_error = max(score_error, float(np.abs(_like(result.pred_score, expected.pred_score)).max()))
        map_error = max(map_error, float(np.abs(_like(result.anomaly_map, expected.anomaly_map)).max()))
        labels = _as(result.pred_label, expected.pred_label)
        assert (labels == expected.pred_label.numpy()).all(), (result.pred_score, expected.pred_score)
        # Masks may differ only at pixels whose normalised map lies within float rounding of the threshold (0.5).
        differ = _as(result.pred_mask, expected.pred_mask) != expected.pred_mask.numpy()
        assert (np.abs(expected.anomaly_map.numpy()[differ] - 0.5) <= 1e-3).all()
        samples += len(batch.image)
        anomalous += int(expected.pred_label.sum())
        # A single sample runs (dynamic batch) and matches the PyTorch model on the same single sample. (Against
        # the batch-of-4 result it differs by up to ~2e-4: convolution blocking changes with the batch size.)
        single = inferencer.predict(batch.image[:1], batch.depth_map[:1])
        with torch.no_grad():
            expected_single = model(batch.image[:1], batch.depth_map[:1])
        single_error = abs(float(single.pred_score[0]) - float(expected_single.pred_score[0]))
        score_error = max(score_error, single_error)
        # Throughput mode returns the same predictions, in order.
        many = list(inferencer.predict_many(zip(batch.image, batch.depth_map, strict=True)))
        np.testing.assert_allclose([float(m.pred_score[0]) for m in many], _as(result.pred_score, expected.pred_score),
                                   rtol=0, atol=1e-5)  # fmt: skip
    assert samples >= 6
    assert 0 < anomalous < samples  # both labels are compared
    assert score_error <= 1e-4, score_error
    assert map_error <= 1e-3, map_error


@pytest.fixture(scope="module")
def graph_export(exported_rgbxyz: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's checkpoint exported with the FPFH inside the graph, through ``anomalib export --onnx_kwargs``."""
    import os
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("graph_export")
    anomalib = Path(sys.executable).parent / "anomalib"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    command = [str(anomalib), "export", "--model", "BTM", "--export_type", "openvino"]
    command += ["--ckpt_path", str(exported_rgbxyz["checkpoint"]), "--onnx_kwargs", '{"fpfh": "graph"}']
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"anomalib export failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return next(work.rglob("weights/openvino/model.xml"))


@pytest.mark.slow
def test_graph_fpfh_ir_matches_the_window_model(exported_rgbxyz: dict, graph_export: Path) -> None:
    # fpfh="graph" computes FPFH over pixel windows inside the IR. With the same window search in PyTorch the IR
    # reproduces the model exactly; the k-NN model's own scores are checked against it with the tolerance that the
    # difference between the two neighbourhoods needs.
    knn_model = BTM.load_from_checkpoint(exported_rgbxyz["checkpoint"]).eval()
    model = BTM.load_from_checkpoint(exported_rgbxyz["checkpoint"]).eval()
    branch = model.model.xyz_branch
    branch.fpfh_options = {**branch.fpfh_options, "search": "window"}
    inferencer = BTMInferencer(graph_export)
    assert inferencer.input_names == ["image", "xyz"]
    assert inferencer.fpfh_input is None
    score_error, knn_error = 0.0, 0.0
    for batch in _datamodule(exported_rgbxyz["root"]).test_dataloader():
        with torch.no_grad():
            expected, knn = model(batch.image, batch.depth_map), knn_model(batch.image, batch.depth_map)
        result = inferencer.predict(batch.image, batch.depth_map)
        score_error = max(score_error, float(np.abs(_like(result.pred_score, expected.pred_score)).max()))
        knn_error = max(knn_error, float(np.abs(_like(result.pred_score, knn.pred_score)).max()))
    assert score_error <= 1e-4, score_error
    # The window descriptors move normalised scores by up to ~0.45 on this small generated set (96², random-init CNN).
    assert 1e-3 < knn_error <= 0.6, knn_error


@pytest.mark.slow
def test_int8_ptq_calibrates_with_image_and_xyz(exported_rgbxyz: dict, tmp_path: Path) -> None:
    model = BTM.load_from_checkpoint(exported_rgbxyz["checkpoint"]).eval()
    datamodule = small_datamodule(exported_rgbxyz["root"])
    xml = model.to_openvino(tmp_path, compression_type=CompressionType.INT8_PTQ, datamodule=datamodule)
    import openvino as ov

    ir = ov.Core().read_model(xml)
    quantizers = [op for op in ir.get_ops() if op.get_type_name() == "FakeQuantize"]
    fed = {target.get_node().get_type_name() for op in quantizers for target in op.output(0).get_target_inputs()}
    assert "Convolution" in fed  # calibrated and quantized (NNCF needs every input to collect statistics)
    assert "MatMul" not in fed  # the distances to the memory bank stay float32
    assert ir.has_rt_info(["framework", METADATA_KEY])  # the quantized IR still says which FPFH to feed
    batch = next(iter(_datamodule(exported_rgbxyz["root"]).test_dataloader()))
    inferencer = BTMInferencer(xml)
    assert inferencer.input_names == ["image", "fpfh"]
    result = inferencer.predict(batch.image, batch.depth_map)
    assert np.isfinite(result.pred_score).all()
    assert np.isfinite(result.anomaly_map).all()


@pytest.mark.slow
def test_rgb_only_ir_runs_in_anomalibs_stock_inferencer(
    small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib.engine import Engine

    monkeypatch.chdir(tmp_path)  # anomalib's OpenVINOInferencer writes its model cache to ./openvino_cache

    torch.manual_seed(0)
    datamodule = small_datamodule(small_root)
    model = BTM(
        backbone="resnet18", pre_trained=False, modality="rgb", pre_processor=BTM.configure_pre_processor((96, 96))
    )
    Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False).fit(model=model, datamodule=datamodule)
    xml = model.eval().to_openvino(tmp_path)
    inferencer = OpenVINOInferencer(xml, device="CPU", config=F32_CONFIG)  # AUTO ignores the precision hint
    image_path = next((small_root / "small" / "test" / "color" / "rgb").glob("*.png"))
    result = inferencer.predict(image_path)
    with torch.no_grad():
        expected = model(torch.from_numpy(load_image(image_path)))
    # Float32 CNN arithmetic of OpenVINO vs PyTorch (random-init weights) moves normalised scores by ~1e-4.
    assert abs(float(result.pred_score[0]) - float(expected.pred_score[0])) <= 1e-3
    assert float(np.abs(_like(result.anomaly_map, expected.anomaly_map)).max()) <= 1e-3
    assert bool(result.pred_label[0]) == bool(expected.pred_label[0])


@pytest.fixture(scope="module")
def bilinear_rgb(small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An RGB-only BTM with PatchCore's bilinear upsampling, fitted through the Engine and exported from its checkpoint.

    The export starts from a default-built BTM and the checkpoint (what ``anomalib export --ckpt_path`` does): the
    option can only reach the IR through the checkpoint's hyperparameters.
    """
    from anomalib.deploy.export import ExportType
    from anomalib.engine import Engine

    torch.manual_seed(0)
    np.random.seed(0)  # the coreset's first pick comes from NumPy's global generator, as in anomalib
    work = tmp_path_factory.mktemp("bilinear")
    datamodule = small_datamodule(small_root)
    model = BTM(
        backbone="resnet18",
        pre_trained=False,
        modality="rgb",
        feature_upsampling="bilinear",
        pre_processor=BTM.configure_pre_processor((96, 96)),
    )
    engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    checkpoint = work / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    default = BTM(backbone="resnet18", pre_trained=False, modality="rgb")
    xml = engine.export(default, ExportType.OPENVINO, export_root=work, ckpt_path=checkpoint)
    return {"model": model.eval(), "checkpoint": checkpoint, "xml": xml, "root": small_root}


@pytest.mark.slow
def test_bilinear_option_survives_the_checkpoint(bilinear_rgb: dict) -> None:
    loaded = BTM.load_from_checkpoint(bilinear_rgb["checkpoint"]).eval()
    assert loaded.hparams["feature_upsampling"] == "bilinear"
    assert loaded.model.rgb_branch is not None
    assert loaded.model.rgb_branch.feature_upsampling == "bilinear"
    batch = next(iter(_datamodule(bilinear_rgb["root"]).test_dataloader()))
    with torch.no_grad():
        before, after = bilinear_rgb["model"](batch.image), loaded(batch.image)
    torch.testing.assert_close(after.pred_score, before.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map, rtol=0, atol=0)


@pytest.mark.slow
def test_bilinear_ir_matches_the_torch_model_in_btm_inferencer(bilinear_rgb: dict) -> None:
    model = BTM.load_from_checkpoint(bilinear_rgb["checkpoint"]).eval()
    # The same weights and memory bank with BTF's pooling: what an IR that ignored the option would compute.
    pooled = BTM.load_from_checkpoint(bilinear_rgb["checkpoint"], feature_upsampling="adaptive_avg_pool").eval()
    inferencer = BTMInferencer(bilinear_rgb["xml"])
    assert inferencer.input_names == ["input"]
    score_error, map_error, option_effect = 0.0, 0.0, 0.0
    for batch in _datamodule(bilinear_rgb["root"]).test_dataloader():
        with torch.no_grad():
            expected, other = model(batch.image), pooled(batch.image)
        result = inferencer.predict(batch.image)
        score_error = max(score_error, float(np.abs(_like(result.pred_score, expected.pred_score)).max()))
        map_error = max(map_error, float(np.abs(_like(result.anomaly_map, expected.anomaly_map)).max()))
        option_effect = max(option_effect, float(np.abs(_like(result.pred_score, other.pred_score)).max()))
        assert (_as(result.pred_label, expected.pred_label) == expected.pred_label.numpy()).all()
    # As for the RGB-only IR above: float32 CNN arithmetic of OpenVINO vs PyTorch moves normalised scores by ~1e-4.
    assert score_error <= 1e-3, score_error
    assert map_error <= 1e-3, map_error
    assert option_effect > 2e-2, option_effect  # an IR that ignored the option would fail the tolerances


def test_exported_bilinear_resize_is_torchs_exactly(tmp_path: Path) -> None:
    import openvino as ov

    from anomalib_btm.models.btm.feature_branches import to_patch_grid

    class _ToGrid(torch.nn.Module):
        def forward(self, layer2: torch.Tensor, layer3: torch.Tensor) -> torch.Tensor:
            return to_patch_grid(layer3, layer2.shape[-2:], "bilinear")

    dims = {2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}
    path = tmp_path / "resize.onnx"
    example = (torch.rand(1, 1, 28, 28), torch.rand(1, 4, 14, 14))
    torch.onnx.export(_ToGrid(), example, str(path), dynamo=True, dynamic_shapes=(dims, {}), verbose=False)
    compiled = ov.Core().compile_model(str(path), "CPU", F32_CONFIG)
    layer3 = torch.randn(1, 4, 14, 14)
    for grid in ((28, 28), (20, 36)):
        layer2 = torch.zeros(1, 1, *grid)
        actual = next(iter(compiled([layer2.numpy(), layer3.numpy()]).values()))
        expected = F.interpolate(layer3, size=grid, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=1e-5)  # float32 rounding of coordinates
        corners = F.interpolate(layer3, size=grid, mode="bilinear", align_corners=True)
        assert np.abs(actual - corners.numpy()).max() > 0.1  # the other pixel-centre convention is far off
