# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Write a small "own data" example for anomalib's Folder3D: RGB images, 16-bit depth PNGs, masks, intrinsics.

The scenes come from :mod:`anomalib_btm.data.synthetic`; only the depth (Z) of each rendered cloud is kept, as a
16-bit PNG in units of 0.1 mm, the way many sensors deliver it. Convert the depth folders into XYZ clouds with
``python -m anomalib_btm.data.depth`` (see README.md in this folder)::

    python examples/folder3d/make_example.py ./datasets/my_parts
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_btm.data.synthetic import camera_intrinsics, render_sample, sample_seed

DEPTH_UNIT = 1e-4
"""Metres per depth unit of the written PNGs (0.1 mm): pass ``--depth-scale 0.0001`` to the converter."""


def _save_depth(z: np.ndarray, path: Path) -> None:
    """Save Z (metres, 0 = missing) as a 16-bit PNG in units of ``DEPTH_UNIT``."""
    units = np.rint(z / DEPTH_UNIT)
    if units.max() >= 2**16:
        msg = f"Depth {z.max():.3f} m does not fit a 16-bit PNG in units of {DEPTH_UNIT} m."
        raise ValueError(msg)
    Image.fromarray(units.astype(np.uint16)).save(path)


def build(
    root: str | Path,
    image_size: int = 224,
    n_train: int = 10,
    n_test_good: int = 4,
    defects: Sequence[str] = ("dent", "crack", "hole", "color"),
    n_per_defect: int = 2,
    seed: int = 0,
) -> Path:
    """Write the example layout (existing files with the same names are replaced).

    Layout::

        root/camera.json                    fx, fy, cx, cy (pixels), image_width, image_height
        root/train/good/{rgb,depth}/NNN.png
        root/test/good/{rgb,depth}/NNN.png
        root/test/bad/{rgb,depth,gt}/<defect>_NNN.png

    Args:
        root: Output folder (created if missing).
        image_size: Square image size in pixels.
        n_train: Good training samples.
        n_test_good: Good test samples.
        defects: Defect types of the ``bad`` test samples.
        n_per_defect: Test samples per defect type.
        seed: Base seed.

    Returns:
        ``root``.
    """
    root = Path(root)
    groups: list[tuple[str, str, str | None, int]] = [("train", "good", None, n_train)]
    groups.append(("test", "good", None, n_test_good))
    groups += [("test", "bad", defect, n_per_defect) for defect in defects]
    for split, folder, defect, count in groups:
        base = root / split / folder
        for sub in ("rgb", "depth", "gt") if folder == "bad" else ("rgb", "depth"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            seq = sample_seed(seed, split, defect or "good", index)
            sample = render_sample(image_size, defect, seq)
            name = f"{defect}_{index:03d}" if defect else f"{index:03d}"
            Image.fromarray(sample.rgb).save(base / "rgb" / f"{name}.png")
            _save_depth(sample.xyz[..., 2], base / "depth" / f"{name}.png")
            if folder == "bad":
                Image.fromarray(sample.mask).save(base / "gt" / f"{name}.png")
    camera = camera_intrinsics(image_size)
    (root / "camera.json").write_text(json.dumps(camera.to_dict(), indent=2) + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a small Folder3D example with depth PNGs and intrinsics.")
    parser.add_argument("root", type=Path, help="output folder")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build(args.root, image_size=args.image_size, n_train=args.n_train, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
