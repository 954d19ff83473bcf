# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""OpenVINO inferencer for exported BTM models, RGB + 3D (inputs ``image`` and ``xyz``) or RGB only.

anomalib's ``OpenVINOInferencer`` feeds a single input; an RGB + 3D BTM IR has two. :class:`BTMInferencer` feeds both
and returns the same :class:`~anomalib.data.NumpyImageBatch` fields (``pred_score``, ``pred_label``, ``anomaly_map``,
``pred_mask``). It compiles in float32 (``INFERENCE_PRECISION_HINT=f32``): on CPUs with bfloat16 support (AVX512-BF16,
AMX) OpenVINO otherwise computes in bfloat16, whose 8-bit mantissa cannot resolve millimetre point spacings at
half a metre, and the FPFH part of the graph returns different descriptors.

Example:
    >>> from anomalib_btm.deploy import BTMInferencer
    >>> inferencer = BTMInferencer("results/weights/openvino/model.xml")  # doctest: +SKIP
    >>> result = inferencer.predict(image="test/crack/rgb/000.png", xyz="test/crack/xyz/000.tiff")  # doctest: +SKIP
    >>> result.pred_score, result.pred_label  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data import NumpyImageBatch
from PIL import Image

from anomalib_btm.data.depth import check_metric_units, read_xyz
from anomalib_btm.models.btm.export import FPFHInput, read_fpfh_input

__all__ = ["F32_CONFIG", "INPUT_NAMES", "MAX_SHAPES", "THROUGHPUT_CONFIG", "BTMInferencer", "load_image", "load_xyz"]

MAX_SHAPES = 4
"""Input-shape combinations :class:`BTMInferencer` keeps compiled with ``static_shapes=True``."""

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO compile options of :class:`BTMInferencer` (FPFH needs float32, see the module docstring)."""

THROUGHPUT_CONFIG = {**F32_CONFIG, "PERFORMANCE_HINT": "THROUGHPUT"}
"""OpenVINO compile options of :meth:`BTMInferencer.predict_many` (several streams, one request per stream)."""

INPUT_NAMES = (["input"], ["image", "fpfh"], ["image", "xyz"])
"""Inputs of a BTM export: RGB only, RGB + 3D with the FPFH from the inferencer, RGB + 3D with the FPFH in the graph."""

ImageInput = str | Path | np.ndarray | torch.Tensor | Image.Image
XYZInput = str | Path | np.ndarray | torch.Tensor


def _batched_chw(array: np.ndarray, name: str, source: str) -> np.ndarray:
    """``(H, W, 3)``, ``(3, H, W)``, ``(N, H, W, 3)`` or ``(N, 3, H, W)`` → float32 ``(N, 3, H, W)``."""
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or 3 not in (array.shape[1], array.shape[-1]):
        msg = f"`{name}` ({source}) must be (H, W, 3), (3, H, W) or batched, got shape {array.shape}."
        raise ValueError(msg)
    if array.shape[1] != 3:
        array = array.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(array, dtype=np.float32)


def load_image(image: ImageInput) -> np.ndarray:
    """An RGB image (file, PIL image, array or tensor) as float32 ``(N, 3, H, W)`` in ``[0, 1]``.

    Args:
        image (ImageInput): Path of an image file, a PIL image, or an array/tensor ``(H, W, 3)``, ``(3, H, W)`` or
            batched; integer arrays (``uint8``) and float arrays with values above 1 are divided by 255.

    Returns:
        np.ndarray: ``(N, 3, H, W)`` float32 image batch.

    Raises:
        FileNotFoundError: If a path does not exist.
        ValueError: If the file cannot be read or the array has the wrong shape.
    """
    source = "array"
    if isinstance(image, str | Path):
        source = str(image)
        if not Path(image).is_file():
            msg = f"Image {image} does not exist."
            raise FileNotFoundError(msg)
        try:
            with Image.open(image) as handle:
                image = handle.convert("RGB")
        except OSError as error:
            msg = f"Image {source} could not be read ({error})."
            raise ValueError(msg) from error
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    scale = array.dtype.kind in "ui" or (array.size > 0 and float(array.max()) > 1.0)
    array = _batched_chw(array.astype(np.float32), "image", source)
    return array / 255.0 if scale else array


def load_xyz(xyz: str | Path | np.ndarray | torch.Tensor) -> np.ndarray:
    """An organized cloud (TIFF file, array or tensor, metres) as checked float32 ``(N, 3, H, W)``.

    Args:
        xyz (str | Path | np.ndarray | torch.Tensor): Path of an XYZ TIFF (MVTec 3D-AD layout) or an array/tensor
            ``(H, W, 3)``, ``(3, H, W)`` or batched, missing points ``(0, 0, 0)``.

    Returns:
        np.ndarray: ``(N, 3, H, W)`` float32 clouds.

    Raises:
        FileNotFoundError: If a path does not exist.
        ValueError: If the cloud is malformed (NaN, wrong shape, no valid point) or not in metres.
    """
    if isinstance(xyz, str | Path):
        return _batched_chw(read_xyz(xyz), "xyz", str(xyz))
    if isinstance(xyz, torch.Tensor):
        xyz = xyz.detach().cpu().numpy()
    array = _batched_chw(np.asarray(xyz, dtype=np.float32), "xyz", "array")
    for cloud in array:
        check_metric_units(cloud.transpose(1, 2, 0), None)
    return array


OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
"""anomalib's output names, which a BTM export carries."""


def _output_name(port: Any) -> str:
    """Anomalib's name of an output port (a port may carry several tensor names after OpenVINO's reshape)."""
    names = port.get_names()
    return next((name for name in OUTPUT_NAMES if name in names), port.any_name)


class BTMInferencer:
    """Run an exported BTM (OpenVINO IR ``.xml`` or ``.onnx``) on RGB images and organized point clouds.

    The exported graph has dynamic batch and sizes. By default each new combination of input shapes is compiled
    once with those shapes fixed (OpenVINO plans memory and fuses better with static shapes; ``benchmarks/export.py``
    measures the difference); ``static_shapes=False`` runs the dynamic graph.

    Args:
        path (str | Path): ``model.xml`` (with its ``.bin``) or ``model.onnx`` from ``anomalib export``.
        device (str): OpenVINO device (``"CPU"``, ``"GPU"``, ``"AUTO"``...).
        config (dict[str, Any] | None): Extra OpenVINO compile options, applied over :data:`F32_CONFIG` (and over
            :data:`THROUGHPUT_CONFIG` in :meth:`predict_many`).
        static_shapes (bool): Compile per input shape (kept for the last :data:`MAX_SHAPES` shapes).

    Raises:
        FileNotFoundError: If the model file does not exist.
        ValueError: If the file is not an IR/ONNX model or not a BTM export.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        config: dict[str, Any] | None = None,
        static_shapes: bool = True,
    ) -> None:
        import openvino as ov

        path = Path(path)
        if not path.is_file():
            msg = f"Model {path} does not exist; export one with `anomalib export --model BTM --export_type openvino`."
            raise FileNotFoundError(msg)
        if path.suffix not in {".xml", ".onnx"}:
            msg = f"Model {path} must be an OpenVINO IR (.xml) or ONNX (.onnx) file."
            raise ValueError(msg)
        core = ov.Core()
        model = core.read_model(path)
        self.input_names = [model_input.any_name for model_input in model.inputs]
        if self.input_names not in INPUT_NAMES:
            msg = (
                f"Model {path} has inputs {self.input_names}, not those of a BTM export "
                f"({' or '.join(str(names) for names in INPUT_NAMES)})."
            )
            raise ValueError(msg)
        self.fpfh_input: FPFHInput | None = read_fpfh_input(model, str(path))
        if "fpfh" in self.input_names and self.fpfh_input is None:
            msg = (
                f"Model {path} takes an `fpfh` input but carries no description of it (metadata entry missing): "
                "export it again with `anomalib export --model BTM` of this version of anomalib_btm."
            )
            raise ValueError(msg)
        self.device = device
        self.path = path
        self.static_shapes = static_shapes
        self._core = core
        self._user_config = dict(config or {})
        self._config = {**F32_CONFIG, **self._user_config}
        self.model = core.compile_model(model, device, self._config)
        self._static: dict[tuple, Any] = {}
        self._throughput: dict[tuple | None, Any] = {}

    def _compile(self, key: tuple | None, config: dict[str, Any]) -> Any:
        """The model compiled with ``config``, its input shapes fixed to ``key`` (or dynamic for ``None``)."""
        model = self._core.read_model(self.path)
        if key is not None:
            model.reshape({name: list(shape) for name, shape in key})
        return self._core.compile_model(model, self.device, config)

    def _compiled_for(self, feed: dict[str, np.ndarray]) -> Any:
        """The compiled model for these input shapes: the dynamic one, or one compiled with the shapes fixed."""
        if not self.static_shapes:
            return self.model
        key = tuple((name, array.shape) for name, array in feed.items())
        if key not in self._static:
            if len(self._static) >= MAX_SHAPES:
                self._static.pop(next(iter(self._static)))
            self._static[key] = self._compile(key, self._config)
        return self._static[key]

    @property
    def uses_xyz(self) -> bool:
        """Whether the model takes a point cloud (RGB + 3D or 3D-only export)."""
        return len(self.input_names) == 2

    def feed(self, image: ImageInput, xyz: XYZInput | None = None) -> dict[str, np.ndarray]:
        """The IR's inputs for a sample or batch: the images, and the clouds or their FPFH (patch features or maps).

        Args:
            image (ImageInput): RGB image(s) (see :func:`load_image`).
            xyz (XYZInput | None): Organized cloud(s) (see :func:`load_xyz`); required by RGB + 3D models.

        Returns:
            dict[str, np.ndarray]: Arrays by input name.

        Raises:
            ValueError: If ``xyz`` is missing for an RGB + 3D model, or images and clouds differ in number.
        """
        images = load_image(image)
        if not self.uses_xyz:
            return {self.input_names[0]: images}
        if xyz is None:
            msg = "This BTM model uses point clouds: pass `xyz` (an XYZ TIFF path or an (H, W, 3) array in metres)."
            raise ValueError(msg)
        clouds = load_xyz(xyz)
        if clouds.shape[0] != images.shape[0]:
            msg = f"Got {images.shape[0]} image(s) but {clouds.shape[0]} cloud(s); pass one cloud per image."
            raise ValueError(msg)
        if self.fpfh_input is None:
            return {"image": images, "xyz": clouds}
        fpfh = self.fpfh_input(torch.from_numpy(clouds), (int(images.shape[-2]), int(images.shape[-1])))
        return {"image": images, "fpfh": np.ascontiguousarray(fpfh.numpy())}

    def predict(self, image: ImageInput, xyz: XYZInput | None = None) -> NumpyImageBatch:
        """Score one sample or a batch.

        Args:
            image (ImageInput): RGB image(s): a file path, PIL image, or array/tensor (see :func:`load_image`).
            xyz (XYZInput | None): Organized cloud(s) in metres: an XYZ TIFF path or an array/tensor (see
                :func:`load_xyz`); required by RGB + 3D models.

        Returns:
            NumpyImageBatch: ``image`` (as fed), ``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``.

        Raises:
            ValueError: If ``xyz`` is missing for an RGB + 3D model, or images and clouds differ in number.
        """
        feed = self.feed(image, xyz)
        outputs = self._compiled_for(feed)(feed)
        predictions = {_output_name(port): value for port, value in outputs.items()}
        return NumpyImageBatch(image=feed[self.input_names[0]], **predictions)

    def predict_many(
        self,
        samples: Iterable[tuple[ImageInput, XYZInput | None]],
        jobs: int = 0,
    ) -> Iterator[NumpyImageBatch]:
        """Score a stream of samples in OpenVINO's throughput mode; results come in the order of ``samples``.

        The IR is compiled with :data:`THROUGHPUT_CONFIG` (several CPU streams) and run through an
        ``AsyncInferQueue``: while requests run, the next samples are read and their FPFH computed.

        Args:
            samples (Iterable[tuple[ImageInput, XYZInput | None]]): ``(image, xyz)`` pairs, as for :meth:`predict`
                (``xyz`` ``None`` for RGB-only models).
            jobs (int): Infer requests in flight; ``0``: OpenVINO's optimal number for the device.

        Yields:
            NumpyImageBatch: The prediction of each sample, as :meth:`predict` returns it.

        Raises:
            ValueError: As :meth:`predict`, for the sample that is malformed.
        """
        import openvino as ov

        config = {**THROUGHPUT_CONFIG, **self._user_config}
        queues: dict[tuple | None, Any] = {}
        done: dict[int, dict[str, np.ndarray]] = {}
        images: dict[int, np.ndarray] = {}

        def finished(request: Any, index: int) -> None:
            done[index] = {_output_name(port): np.array(value) for port, value in request.results.items()}

        def ready(upto: int) -> Iterator[NumpyImageBatch]:
            nonlocal emitted
            while emitted < upto and emitted in done:
                yield NumpyImageBatch(image=images.pop(emitted), **done.pop(emitted))
                emitted += 1

        emitted = 0
        count = 0
        try:
            for index, (image, xyz) in enumerate(samples):
                feed = self.feed(image, xyz)
                key = tuple((name, array.shape) for name, array in feed.items()) if self.static_shapes else None
                if key not in queues:
                    if key not in self._throughput:  # compiled once per shape and kept, like the latency models
                        if len(self._throughput) >= MAX_SHAPES:
                            self._throughput.pop(next(iter(self._throughput)))
                        self._throughput[key] = self._compile(key, config)
                    queues[key] = ov.AsyncInferQueue(self._throughput[key], jobs)
                    queues[key].set_callback(finished)
                images[index] = feed[self.input_names[0]]
                queues[key].start_async(feed, userdata=index)
                count = index + 1
                yield from ready(count)
        finally:
            for queue in queues.values():
                queue.wait_all()
        yield from ready(count)
