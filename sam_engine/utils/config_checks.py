"""Type and range checks of a command's config, run before it does anything: a wrong value from the command
line (``shard_size=abc``, ``stage1.rounds=-1``) is an error naming its key, never a TypeError deep inside the
work, nor a value the engine records as its run's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def is_int(value: Any) -> bool:
    """An integer, not a bool (``True`` is an int to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_values(cfg: DictConfig, *, integers: Mapping[str, int] = {}, numbers: Mapping[str, tuple[float, float]] = {},
                 booleans: tuple[str, ...] = (), strings: tuple[str, ...] = (), nullable: tuple[str, ...] = ()) -> None:
    """Check that each listed dotted key of ``cfg`` holds a value of its kind (null only where ``nullable``).

    Arguments:
        integers: key -> the least value allowed (an int, not a bool).
        numbers: key -> the closed range allowed (an int or finite float).
        booleans: keys that hold true or false.
        strings: keys that hold text (a path, a name): ``out_dir=123`` is a number to Hydra.
        nullable: keys of the above that may also be null.
    Raises:
        ValueError: naming the first key whose value is of another type or out of range.
    """
    def given(key: str) -> tuple[bool, Any]:
        value = OmegaConf.select(cfg, key)
        return not (value is None and key in nullable), value

    for key, least in integers.items():
        check, value = given(key)
        if check and (not is_int(value) or value < least):
            raise ValueError(f"{key}={value!r}: expected an integer >= {least}")
    for key, (low, high) in numbers.items():
        check, value = given(key)
        if check and (not is_number(value) or not low <= value <= high):
            raise ValueError(f"{key}={value!r}: expected a number in [{low:g}, {high:g}]")
    for key in booleans:
        check, value = given(key)
        if check and not isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected true or false")
    for key in strings:
        check, value = given(key)
        if check and not isinstance(value, str):
            raise ValueError(f"{key}={value!r}: expected text (quote it on the command line: {key}=\"'...'\")")


def typed_config(cls: type[T], node: DictConfig, name: str) -> T:
    """The dataclass ``cls`` made from the config node ``name``, each field type-checked as a Hydra structured
    config (``OmegaConf.structured``): ``simulation.num_click_rounds=abc`` or an unknown key is an error
    naming ``name.key``. List fields come back as the dataclass's tuples."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.to_container(node, resolve=True))
    except OmegaConfBaseException as exc:
        problem = str(exc).splitlines()[0]
        raise ValueError(f"{name}.{exc.full_key}: {problem}") from None
    values = OmegaConf.to_container(merged, resolve=True)
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})
