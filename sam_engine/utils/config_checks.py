"""Type and range checks of a command's config, run before it does anything: a wrong value from the command
line (``shard_size=abc``, ``stage1.rounds=-1``) is an error naming its key, never a TypeError deep inside the
work, nor a value the engine records as its run's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


def is_int(value: Any) -> bool:
    """An integer, not a bool (``True`` is an int to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_values(cfg: DictConfig, *, integers: Mapping[str, int] = {}, numbers: Mapping[str, tuple[float, float]] = {},
                 booleans: tuple[str, ...] = ()) -> None:
    """Check that each listed dotted key of ``cfg`` holds a value of its kind (never null).

    Arguments:
        integers: key -> the least value allowed (an int, not a bool).
        numbers: key -> the closed range allowed (an int or finite float).
        booleans: keys that hold true or false.
    Raises:
        ValueError: naming the first key whose value is of another type or out of range.
    """
    for key, least in integers.items():
        value = OmegaConf.select(cfg, key)
        if not is_int(value) or value < least:
            raise ValueError(f"{key}={value!r}: expected an integer >= {least}")
    for key, (low, high) in numbers.items():
        value = OmegaConf.select(cfg, key)
        if not is_number(value) or not low <= value <= high:
            raise ValueError(f"{key}={value!r}: expected a number in [{low:g}, {high:g}]")
    for key in booleans:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected true or false")
