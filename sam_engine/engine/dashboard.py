"""Per-stage dashboards of an engine run: wandb, and plain CSV/JSON/PNG for people without it.

The engine hands over one flat *row* per step of a run, in run order::

    {"step": "stage1/round2", "stage": 1, "val/miou_1pt": 0.71, "seconds_per_mask": 14.2, ...}

``step`` names the step (``seed``, ``stage1/round1`` ..., ``stage2/round1`` ..., ``stage3``, ``final``);
``stage`` is an int: 0 for the seed, 1-3 for the engine stages, 4 (:data:`sam_engine.stages.FINAL_STEP`) for the final
evaluation, so the column stays numeric. Any of :data:`METRIC_KEYS` may be present, and other keys too;
a step lacking a metric simply has no value for it.

- :func:`write_engine_summary`: ``engine_summary.csv``, ``engine_summary.json`` and ``stages.png``, each
  written whole or not at all (temporary file, rename).
- :class:`WandbDashboard`: one wandb run per engine run, resumable: a killed engine that is rerun
  logs into the same run at the same step numbers. :class:`NullDashboard` does nothing (logger=none).
- :func:`read_offline_history`: the logged rows back from the ``.wandb`` files of an offline run,
  without a server.
"""

from __future__ import annotations

import csv
import json
import secrets
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from matplotlib.figure import Figure

from sam_engine.stages import step_label
from sam_engine.utils.atomic_files import write_atomic

METRIC_KEYS = (
    "val/miou_1pt",
    "val/miou_1pt_ci95",
    "val/miou_box",
    "val/miou_5pt",
    "val/noc90",
    "masks_collected",
    "masks_per_image",
    "clicks_per_mask",
    "seconds_per_mask",
    "pseudo_label_precision",
    "images",
)
"""The metrics a row may carry, in the order of the summary's columns."""

SUMMARY_CSV = "engine_summary.csv"
SUMMARY_JSON = "engine_summary.json"
STAGES_PNG = "stages.png"
RUN_ID_FILE = "wandb_run_id.txt"
STEPS_FILE = "wandb_steps.json"
STEP_INDEX = "engine/step_index"
"""The x-axis of every metric of the engine's wandb run (``define_metric``): the step's place in run order."""
STEP_NAME = "engine/step"
PER_STEP_CHARTS = ("val/miou_1pt", "val/miou_box", "val/miou_5pt", "val/noc90", "pseudo_label_precision",
                   "masks_per_image", "seconds_per_mask")
"""Metrics charted against the step names (``seed``, ``stage1/round1`` ...) as wandb bar charts."""
MASK_LAYERS = (("manual", "manual"), ("auto", "automatic"))
"""(record ``source``, wandb mask layer): manual masks and automatic (pre-filled or stage 3) ones, each a layer
that the wandb image viewer toggles."""

_MIOU_CURVES = (("val/miou_1pt", "1 click"), ("val/miou_box", "box"), ("val/miou_5pt", "5 clicks"))


def summary_columns(rows: list[dict]) -> list[str]:
    """The union of the rows' keys: ``step``, ``stage``, the present :data:`METRIC_KEYS` in that order,
    then any other keys sorted."""
    keys = set().union(*rows)
    known = ("step", "stage", *METRIC_KEYS)
    return [k for k in known if k in keys] + sorted(keys - set(known))


def write_engine_summary(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Write the run's per-step summary under ``out_dir``, each file atomically.

    Arguments:
        rows: one dict per step in run order, each with ``step`` and ``stage`` (see the module doc).
        out_dir: created if missing.
    Returns:
        The paths of ``engine_summary.csv`` (one line per step, columns from :func:`summary_columns`,
        an empty cell where a step lacks a value), ``engine_summary.json`` (the rows) and ``stages.png``
        ((a) validation mIoU, (b) NoC90 and pseudo-label precision, (c) annotation cost, per step, stage
        boundaries marked).
    """
    _check_rows(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = summary_columns(rows)

    def write_csv(f: IO) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)

    paths = [out_dir / SUMMARY_CSV, out_dir / SUMMARY_JSON, out_dir / STAGES_PNG]
    write_atomic(paths[0], write_csv)
    write_atomic(paths[1], lambda f: json.dump(rows, f, indent=1, default=_plain_scalar))
    figure = plot_stages(rows)
    write_atomic(paths[2], lambda f: figure.savefig(f, format="png", dpi=100), binary=True)
    return paths


def plot_stages(rows: list[dict]) -> Figure:
    """A three-panel figure over the steps (x: run order, labelled by step name), stages shaded and named:
    (a) validation mIoU after 1 click (with its 95% interval when rows carry ``val/miou_1pt_ci95``), a box
    and 5 clicks, on 0..1; (b) NoC90 (left axis) and pseudo-label precision at IoU 0.9 (right axis, 0..1);
    (c) seconds per mask (bars, left axis) and masks per image (line, right axis). A step lacking a metric
    has no point for it; without any validation metric, panel (a) says so.

    Built on :class:`matplotlib.figure.Figure` (Agg rendering, no pyplot state, no display)."""
    _check_rows(rows)
    figure = Figure(figsize=(max(8.0, 0.6 * len(rows) + 3), 11), layout="constrained")
    miou_ax, clicks_ax, cost_ax = figure.subplots(3, 1, sharex=True)
    positions = np.arange(len(rows))

    def series(key: str) -> tuple[np.ndarray, np.ndarray]:
        present = [(i, row[key]) for i, row in enumerate(rows) if row.get(key) is not None]
        return np.array([i for i, _ in present]), np.array([v for _, v in present], dtype=float)

    for key, label in _MIOU_CURVES:
        x, y = series(key)
        if not len(x):
            continue
        interval = [rows[i].get(f"{key}_ci95") for i in x]
        if all(half is not None for half in interval):
            miou_ax.errorbar(x, y, yerr=np.array(interval, dtype=float), marker="o", capsize=3,
                             label=f"{label} (95% interval)")
        else:
            miou_ax.plot(x, y, marker="o", label=label)
    miou_ax.set_ylim(0.0, 1.0)
    miou_ax.set_ylabel("validation mIoU")
    miou_ax.set_title("(a) model quality per step", pad=20)

    x, y = series("val/noc90")
    if len(x):
        clicks_ax.plot(x, y, color="tab:red", marker="o", label="NoC90 (clicks to IoU 0.9)")
    clicks_ax.set_ylim(bottom=0.0)
    clicks_ax.set_ylabel("NoC90")
    precision_ax = clicks_ax.twinx()
    x, y = series("pseudo_label_precision")
    if len(x):
        precision_ax.plot(x, y, color="tab:green", marker="D", linestyle="none", label="precision@0.9")
    precision_ax.set_ylim(0.0, 1.0)
    precision_ax.set_ylabel("pseudo-label precision (IoU > 0.9)")
    clicks_ax.set_title("(b) clicks to 0.9 and automatic-mask precision")

    x, y = series("seconds_per_mask")
    if len(x):
        cost_ax.bar(x, y, color="tab:orange", alpha=0.7, label="seconds per mask")
    cost_ax.set_ylabel("seconds per mask")
    per_image_ax = cost_ax.twinx()
    x, y = series("masks_per_image")
    if len(x):
        per_image_ax.plot(x, y, color="tab:purple", marker="s", label="masks per image")
    per_image_ax.set_ylabel("masks per image")
    cost_ax.set_title("(c) annotation cost per step")

    stages = [row["stage"] for row in rows]
    _mark_stages(miou_ax, stages, labelled=True)
    _mark_stages(clicks_ax, stages, labelled=False)
    _mark_stages(cost_ax, stages, labelled=False)
    if miou_ax.get_legend_handles_labels()[0]:
        miou_ax.legend(loc="lower right", fontsize="small")
    else:  # data=folder without data.val
        miou_ax.text(0.5, 0.5, "no validation set: no model evaluated", transform=miou_ax.transAxes, ha="center")
    for left, right in ((clicks_ax, precision_ax), (cost_ax, per_image_ax)):
        handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        if handles:
            left.legend(handles=handles, loc="upper right", fontsize="small")
    cost_ax.set_xticks(positions, [str(row["step"]) for row in rows], rotation=45, ha="right")
    cost_ax.set_xlim(-0.5, len(rows) - 0.5)
    return figure


def _mark_stages(ax: Any, stages: list, labelled: bool) -> None:
    """Shade every other stage's run of steps, draw a dashed line between stages, and name each stage
    at the top of the panel when ``labelled``."""
    starts = [i for i, stage in enumerate(stages) if i == 0 or stage != stages[i - 1]]
    for number, (start, end) in enumerate(zip(starts, [*starts[1:], len(stages)], strict=True)):
        if number % 2:
            ax.axvspan(start - 0.5, end - 0.5, color="0.92", zorder=0)
        if start:
            ax.axvline(start - 0.5, color="0.4", linestyle="--", linewidth=0.8)
        if labelled:
            name = step_label(stages[start])
            ax.text((start + end - 1) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom")


class WandbDashboard:
    """One wandb run per engine run, under ``run_dir``, resumable across reruns.

    The run id is created once and kept in ``run_dir/wandb_run_id.txt``, and wandb is started with
    ``resume="allow"``: an engine rerun after a kill (or the next job of a SLURM chain) continues the
    same run. Each step name gets a wandb step number the first time it is logged, kept in
    ``run_dir/wandb_steps.json``: step numbers are consecutive in run order and a rerun step keeps its
    number (online, wandb ignores, with a warning, a step number it already has: the rerun's values
    reach the ``engine_summary`` table and :func:`write_engine_summary`, not that step's history). wandb's files
    go under ``run_dir/wandb/`` (``offline-run-<time>-<id>/`` when offline).

    Arguments:
        project, group: the wandb project, and the group shared with the engine's training runs.
        run_dir: the engine run's directory.
        mode: ``"online"``, ``"offline"``, ``"disabled"``, or None to let wandb decide (``WANDB_MODE``).
        config: the engine's configuration as plain data; a rerun may change values.
    """

    def __init__(
        self, project: str, group: str, run_dir: Path, mode: str | None = None, config: dict | None = None
    ) -> None:
        import wandb

        self._wandb = wandb
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        id_path = self.run_dir / RUN_ID_FILE
        if not id_path.exists():
            write_atomic(id_path, lambda f: f.write(f"engine-{secrets.token_hex(6)}\n"))
        self.run_id = id_path.read_text().strip()
        steps_path = self.run_dir / STEPS_FILE
        self._steps: dict[str, int] = json.loads(steps_path.read_text()) if steps_path.exists() else {}
        self.run = wandb.init(
            project=project,
            group=group,
            name="engine",
            job_type="engine",
            id=self.run_id,
            resume="allow",
            dir=self.run_dir,
            mode=mode,
            config=config,
            allow_val_change=True,
            reinit="create_new",  # not wandb's global run: the engine's in-process trainings start runs of their own
        )
        self.run.define_metric(STEP_INDEX)
        self.run.define_metric("*", step_metric=STEP_INDEX)

    def log_step(self, row: dict) -> None:
        """Log one step's row (its metrics under their names, and ``stage``) at the step's wandb step
        number."""
        _check_rows([row])
        name = str(row["step"])
        values = {k: v for k, v in row.items() if k != "step"}
        self.run.log({**values, STEP_INDEX: self.step_number(name), STEP_NAME: name}, step=self.step_number(name))

    def step_number(self, name: str) -> int:
        """The wandb step of the engine step ``name``: the next number the first time it is asked for."""
        if name not in self._steps:
            self._steps[name] = max(self._steps.values(), default=-1) + 1
            write_atomic(self.run_dir / STEPS_FILE, lambda f: json.dump(self._steps, f, indent=1))
        return self._steps[name]

    def log_table(self, rows: list[dict]) -> None:
        """Log the per-step summary as the ``wandb.Table`` ``engine_summary`` (columns from
        :func:`summary_columns`), and a bar chart per :data:`PER_STEP_CHARTS` metric the rows have
        (``per_step/<metric>``, one bar per step name), attached to the latest step."""
        _check_rows(rows)
        columns = summary_columns(rows)
        logged = {"engine_summary": self._wandb.Table(columns=columns,
                                                      data=[[row.get(c) for c in columns] for row in rows])}
        for key in PER_STEP_CHARTS:
            points = [[str(row["step"]), row[key]] for row in rows if row.get(key) is not None]
            if points:
                table = self._wandb.Table(columns=["step", key], data=points)
                logged[f"per_step/{key}"] = self._wandb.plot.bar(table, "step", key, title=f"{key} per engine step")
        self.run.log(logged, commit=False)

    def log_masks(self, name: str, image: np.ndarray, masks: np.ndarray, sources: list[str]) -> None:
        """Log the masks the step ``name`` collected on one image as the wandb image ``name`` of that step: the
        image with a mask layer per source (:data:`MASK_LAYERS`), each mask its own label.

        Arguments:
            image: H x W x 3 uint8.
            masks: N x H x W bool.
            sources: the ``source`` of each mask (``manual`` or ``auto``).
        """
        layers = {}
        for source, layer in MASK_LAYERS:
            ids = mask_ids(masks[[i for i, s in enumerate(sources) if s == source]])
            if ids.any():
                labels = {k: f"{layer} {k}" for k in range(1, int(ids.max()) + 1)}
                layers[layer] = {"mask_data": ids, "class_labels": labels}
        self.run.log({name: self._wandb.Image(image, masks=layers or None)}, step=self.step_number(name), commit=False)

    def log_outputs(self, step: str, model: Path | None, masks: Path | None, starts_from: str | None,
                    trained_on: list[str]) -> None:
        """Log what a step made as wandb Artifacts (references to the files, not copies): its masks as a version
        of ``<run id>-masks`` (type ``dataset``) and its model as a version of ``<run id>-model`` (type ``model``),
        each aliased with the step's name; a model's metadata names the model it started from and the masks
        it was trained on (their aliases), which is the lineage of each round."""
        alias = artifact_alias(step)
        if masks is not None:
            artifact = self._wandb.Artifact(f"{self.run_id}-masks", type="dataset", metadata={"step": step})
            artifact.add_reference(Path(masks).resolve().as_uri(), checksum=False)  # stage 3's may be huge
            self.run.log_artifact(artifact, aliases=[alias])
        if model is not None:
            artifact = self._wandb.Artifact(f"{self.run_id}-model", type="model", metadata={
                "step": step, "starts_from": starts_from and artifact_alias(starts_from),
                "trained_on": [artifact_alias(s) for s in trained_on]})
            artifact.add_reference(Path(model).resolve().as_uri())
            self.run.log_artifact(artifact, aliases=[alias])

    def finish(self, timeout: float = 30.0) -> None:
        """Close the wandb run, then wait up to ``timeout`` seconds until its transaction log holds the
        run's exit record: wandb's service may still be writing the log when ``finish`` returns, and a
        reader (:func:`read_offline_history`, ``wandb sync``) should see it whole."""
        log = Path(self.run.settings.sync_file)
        self.run.finish()
        deadline = time.monotonic() + timeout
        while not self.run.disabled and not _has_exit_record(log) and time.monotonic() < deadline:
            time.sleep(0.05)


def mask_ids(masks: np.ndarray) -> np.ndarray:
    """One label image (H x W uint8, 0: no mask) of ``masks`` (N x H x W bool): mask k (largest first, at most
    255) is id k, and a smaller mask lies over a larger one, so that every mask stays visible."""
    if not len(masks):
        return np.zeros(masks.shape[1:], np.uint8)
    order = np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable")[:255]
    ids = np.arange(1, len(order) + 1, dtype=np.uint8)[:, None, None]
    return (masks[order] * ids).max(0).astype(np.uint8)


def artifact_alias(step: str) -> str:
    """A step name as a wandb alias (``stage1/round2`` -> ``stage1-round2``: aliases hold no slash)."""
    return step.replace("/", "-")


class NullDashboard:
    """The dashboard for logger=none: same methods as :class:`WandbDashboard`, doing nothing."""

    def log_step(self, row: dict) -> None:
        """Do nothing."""

    def log_table(self, rows: list[dict]) -> None:
        """Do nothing."""

    def log_masks(self, name: str, image: np.ndarray, masks: np.ndarray, sources: list[str]) -> None:
        """Do nothing."""

    def log_outputs(self, step: str, model: Path | None, masks: Path | None, starts_from: str | None,
                    trained_on: list[str]) -> None:
        """Do nothing."""

    def finish(self, timeout: float = 30.0) -> None:
        """Do nothing."""


Dashboard = WandbDashboard | NullDashboard


def read_offline_history(run_dir: str | Path) -> list[dict]:
    """The history rows a :class:`WandbDashboard` logged under ``run_dir``, read from wandb's own
    transaction logs (``run_dir/wandb/*run-*/run-<id>.wandb``, one per process that ran), no server.

    Each row holds the logged keys with their values, plus wandb's ``_step``, ``_runtime`` and
    ``_timestamp``; a logged media object (table, images) comes back as the dict wandb stored for it
    (``{"_type": "table-file", "path": ..., ...}``). Rows are ordered by ``_step``; when a rerun logged a
    step again, its later row is kept. A log cut short by a kill yields the records written whole.
    """
    run_dir = Path(run_dir)
    id_path = run_dir / RUN_ID_FILE
    if not id_path.exists():
        raise FileNotFoundError(f"{id_path}: no wandb run id here; was a WandbDashboard started in {run_dir}?")
    run_id = id_path.read_text().strip()
    logs = sorted(run_dir.glob(f"wandb/*run-*/run-{run_id}.wandb"), key=lambda p: _run_dir_order(p.parent.name, run_id))
    by_step: dict[int, dict] = {}
    for path in logs:
        for record in _wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                row: dict[str, Any] = {}
                for item in record.history.item:
                    keys = [item.key] if item.key else list(item.nested_key)
                    target = row
                    for key in keys[:-1]:
                        target = target.setdefault(key, {})
                    target[keys[-1]] = json.loads(item.value_json)
                by_step[row["_step"]] = row
    return [by_step[step] for step in sorted(by_step)]


# The leveldb-style log wandb writes (the layout of wandb's former ``sdk/internal/datastore.py``, kept
# by its Go core): a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header
# (CRC-32 of type byte + data, length, type); a record is one FULL chunk or FIRST, MIDDLE..., LAST.
_FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
_BLOCK = 32768
_CHUNK_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of one ``.wandb`` file, in order, stopping at a
    truncated tail."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if not data.startswith(_FILE_HEADER):
        raise ValueError(f"{path}: not a wandb transaction log (header {data[:7]!r})")
    pos, pending = len(_FILE_HEADER), b""
    while True:
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER.size:
            pos += _BLOCK - pos % _BLOCK  # the block's zero-padded trailer
        if pos + _CHUNK_HEADER.size > len(data):
            return
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start = pos + _CHUNK_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            return
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum:
            raise ValueError(f"{path}: chunk at byte {pos} fails its checksum")
        pos = start + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _has_exit_record(path: Path) -> bool:
    """Whether the ``.wandb`` log at ``path`` exists and holds a run's exit record."""
    return path.exists() and any(record.WhichOneof("record_type") == "exit" for record in _wandb_records(path))


def _run_dir_order(name: str, run_id: str) -> tuple[str, int]:
    """Sort key of wandb's ``[offline-]run-<YYYYmmdd_HHMMSS>-<id>[-N]`` folders: the start time, then
    wandb's ``N`` for a later process started within the same second."""
    stamp_and_rest = name.split("run-", 1)[1]
    suffix = stamp_and_rest[16 + len(run_id) :].lstrip("-")
    return stamp_and_rest[:15], int(suffix or 0)


def _plain_scalar(value: Any) -> Any:
    """A numpy or torch scalar as the Python number JSON can hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not a number JSON can hold")


def _check_rows(rows: list[dict]) -> None:
    if not rows:
        raise ValueError("no rows: a summary needs at least one step")
    for index, row in enumerate(rows):
        for key in ("step", "stage"):
            if key not in row:
                raise ValueError(f"row {index} ({row.get('step', 'unnamed')}) has no {key!r} key: {sorted(row)}")
