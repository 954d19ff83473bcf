# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Visualise BTM results: anomaly-coloured point clouds (PLY) and 2-D RGB / depth / anomaly-map figures.

* :func:`save_ply` writes the valid points of an organized cloud as a binary little-endian (or ASCII) PLY whose vertex
  colours encode the anomaly score through a colormap; the score itself is stored too, as the float property
  ``scalar_anomaly`` (CloudCompare shows ``scalar_*`` properties as scalar fields; Open3D and MeshLab ignore it). With
  ``rgb``, a second PLY ``<stem>_rgb.ply`` holds the same points in their original colours (viewers show one colour
  per point, so two files are easier to use than extra properties).
* :func:`save_figure` draws RGB, depth (Z, missing points blank) and the anomaly map side by side, with the
  ground-truth outline when given, using Matplotlib's Agg canvas (no display, no global backend change).

Inputs may be NumPy arrays or torch tensors (moved to the CPU), with or without a leading batch dimension of 1.
Both functions write atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anomalib.visualization import ImageVisualizer

from anomalib_btm.files import atomic_write

__all__ = ["anomaly_colors", "display_images", "save_figure", "save_ply"]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor without importing torch
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        msg = f"{name} must be a NumPy array or a torch tensor; got {type(value).__name__}."
        raise TypeError(msg) from error
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        msg = f"{name} must hold numbers; got dtype {array.dtype}."
        raise TypeError(msg)
    return array


def _squeeze_batch(array: np.ndarray, ndim: int) -> np.ndarray:
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    return array


def _as_hwc(value: Any, name: str) -> np.ndarray:
    """``(H, W, 3)`` from ``(H, W, 3)``, ``(3, H, W)`` or either with leading 1s."""
    array = _squeeze_batch(_to_numpy(value, name), 3)
    if array.ndim == 3 and array.shape[-1] == 3:
        return array
    if array.ndim == 3 and array.shape[0] == 3:
        return np.moveaxis(array, 0, -1)
    msg = f"{name} must have shape (H, W, 3) or (3, H, W); got {tuple(array.shape)}."
    raise ValueError(msg)


def _as_map(value: Any, name: str) -> np.ndarray:
    """``(H, W)`` from ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``."""
    array = _squeeze_batch(_to_numpy(value, name), 2)
    if array.ndim != 2:
        msg = f"{name} must have shape (H, W) or (1, H, W); got {tuple(array.shape)}."
        raise ValueError(msg)
    return array


def _as_rgb(value: Any, name: str = "rgb") -> np.ndarray:
    """uint8 ``(H, W, 3)`` from uint8 or float (``[0, 1]`` or ``[0, 255]``) images, channels last or first."""
    array = _to_numpy(value, name)
    array = _squeeze_batch(array, 3)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] not in (3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        msg = f"{name} must be an (H, W, 3) or (3, H, W) image; got {tuple(np.shape(value))}."
        raise ValueError(msg)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        msg = f"{name} contains NaN/inf values."
        raise ValueError(msg)
    if values.size and values.min() < 0:
        msg = f"{name} has negative values (ImageNet-normalised?); pass the image before normalisation."
        raise ValueError(msg)
    if array.dtype != bool and np.issubdtype(array.dtype, np.floating) and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def anomaly_colors(
    scores: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
) -> np.ndarray:
    """Map scores to uint8 RGB colours through a Matplotlib colormap.

    Args:
        scores: Scores of any shape.
        vmin: Score drawn with the colormap's first colour; default: the minimum of ``scores``.
        vmax: Score drawn with the last colour; default: the maximum of ``scores``. Scores outside are clipped.
        cmap: Colormap name (``"jet"``, ``"turbo"``, ...).

    Returns:
        ``scores.shape + (3,)`` uint8 colours. A constant map (``vmax == vmin``) gets the first colour.
    """
    from matplotlib import colormaps

    values = np.asarray(scores, dtype=np.float64)
    low = float(values.min()) if vmin is None else float(vmin)
    high = float(values.max()) if vmax is None else float(vmax)
    span = high - low
    normalised = np.zeros_like(values) if span <= 0 else np.clip((values - low) / span, 0.0, 1.0)
    colors = colormaps[cmap](normalised, bytes=True)
    return np.ascontiguousarray(colors[..., :3])


def _ply_bytes(points: np.ndarray, colors: np.ndarray, scores: np.ndarray | None, binary: bool) -> bytes:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if scores is not None:
        fields.append(("scalar_anomaly", "<f4"))
    vertices = np.empty(len(points), dtype=fields)
    vertices["x"], vertices["y"], vertices["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertices["red"], vertices["green"], vertices["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    if scores is not None:
        vertices["scalar_anomaly"] = scores
    kinds = {"<f4": "float", "u1": "uchar"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment anomalib_btm"]
    header += [f"element vertex {len(points)}"]
    header += [f"property {kinds[kind]} {name}" for name, kind in fields]
    header += ["end_header"]
    head = ("\n".join(header) + "\n").encode("ascii")
    if binary:
        return head + vertices.tobytes()
    text = io.BytesIO()  # "%.9g": float32 values read back exactly
    np.savetxt(text, vertices, fmt=" ".join("%.9g" if kind == "<f4" else "%d" for _, kind in fields))
    return head + text.getvalue()


def save_ply(
    xyz: Any,
    anomaly_map: Any,
    path: str | Path,
    rgb: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    binary: bool = True,
) -> list[Path]:
    """Write the valid points of an organized cloud as a PLY coloured by anomaly score.

    Args:
        xyz: Organized cloud ``(H, W, 3)`` or ``(3, H, W)`` (NumPy or torch), missing points ``(0, 0, 0)``; a point is
            written iff none of its coordinates is 0.
        anomaly_map: ``(H, W)`` or ``(1, H, W)`` scores of the same ``H, W`` (resize the model's map to the cloud's
            size first, e.g. ``torch.nn.functional.interpolate(..., size=(H, W), mode="bilinear")``).
        path: Output ``.ply``; parent folders are created.
        rgb: Optional pixel-aligned image (uint8, or float in ``[0, 1]``/``[0, 255]``, channels last or first); the
            same points in these colours are written to ``<stem>_rgb.ply`` next to ``path``.
        vmin: Score mapped to the colormap's first colour (default: the map's minimum).
        vmax: Score mapped to the last colour (default: the map's maximum).
        cmap: Matplotlib colormap name (``"jet"`` default, ``"turbo"``, ...).
        binary: Binary little-endian PLY (default); ``False`` writes ASCII.

    Returns:
        The written files: ``[path]`` or ``[path, <stem>_rgb.ply]``.

    Raises:
        ValueError: On mismatched shapes, NaN/inf values, or a cloud without valid points.
        TypeError: On non-numeric inputs.
    """
    cloud = _as_hwc(xyz, "xyz").astype(np.float32)
    scores = _as_map(anomaly_map, "anomaly_map").astype(np.float32)
    if scores.shape != cloud.shape[:2]:
        msg = (
            f"anomaly_map has shape {scores.shape} but xyz is {cloud.shape[0]}×{cloud.shape[1]}; resize the map to the "
            "cloud's size first."
        )
        raise ValueError(msg)
    if not np.isfinite(cloud).all():
        msg = "xyz contains NaN/inf values; set missing points to exactly (0, 0, 0)."
        raise ValueError(msg)
    if not np.isfinite(scores).all():
        msg = "anomaly_map contains NaN/inf values."
        raise ValueError(msg)
    image = None
    if rgb is not None:
        image = _as_rgb(rgb)
        if image.shape[:2] != cloud.shape[:2]:
            msg = f"rgb is {image.shape[0]}×{image.shape[1]} but xyz is {cloud.shape[0]}×{cloud.shape[1]}."
            raise ValueError(msg)
    valid = np.all(cloud != 0, axis=-1)
    if not valid.any():
        msg = "xyz has no valid point (all points have a zero coordinate); nothing to write."
        raise ValueError(msg)

    points = cloud[valid]
    point_scores = scores[valid]
    low = float(scores.min()) if vmin is None else vmin
    high = float(scores.max()) if vmax is None else vmax
    colors = anomaly_colors(point_scores, low, high, cmap)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _ply_bytes(points, colors, point_scores, binary)
    written = [atomic_write(path, lambda tmp: tmp.write_bytes(data))]
    if image is not None:
        rgb_path = path.with_name(f"{path.stem}_rgb{path.suffix or '.ply'}")
        rgb_data = _ply_bytes(points, image[valid], point_scores, binary)
        written.append(atomic_write(rgb_path, lambda tmp: tmp.write_bytes(rgb_data)))
    return written


def _outline(ax: Any, mask: np.ndarray, shape: Sequence[int], color: str = "lime") -> None:
    """Draw the 0.5 contour of ``mask`` on an axis showing an image of ``shape`` (any resolution)."""
    mask_h, mask_w = mask.shape
    height, width = shape[:2]
    xs = (np.arange(mask_w) + 0.5) * (width / mask_w) - 0.5
    ys = (np.arange(mask_h) + 0.5) * (height / mask_h) - 0.5
    if mask.any() and not mask.all():
        ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=color, linewidths=1.0)


def save_figure(
    rgb: Any,
    xyz: Any,
    anomaly_map: Any,
    path: str | Path,
    gt_mask: Any = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    dpi: int = 100,
) -> Path:
    """Save a figure with the RGB image, the depth (Z) and the anomaly map side by side.

    Panels may have different resolutions (e.g. an 800 px image and a 224 px map); the ground-truth outline is drawn
    on the RGB and anomaly-map panels at their own scale. Missing points (Z = 0) are left blank in the depth panel.

    Args:
        rgb: Image ``(H, W, 3)``/``(3, H, W)``, uint8 or float in ``[0, 1]``/``[0, 255]`` (NumPy or torch).
        xyz: Organized cloud ``(H, W, 3)``/``(3, H, W)``, missing points ``(0, 0, 0)``.
        anomaly_map: ``(H, W)`` or ``(1, H, W)`` scores.
        path: Output image (format from the suffix: ``.png``, ``.pdf``, ``.svg``, ...); parent folders are created.
        gt_mask: Optional ``(H, W)``/``(1, H, W)`` ground truth; values > 0.5 (or > 0 for uint8) are anomalous.
        title: Optional figure title.
        vmin: Lower end of the anomaly colour scale (default: the map's minimum).
        vmax: Upper end (default: the map's maximum).
        cmap: Colormap of the anomaly map.
        dpi: Resolution of raster outputs.

    Returns:
        ``path``.

    Raises:
        ValueError: On malformed inputs or an unsupported file format.
        TypeError: On non-numeric inputs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = _as_rgb(rgb)
    cloud = _as_hwc(xyz, "xyz").astype(np.float32)
    scores = _as_map(anomaly_map, "anomaly_map").astype(np.float32)
    if not np.isfinite(scores).all():
        msg = "anomaly_map contains NaN/inf values."
        raise ValueError(msg)
    mask = None
    if gt_mask is not None:
        raw = _as_map(gt_mask, "gt_mask")
        mask = raw > 0 if raw.dtype == np.uint8 else raw.astype(np.float64) > 0.5
    depth = np.where(np.all(cloud != 0, axis=-1) & np.isfinite(cloud).all(-1), cloud[..., 2], np.nan)

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    figure = Figure(figsize=(12, 4.2), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    if fmt not in canvas.get_supported_filetypes():
        msg = f"Unsupported figure format {fmt!r}; use one of {', '.join(sorted(canvas.get_supported_filetypes()))}."
        raise ValueError(msg)
    axes = figure.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("RGB")
    masked = np.ma.masked_invalid(depth)
    shown = axes[1].imshow(masked, cmap="viridis")
    axes[1].set_title("depth Z (m)")
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    low = float(scores.min()) if vmin is None else vmin
    high = float(scores.max()) if vmax is None else vmax
    shown = axes[2].imshow(scores, cmap=cmap, vmin=low, vmax=high if high > low else low + 1e-12)
    axes[2].set_title("anomaly map")
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    if mask is not None:
        _outline(axes[0], mask, image.shape)
        _outline(axes[2], mask, scores.shape, color="white")
    for ax in axes:
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=dpi))
    return path


def _normalization(pl_module: Any) -> tuple[Any, Any] | None:
    """``(mean, std)`` of the first ``Normalize`` in the module's pre-processor transform, or ``None``."""
    from torchvision.transforms import v2

    transform = getattr(getattr(pl_module, "pre_processor", None), "transform", None)
    pending = [transform]
    while pending:
        current = pending.pop(0)
        if isinstance(current, v2.Normalize):
            return current.mean, current.std
        pending.extend(getattr(current, "transforms", []) or [])
    return None


def display_images(images: Any, image_paths: Sequence[Any] | None, size: Sequence[int], pl_module: Any = None) -> Any:
    """The input images in their true colours at ``size``, as ``(N, 3, h, w)`` floats in ``[0, 1]``.

    Each image is read from its file, as anomalib's visualizer does; an item without a readable file gets its
    pre-processed tensor with the pre-processor's ``Normalize`` inverted exactly (``x * std + mean``) — not a min-max
    stretch, which shifts colours.

    Args:
        images (Any): ``(N, 3, H, W)`` pre-processed batch images (torch).
        image_paths (Sequence[Any] | None): The items' image files, or ``None``.
        size (Sequence[int]): Output ``(h, w)``.
        pl_module (Any): The model, whose ``pre_processor`` tells the normalisation (ImageNet's when absent).

    Returns:
        Any: ``(N, 3, h, w)`` torch tensor in ``[0, 1]``.
    """
    import torch
    from PIL import Image
    from torch.nn import functional as F

    height, width = int(size[0]), int(size[1])
    images = images.detach().float().cpu()
    stats = _normalization(pl_module) if pl_module is not None else None
    mean, std = stats if stats is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    restored = F.interpolate((images * std_t + mean_t).clamp(0.0, 1.0), size=(height, width), mode="bilinear")
    for index, path in enumerate(image_paths or []):
        if not path or not Path(str(path)).is_file():
            continue
        with Image.open(str(path)) as picture:
            resized = picture.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        restored[index] = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return restored.clamp(0.0, 1.0)


class BTMVisualizer(ImageVisualizer):
    """anomalib's image visualizer that can also write 3D heat maps (PLY) of depth batches.

    The 2D overlays are anomalib's (the image read from ``image_path``; items without one get the pre-processed image
    with the normalisation inverted exactly). With ``save_ply=True``, each test item that carries a ``depth_map`` also
    gets ``<images dir>/ply/<same relative path>.ply``: the valid points of the cloud (brought to the anomaly map's
    size with nearest interpolation) coloured by the post-processed anomaly score on a fixed ``[0, 1]`` scale, so
    colours compare across images (0.5 is the threshold), plus ``<stem>_rgb.ply`` in the image's true colours (read
    from ``image_path``, see :func:`display_images`).

    Args:
        save_ply (bool): Write PLY heat maps. Defaults to ``False``.
        **kwargs (Any): Passed to :class:`anomalib.visualization.ImageVisualizer`.

    Example:
        >>> from anomalib_btm import BTM
        >>> model = BTM(backbone="resnet18", pre_trained=False, visualizer=BTMVisualizer(save_ply=True))
        >>> model.visualizer.save_ply
        True
    """

    def __init__(self, save_ply: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_ply = save_ply

    def on_test_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write anomalib's overlays, then the PLY heat maps of the batch.

        Args:
            trainer (Any): Lightning trainer.
            pl_module (Any): The model.
            outputs (Any): Step outputs.
            batch (Any): The batch with predictions.
            batch_idx (int): Batch index.
            dataloader_idx (int): Dataloader index.
        """
        paths = getattr(batch, "image_path", None)
        shown = batch
        if batch.image is not None and (paths is None or not all(paths)):
            restored = display_images(batch.image, paths, batch.image.shape[-2:], pl_module)
            shown = batch.update(in_place=False, image=restored)
        super().on_test_batch_end(trainer, pl_module, outputs, shown, batch_idx, dataloader_idx)
        depth = getattr(batch, "depth_map", None)
        if not self.save_ply or depth is None or batch.anomaly_map is None:
            return
        import torch
        from anomalib.utils.path import generate_output_filename
        from torch.nn import functional as F

        datamodule = getattr(trainer, "datamodule", None)
        maps = batch.anomaly_map.detach().float().cpu()
        maps = maps if maps.dim() == 4 else maps.unsqueeze(1)
        # Nearest, as the model resizes clouds: every point drawn is a measured point, none is invented.
        xyz = F.interpolate(torch.as_tensor(depth).float().cpu(), size=tuple(maps.shape[-2:]), mode="nearest")
        images = display_images(batch.image, paths, maps.shape[-2:], pl_module)
        for index in range(xyz.shape[0]):
            source = batch.image_path[index] if batch.image_path is not None else f"{batch_idx:04d}_{index:02d}.png"
            filename = generate_output_filename(
                input_path=source,
                output_path=Path(self.output_dir) / "ply",
                dataset_name=getattr(datamodule, "name", None),
                category=getattr(datamodule, "category", None),
            ).with_suffix(".ply")
            rgb = images[index]
            if not bool((xyz[index] != 0).all(dim=0).any()):
                continue
            save_ply(xyz[index], maps[index, 0], filename, rgb=rgb, vmin=0.0, vmax=1.0)
