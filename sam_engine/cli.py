"""Command-line conveniences shared by the ``python -m sam_engine.<x>`` entry points."""

from __future__ import annotations

STAGE_NAMES = {"1": "assisted_manual", "2": "semi_automatic", "3": "fully_automatic"}


def alias_stage_numbers(argv: list[str]) -> list[str]:
    """Let ``stage=1`` stand for ``stage=assisted_manual`` (and 2, 3 likewise).

    Hydra reads ``stage=1`` as an integer, which it refuses as a config-group choice; any other number
    is passed on quoted, so Hydra's error lists the available stages.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "stage" and value.isdigit():
            arg = f"{key}={STAGE_NAMES.get(value, repr(value))}"
        out.append(arg)
    return out
