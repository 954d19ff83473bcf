# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""The package's command lines share one parser class and one error convention.

Every ``python -m anomalib_btm.…`` command reports a user error — a bad or missing argument, a missing file, invalid
data — as **one line** ``PROG: error: MESSAGE`` on stderr, and its ``main(argv)`` returns exit status **2** (no usage
block, no traceback). ``--help`` prints the defaults, which the parsers take from the functions they call
(:func:`signature_defaults`) instead of typing them a second time.

Why argparse and not jsonargparse (which builds a CLI from a function's signature): jsonargparse names each option
after its parameter (``--n_train``, ``--depth_scale``), while the documented commands spell them with dashes
(``--n-train``, ``--depth-scale``, ``--image-dir``, ``--k-max``), and some options take shapes a signature does not
express (``--image-size 224`` or ``--image-size H W``, a ``--image``/``--image-dir`` choice).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = ["USER_ERRORS", "ArgumentParser", "UsageError", "report", "run", "signature_defaults"]


class UsageError(ValueError):
    """A command-line argument is invalid or missing (what argparse would print with its usage block)."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ImportError)
"""Errors a command reports as one line: bad arguments or data, missing files, a missing optional package."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` for options whose default says something (not ``None`` or a flag's ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors raise :class:`UsageError` (for :func:`run`) and whose help shows defaults.

    Args:
        prog (str): Program name, e.g. ``"python -m anomalib_btm.data.depth"``.
        description (str): First paragraph of ``--help``.
    """

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(prog=prog, description=description, formatter_class=_HelpFormatter)

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing the usage block and exiting.

        Args:
            message (str): What is wrong.

        Raises:
            UsageError: Always.
        """
        raise UsageError(message)


def signature_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The default values of a function's parameters, to use as the defaults of its command-line options.

    Args:
        function (Callable[..., Any]): The function the command calls.

    Returns:
        dict[str, Any]: Parameter name → default, for the parameters that have one.
    """
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def report(prog: str, error: BaseException | str) -> int:
    """Print ``PROG: error: MESSAGE`` as one line on stderr.

    Args:
        prog (str): Program name.
        error (BaseException | str): The error or its message.

    Returns:
        int: ``2``, the exit status of a user error.
    """
    message = " ".join(str(error).split("\n")).strip() or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 2


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], int],
    errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """Parse ``argv`` and run a command's body; a user error becomes one line on stderr and exit status 2.

    Args:
        parser (argparse.ArgumentParser): The command's parser (an :class:`ArgumentParser`, so that argument errors
            raise :class:`UsageError`).
        argv (Sequence[str] | None): Arguments without the program name; ``None`` reads ``sys.argv``.
        body (Callable[[argparse.Namespace], int]): Runs the command on the parsed arguments; returns the status.
        errors (tuple[type[BaseException], ...]): Errors reported as one line (default :data:`USER_ERRORS`; a
            :class:`UsageError` always is).

    Returns:
        int: ``body``'s status, or 2 after a user error.
    """
    try:
        return body(parser.parse_args(argv))
    except (UsageError, *errors) as error:
        return report(parser.prog, error)
