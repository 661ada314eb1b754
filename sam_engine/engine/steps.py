"""Resumable steps in a run directory: a finished step is skipped by its output, a half-done one redone.

A step is a name (``seed``, ``stage1/round2/annotate`` ...), its directory ``<run_dir>/<name>`` and an
action that fills it and returns the step's metrics. ``done.json`` (written atomically, last) marks a
finished step and holds its metrics, so a rerun of the engine skips the step and still reports them.
Whatever a killed step left is the action's to finish: each action writes its outputs atomically
(shards published whole, training resumed from its last checkpoint).

The run directory remembers the configuration it was started with (``engine_config.json``); a rerun with
another configuration is refused, naming the differences, instead of mixing two runs' outputs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sam_engine.utils.atomic_files import write_json_atomic

log = logging.getLogger(__name__)

DONE = "done.json"
RUN_CONFIG = "engine_config.json"


class EnginePaused(Exception):
    """The engine waits for people (an annotation export to be corrected); rerun it to continue."""


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def record_run_config(run_dir: Path, config: Mapping) -> None:
    """Record ``config`` as the run's, or check that it is the one the run was started with.

    Raises:
        ValueError: ``run_dir`` holds a run started with another configuration, naming the differences.
    """
    path = run_dir / RUN_CONFIG
    if path.exists():
        started = json.loads(path.read_text())
        changed = _differences(started, json.loads(json.dumps(config)))
        if changed:
            raise ValueError(
                f"{run_dir} holds an engine run started with another configuration ({'; '.join(changed)}); "
                "its outputs would mix with this one's. Use a new run_dir=..., or delete that directory"
            )
        return
    write_json_atomic(path, config)


class Steps:
    """Runs the steps of one engine run, in order, skipping finished ones.

    Arguments:
        run_dir: the run directory.
        on_done: called with the metrics row of each step finished now (dashboards log it).
    """

    def __init__(self, run_dir: Path, on_done: Callable[[dict], None] = lambda row: None) -> None:
        self.run_dir = run_dir
        self.on_done = on_done

    def directory(self, name: str) -> Path:
        return self.run_dir / name

    def is_done(self, name: str) -> bool:
        return (self.directory(name) / DONE).exists()

    def finished_row(self, name: str) -> dict:
        """The metrics row a finished step recorded."""
        return json.loads((self.directory(name) / DONE).read_text())

    def run(self, name: str, action: Callable[[Path], dict], position: tuple[int, int] | None = None) -> dict:
        """The step's metrics row (``step`` = name, then what ``action(directory)`` returned).

        Arguments:
            position: (k, n): the step is the k-th of the n this invocation runs, for the log (``step 4/9``).
        """
        label = f"step {position[0]}/{position[1]} {name}" if position else f"step {name}"
        if self.is_done(name):
            log.info("%s: done before, skipped", label)
            return self.finished_row(name)
        log.info("%s: running", label)
        started = time.monotonic()
        self.directory(name).mkdir(parents=True, exist_ok=True)
        row = {"step": name, **action(self.directory(name))}
        write_json_atomic(self.directory(name) / DONE, row)
        log.info("%s: done in %.0f s: %s", label, time.monotonic() - started, describe_row(row))
        self.on_done(row)
        return row


REPORTED = (("val/miou_1pt", "1-click mIoU {:.3f}"), ("val/miou_1pt_ci95", "+- {:.3f}"), ("val/miou_box", "box {:.3f}"),
            ("val/miou_5pt", "5-click {:.3f}"), ("val/noc90", "NoC90 {:.1f}"),
            ("pseudo_label_precision", "precision@0.9 {:.3f}"), ("masks_per_image", "masks/image {:.1f}"),
            ("seconds_per_mask", "s/mask {:.1f}"))


def describe_row(row: dict) -> str:
    """A step's headline metrics in one line (those it has), for the log."""
    return " ".join(text.format(row[key]) for key, text in REPORTED if row.get(key) is not None) or "no metrics"
