# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Score RGB images and their point clouds with an exported BTM model.

    python -m anomalib_btm.deploy MODEL.xml --image RGB.png --xyz XYZ.tiff --output DIR [--device CPU]
    python -m anomalib_btm.deploy MODEL.xml --image-dir RGB_DIR --xyz-dir XYZ_DIR --output DIR [--jobs N]

Writes ``DIR/<image stem>.json`` (score, label, files) and ``DIR/<image stem>_overlay.png`` (the anomaly map over the
image, red where the model's threshold is exceeded) and prints the score and label. With ``--image-dir`` every image
of the folder is scored (its cloud is ``XYZ_DIR/<image stem>.tiff``) in OpenVINO's throughput mode
(:meth:`~anomalib_btm.deploy.BTMInferencer.predict_many`), and the samples per second are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anomalib.data import NumpyImageBatch
from anomalib.visualization.image.functional import overlay_images, visualize_anomaly_map
from PIL import Image

from anomalib_btm.cli import ArgumentParser, UsageError, run

from .inferencer import BTMInferencer, load_image

__all__ = ["IMAGE_SUFFIXES", "main", "overlay", "paired_files"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Files of ``--image-dir`` that are scored."""


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The anomaly map over the image, drawn as anomalib's ``ImageVisualizer`` draws it.

    anomalib's ``visualize_anomaly_map`` (jet colours, no per-image normalisation) and ``overlay_images``. The map is
    post-processed (``[0, 1]``, 0.5 = threshold) and keeps that scale: jet colours, not normalised per image.

    Args:
        image (np.ndarray): ``(3, H, W)`` RGB in ``[0, 1]``.
        anomaly_map (np.ndarray): ``(h, w)`` or ``(1, h, w)`` post-processed map; resized to ``(H, W)``.
        alpha (float): Weight of the heat map.

    Returns:
        Image.Image: The blended RGB image.
    """
    picture = Image.fromarray((np.asarray(image).transpose(1, 2, 0).clip(0.0, 1.0) * 255).round().astype(np.uint8))
    heat = np.asarray(anomaly_map, dtype=np.float32).reshape(anomaly_map.shape[-2:]).clip(0.0, 1.0)
    return overlay_images(picture, visualize_anomaly_map(heat), alpha=alpha).convert("RGB")


def paired_files(image_dir: Path, xyz_dir: Path | None) -> list[tuple[Path, Path | None]]:
    """The images of a folder (sorted by name) with their clouds ``xyz_dir/<stem>.tiff`` (or ``.tif``).

    Args:
        image_dir (Path): Folder of RGB images.
        xyz_dir (Path | None): Folder of XYZ TIFFs, or ``None`` for an RGB-only model.

    Returns:
        list[tuple[Path, Path | None]]: ``(image, cloud)`` pairs.

    Raises:
        FileNotFoundError: If a folder does not exist, holds no image, or an image has no cloud.
    """
    for folder, option in ((image_dir, "--image-dir"), (xyz_dir, "--xyz-dir")):
        if folder is not None and not folder.is_dir():
            msg = f"{option} {folder} is not a folder."
            raise FileNotFoundError(msg)
    images = sorted(path for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        msg = f"--image-dir {image_dir} holds no image ({', '.join(IMAGE_SUFFIXES)})."
        raise FileNotFoundError(msg)
    if xyz_dir is None:
        return [(image, None) for image in images]
    pairs = []
    for image in images:
        candidates = [xyz_dir / f"{image.stem}{suffix}" for suffix in (".tiff", ".tif")]
        cloud = next((candidate for candidate in candidates if candidate.is_file()), None)
        if cloud is None:
            msg = f"No point cloud for {image}: expected {xyz_dir / f'{image.stem}.tiff'} (or .tif)."
            raise FileNotFoundError(msg)
        pairs.append((image, cloud))
    return pairs


def _write(result: NumpyImageBatch, image: Path, xyz: Path | None, model: Path, output: Path) -> tuple[float, bool]:
    """Write ``<stem>.json`` and ``<stem>_overlay.png`` of one sample; return its score and label."""
    score = float(np.asarray(result.pred_score).reshape(-1)[0])
    label = bool(np.asarray(result.pred_label).reshape(-1)[0]) if result.pred_label is not None else score >= 0.5
    record = {
        "image": str(image),
        "xyz": None if xyz is None else str(xyz),
        "model": str(model),
        "pred_score": score,
        "pred_label": label,
    }
    (output / f"{image.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    if result.anomaly_map is not None:
        picture = overlay(load_image(image)[0], np.asarray(result.anomaly_map)[0])
        picture.save(output / f"{image.stem}_overlay.png")
    return score, label


def _build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m anomalib_btm.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="exported model (.xml or .onnx)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, default=None, help="RGB image")
    source.add_argument("--image-dir", type=Path, default=None, help="folder of RGB images (throughput mode)")
    parser.add_argument("--xyz", type=Path, default=None, help="organized XYZ TIFF in metres (RGB + 3D models)")
    parser.add_argument("--xyz-dir", type=Path, default=None, help="folder of XYZ TIFFs named like the images")
    parser.add_argument("--output", type=Path, required=True, help="folder for the JSON results and the overlays")
    parser.add_argument("--device", default="CPU", help="OpenVINO device")
    parser.add_argument("--jobs", type=int, default=0, help="infer requests in flight with --image-dir (0: optimal)")
    return parser


def _score(args: argparse.Namespace) -> int:
    """Score one image or a folder (the body of :func:`main`).

    Args:
        args (argparse.Namespace): Parsed arguments.

    Returns:
        int: ``0``.

    Raises:
        UsageError: If ``--xyz`` / ``--xyz-dir`` does not go with ``--image`` / ``--image-dir``, or a model that uses
            clouds gets none.
    """
    if args.image_dir is not None and args.xyz is not None:
        msg = "--xyz goes with --image; use --xyz-dir with --image-dir."
        raise UsageError(msg)
    if args.image is not None and args.xyz_dir is not None:
        msg = "--xyz-dir goes with --image-dir; use --xyz with --image."
        raise UsageError(msg)
    inferencer = BTMInferencer(args.model, device=args.device)
    if args.image is not None:
        result = inferencer.predict(args.image, args.xyz)
        args.output.mkdir(parents=True, exist_ok=True)
        score, label = _write(result, args.image, args.xyz, args.model, args.output)
        print(f"{args.image}: pred_score={score:.4f} pred_label={'anomalous' if label else 'normal'}")
        return 0
    if inferencer.uses_xyz and args.xyz_dir is None:
        msg = "This BTM model uses point clouds: pass `--xyz-dir` with `--image-dir`."
        raise UsageError(msg)
    pairs = paired_files(args.image_dir, args.xyz_dir if inferencer.uses_xyz else None)
    args.output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    anomalous = 0
    for (image, xyz), result in zip(pairs, inferencer.predict_many(pairs, jobs=args.jobs), strict=True):
        anomalous += int(_write(result, image, xyz, args.model, args.output)[1])
    seconds = time.perf_counter() - start
    print(
        f"{len(pairs)} samples ({anomalous} anomalous) in {seconds:.2f} s: {len(pairs) / seconds:.1f} samples/s "
        f"(OpenVINO throughput mode, results in {args.output})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point.

    Args:
        argv (Sequence[str] | None): Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        int: 0, or 2 with one line ``python -m anomalib_btm.deploy: error: ...`` on stderr.
    """
    return run(_build_parser(), argv, _score)


if __name__ == "__main__":
    sys.exit(main())
