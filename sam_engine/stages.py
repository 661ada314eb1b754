"""The data engine's stages: one table, read by the command line, the engine and its dashboard.

SAM's data engine has three stages; the engine adds a step before them (the seed model, number 0)
and one after them (the final evaluation, number 4), which its summaries show beside the stages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage of the engine.

    Attributes:
        number: 1, 2 or 3; ``stage=1`` on the command line stands for ``stage=<config>``.
        config: its file in the ``stage`` config group (``conf/stage/<config>.yaml``).
        label: how summaries and charts name it.
    """

    number: int
    config: str
    label: str


STAGES = (
    Stage(1, "assisted_manual", "stage 1"),
    Stage(2, "semi_automatic", "stage 2"),
    Stage(3, "fully_automatic", "stage 3"),
)
SEED_STEP = 0
"""The number of the engine's seed training in its summaries (it trains as stage 1 does)."""
FINAL_STEP = 4
"""The number of the engine's final evaluation in its summaries."""
ALL_STEPS = (SEED_STEP, *(entry.number for entry in STAGES), FINAL_STEP)
"""Every step number of a whole engine run, in order."""


def stage(number: int) -> Stage:
    """The stage of that number (1, 2 or 3)."""
    for entry in STAGES:
        if entry.number == number:
            return entry
    raise ValueError(f"stage {number}: the stages are {', '.join(str(s.number) for s in STAGES)}")


def step_label(number: int) -> str:
    """How a summary names a step number: ``seed``, ``stage 1`` .. ``stage 3``, ``final``."""
    if number == SEED_STEP:
        return "seed"
    if number == FINAL_STEP:
        return "final"
    return stage(number).label
