"""Progress of long loops (labelling, importing, annotation rounds) with their totals and an ETA.

On a terminal, TQDM's bar. Elsewhere (a SLURM job's log, a pipe), where a bar redrawn with carriage returns
is one endless line, a log line about every twentieth of the total (every 30 s when the total is unknown):
``labelled images 120/1000 (12%), 3.10 images/s, 11.2 masks/image, ETA 4 min 44 s``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")
LINES_PER_RUN = 20
SECONDS_BETWEEN_LINES = 30.0
"""Without a total: a line this often."""


def describe_progress(done: int, total: int | None, started: float, first_done: int = 0, loss=None, *,
                      label: str = "step", unit: str = "steps", extra: str | None = None) -> str:
    """``step 120/600 (20%), 1.2 steps/s, loss 0.84, ETA 6 min 40 s`` (the rate over what this process did
    since ``started``, a ``time.monotonic()``, when ``first_done`` were done)."""
    rate = (done - first_done) / max(time.monotonic() - started, 1e-9)
    counted = f"{label} {done}/{total} ({100 * done / total:.0f}%)" if total else f"{label} {done}"
    parts = [counted, f"{rate:.2f} {unit}/s"]
    if loss is not None:
        parts.append(f"loss {float(loss):.3f}")
    if extra:
        parts.append(extra)
    if total and rate > 0:
        minutes, seconds = divmod(round(max(total - done, 0) / rate), 60)
        parts.append(f"ETA {minutes} min {seconds} s" if minutes else f"ETA {seconds} s")
    return ", ".join(parts)


class Progress:
    """Counts work toward ``total`` (None: unknown) and reports it; see the module's docstring.

    Arguments:
        label, unit: what is counted and its unit (``labelled images``, ``images``).
        extra: called for a figure to show beside the rate (``11.2 masks/image``).
        enabled: false: report nothing.
    """

    def __init__(self, label: str, total: int | None, unit: str = "images",
                 extra: Callable[[], str] | None = None, enabled: bool = True) -> None:
        self.label, self.total, self.unit, self.extra = label, total, unit, extra
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._every = max(1, (total or 0) // LINES_PER_RUN)
        self._bar = tqdm(desc=label, total=total, unit=unit[:-1] if unit.endswith("s") else unit) \
            if enabled and sys.stderr.isatty() else None

    def update(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(count)
            if self.extra is not None:
                self._bar.set_postfix_str(self.extra())
            return
        now = time.monotonic()
        due = self.done % self._every < count if self.total else now - self._last_line >= SECONDS_BETWEEN_LINES
        if due or self.done == self.total:
            self._last_line = now
            log.info("%s", self.describe())

    def describe(self) -> str:
        return describe_progress(self.done, self.total, self.started, label=self.label, unit=self.unit,
                                 extra=self.extra() if self.extra is not None else None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_of(items: Iterable[T], label: str) -> Iterator[T]:
    """``items`` (images), reporting progress as each is taken, against ``len(items)`` when they have one."""
    with Progress(label, len(items) if hasattr(items, "__len__") else None) as progress:
        for item in items:
            yield item
            progress.update()
