# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Score an RGB image and its point cloud with an exported BTM model.

    python -m anomalib_btm.deploy MODEL.xml --image RGB.png --xyz XYZ.tiff --output DIR [--device CPU]

Writes ``DIR/<image stem>.json`` (score, label, files) and ``DIR/<image stem>_overlay.png`` (the anomaly map over the
image, red where the model's threshold is exceeded) and prints the score and label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .inferencer import BTMInferencer, load_image

__all__ = ["main", "overlay"]


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a normalised anomaly map (``[0, 1]``, 0.5 = threshold) over an RGB image, as anomalib's overlays do.

    Args:
        image (np.ndarray): ``(3, H, W)`` RGB in ``[0, 1]``.
        anomaly_map (np.ndarray): ``(h, w)`` or ``(1, h, w)`` post-processed map; resized to ``(H, W)``.
        alpha (float): Weight of the heat map.

    Returns:
        Image.Image: The blended RGB image.
    """
    height, width = image.shape[-2:]
    heat = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32).reshape(anomaly_map.shape[-2:]), mode="F")
    heat = np.asarray(heat.resize((width, height), Image.Resampling.BILINEAR)).clip(0.0, 1.0)
    colours = colormaps["jet"](heat)[..., :3]
    blended = (1 - alpha) * image.transpose(1, 2, 0) + alpha * colours
    return Image.fromarray((blended.clip(0.0, 1.0) * 255).round().astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m anomalib_btm.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="exported model (.xml or .onnx)")
    parser.add_argument("--image", type=Path, required=True, help="RGB image")
    parser.add_argument("--xyz", type=Path, default=None, help="organized XYZ TIFF in metres (RGB + 3D models)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the JSON result and the overlay")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    args = parser.parse_args(argv)
    try:
        inferencer = BTMInferencer(args.model, device=args.device)
        result = inferencer.predict(args.image, args.xyz)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    score = float(np.asarray(result.pred_score).reshape(-1)[0])
    label = bool(np.asarray(result.pred_label).reshape(-1)[0]) if result.pred_label is not None else score >= 0.5
    picture = None
    if result.anomaly_map is not None:
        picture = overlay(load_image(args.image)[0], np.asarray(result.anomaly_map)[0])
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.image.stem
    record = {
        "image": str(args.image),
        "xyz": None if args.xyz is None else str(args.xyz),
        "model": str(args.model),
        "pred_score": score,
        "pred_label": label,
    }
    (args.output / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    if picture is not None:
        picture.save(args.output / f"{stem}_overlay.png")
    print(f"{args.image}: pred_score={score:.4f} pred_label={'anomalous' if label else 'normal'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
