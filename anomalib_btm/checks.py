# Copyright (C) 2026 anomalib_btm authors
# SPDX-License-Identifier: Apache-2.0

"""Argument checks shared by the package: one wording for "not one of the choices"."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise a ``ValueError`` naming the argument unless ``value`` is one of ``choices``.

    Args:
        name (str): How the message names the argument, e.g. ``"blur_mode"``.
        value (object): The value given.
        choices (Iterable[object]): The accepted values (a tuple, or a mapping's keys).

    Raises:
        ValueError: ``"{name} must be one of {choices}, got {value!r}."``

    Example:
        >>> check_choice("blur_mode", "median", ("gaussian", "none"))
        Traceback (most recent call last):
        ...
        ValueError: blur_mode must be one of ('gaussian', 'none'), got 'median'.
    """
    choices = tuple(choices)
    if value not in choices:
        msg = f"{name} must be one of {choices}, got {value!r}."
        raise ValueError(msg)
