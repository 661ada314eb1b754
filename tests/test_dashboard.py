"""Engine dashboards: the CSV/JSON/PNG summary, and a wandb run logged offline and read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from sam_engine.engine.dashboard import (
    METRIC_KEYS,
    RUN_ID_FILE,
    STEP_INDEX,
    STEP_NAME,
    STEPS_FILE,
    NullDashboard,
    WandbDashboard,
    _wandb_records,
    plot_stages,
    read_offline_history,
    summary_columns,
    write_engine_summary,
)

ROWS = [
    {"step": "seed", "stage": 0, "val/miou_1pt": 0.5, "val/miou_box": 0.6, "images": 10},
    {
        "step": "stage1/round1",
        "stage": 1,
        "val/miou_1pt": 0.625,
        "val/miou_5pt": 0.75,
        "masks_collected": 120,
        "masks_per_image": 12.0,
        "clicks_per_mask": 3.5,
        "seconds_per_mask": 14.25,
        "annotator": "simulated",
    },
    {"step": "stage3", "stage": 3, "masks_per_image": 80.5, "pseudo_label_precision": 0.875},  # no mIoU
    {"step": "final", "stage": 4, "val/miou_1pt": 0.75, "val/noc90": 2.5},
]


def test_summary_columns_put_step_stage_metrics_then_others():
    assert summary_columns(ROWS) == [
        "step",
        "stage",
        "val/miou_1pt",
        "val/miou_box",
        "val/miou_5pt",
        "val/noc90",
        "masks_collected",
        "masks_per_image",
        "clicks_per_mask",
        "seconds_per_mask",
        "pseudo_label_precision",
        "images",
        "annotator",
    ]
    assert summary_columns(ROWS[:1] + [{"step": "x", "stage": 1, "zeta": 1, "alpha": 2}]) == [
        "step",
        "stage",
        "val/miou_1pt",
        "val/miou_box",
        "images",
        "alpha",
        "zeta",
    ]


def test_write_summary_round_trips(tmp_path):
    out = tmp_path / "summary"
    paths = write_engine_summary(ROWS, out)
    assert [p.name for p in paths] == ["engine_summary.csv", "engine_summary.json", "stages.png"]

    with open(out / "engine_summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == summary_columns(ROWS)
        lines = list(reader)
    assert [line["step"] for line in lines] == ["seed", "stage1/round1", "stage3", "final"]
    for line, row in zip(lines, ROWS, strict=True):
        for key in reader.fieldnames:
            if key not in row:
                assert line[key] == "", (row["step"], key)  # a missing metric is an empty cell
            elif key in METRIC_KEYS or key == "stage":
                assert float(line[key]) == row[key], (row["step"], key)
            else:
                assert line[key] == row[key]

    assert json.loads((out / "engine_summary.json").read_text()) == ROWS

    png = out / "stages.png"
    assert png.stat().st_size > 1000
    with Image.open(png) as image:
        assert image.format == "PNG"
        image.load()  # decodes the whole file: not truncated
        assert min(image.size) > 100


def test_stages_plot_puts_miou_on_0_to_1_with_intervals_and_noc90_beside_precision():
    rows = [{**ROWS[0], "val/miou_1pt_ci95": 0.05}, ROWS[1], ROWS[2], {**ROWS[3], "val/miou_1pt_ci95": 0.02}]
    rows[1] = {**rows[1], "val/miou_1pt_ci95": 0.04}
    figure = plot_stages(rows)
    miou_ax, clicks_ax, cost_ax, precision_ax, per_image_ax = figure.axes  # the panels, then their twins
    assert miou_ax.get_ylim() == (0.0, 1.0) and precision_ax.get_ylim() == (0.0, 1.0)
    (bars,) = miou_ax.containers  # the 1-click curve carries its interval; box and 5 clicks do not
    assert bars.has_yerr
    segments = bars.lines[2][0].get_segments()
    assert [round(float(seg[1][1] - seg[0][1]), 6) for seg in segments] == [0.1, 0.08, 0.04]
    (noc,) = [line for line in clicks_ax.lines if line.get_label().startswith("NoC90")]  # (not stage lines)
    assert list(noc.get_xdata()) == [3] and list(noc.get_ydata()) == [2.5]
    (precision,) = precision_ax.lines
    assert list(precision.get_xdata()) == [2] and list(precision.get_ydata()) == [0.875]
    assert "masks per image" in per_image_ax.get_ylabel() and "seconds" in cost_ax.get_ylabel()


def test_write_summary_overwrites_and_leaves_no_temporary_files(tmp_path):
    write_engine_summary(ROWS[:2], tmp_path)
    write_engine_summary(ROWS, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine_summary.csv", "engine_summary.json", "stages.png"]
    assert len(json.loads((tmp_path / "engine_summary.json").read_text())) == len(ROWS)


def test_write_summary_killed_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    write_engine_summary(ROWS, tmp_path)
    old_png = (tmp_path / "stages.png").read_bytes()

    def savefig_then_die(self, f, **kwargs):
        f.write(b"\x89PNG half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", savefig_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_engine_summary(ROWS[:1], tmp_path)
    assert (tmp_path / "stages.png").read_bytes() == old_png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine_summary.csv", "engine_summary.json", "stages.png"]


def test_write_summary_takes_numpy_scalars(tmp_path):
    rows = [{"step": "seed", "stage": 0, "val/miou_1pt": np.float32(0.5), "images": np.int64(7)}]
    write_engine_summary(rows, tmp_path)
    assert json.loads((tmp_path / "engine_summary.json").read_text()) == [
        {"step": "seed", "stage": 0, "val/miou_1pt": 0.5, "images": 7}
    ]


def test_write_summary_refuses_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_engine_summary([], tmp_path)
    with pytest.raises(ValueError, match=r"row 1 \(stage1/round1\) has no 'stage'"):
        write_engine_summary([ROWS[0], {"step": "stage1/round1", "val/miou_1pt": 0.5}], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_null_dashboard_accepts_every_call():
    dashboard = NullDashboard()
    dashboard.log_step(ROWS[0])
    dashboard.log_table(ROWS)
    dashboard.log_masks("stage3", np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4), bool), ["auto"])
    dashboard.log_outputs("stage3", Path("export"), Path("shards"), "stage2/round1", ["stage3"])
    dashboard.finish()


LONG_NOTE = "".join(chr(ord("a") + i % 26) for i in range(70_000))  # spans three 32 KiB log blocks


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """An offline engine run of three steps, a table, the masks of an image and two steps' outputs; then a rerun
    that logs a repeated step and a new one. Returns (run_dir, history after the first process, run id of each
    process)."""
    run_dir = tmp_path_factory.mktemp("engine_run")
    first = WandbDashboard("sam_engine_test", "engine-test", run_dir, mode="offline", config={"seed": 0})
    first.log_step(ROWS[0])
    first.log_step(ROWS[1])
    first.log_step({**ROWS[3], "note": LONG_NOTE})
    first.log_table(ROWS)
    image = np.full((32, 48, 3), 90, np.uint8)
    masks = np.zeros((3, 32, 48), bool)
    masks[0, 4:20, 4:30] = masks[1, 10:28, 20:44] = masks[2, 12:16, 22:26] = True
    first.log_masks("final", image, masks, ["manual", "auto", "auto"])  # the latest step's
    outputs = tmp_path_factory.mktemp("outputs")
    (outputs / "export").mkdir()
    (outputs / "export" / "sam.pth").write_bytes(b"weights")
    (outputs / "round01-000000.tar").write_bytes(b"masks")
    first.log_outputs("seed", outputs / "export", None, None, [])
    first.log_outputs("stage1/round1", outputs / "export", outputs / "round01-000000.tar", "seed", ["stage1/round1"])
    first.finish()
    history = read_offline_history(run_dir)

    rerun = WandbDashboard("sam_engine_test", "engine-test", run_dir, mode="offline", config={"seed": 0})
    rerun.log_step({**ROWS[1], "val/miou_1pt": 0.65})  # a step the killed run had logged: same number
    rerun.log_step({"step": "stage2/round1", "stage": 2, "val/miou_1pt": 0.7})
    rerun.finish()
    return run_dir, history, (first.run_id, first.run.id, rerun.run_id, rerun.run.id)


def test_wandb_history_reads_back_the_logged_steps(offline_run):
    run_dir, history, _ = offline_run
    assert [row["_step"] for row in history] == [0, 1, 2]
    assert [row["val/miou_1pt"] for row in history] == [0.5, 0.625, 0.75]
    assert [row["stage"] for row in history] == [0, 1, 4]
    assert history[1]["seconds_per_mask"] == 14.25 and history[1]["annotator"] == "simulated"
    assert "val/miou_box" not in history[1] and "step" not in history[1]
    assert history[2]["note"] == LONG_NOTE

    files = sorted(run_dir.glob("wandb/offline-run-*/files"))[0]  # the first process's
    table = history[2]["engine_summary"]
    assert table["_type"] == "table-file" and table["nrows"] == len(ROWS)
    logged = json.loads((files / table["path"]).read_text())
    assert logged["columns"] == summary_columns(ROWS)
    got = [dict(zip(logged["columns"], line, strict=True)) for line in logged["data"]]
    assert [row["val/miou_1pt"] for row in got] == [0.5, 0.625, None, 0.75]
    assert got[2]["pseudo_label_precision"] == 0.875

    layers = history[2]["final"]["masks"]  # a layer per source; in each, mask k is id k (largest first)
    assert set(layers) == {"manual", "automatic"}
    with Image.open(files / layers["manual"]["path"]) as manual, \
            Image.open(files / layers["automatic"]["path"]) as auto:
        assert np.unique(np.asarray(manual)).tolist() == [0, 1] and np.asarray(auto).shape == (32, 48)
        assert np.asarray(auto)[14, 24] == 2 and np.asarray(auto)[20, 40] == 1  # the small mask lies on top


def test_wandb_metrics_have_the_engine_step_as_x_axis_and_a_chart_per_step_name(offline_run):
    run_dir, history, (run_id, *_) = offline_run
    assert [(row[STEP_INDEX], row[STEP_NAME]) for row in history] == [(0, "seed"), (1, "stage1/round1"),
                                                                      (2, "final")]
    log = sorted(run_dir.glob(f"wandb/offline-run-*/run-{run_id}.wandb"))[0]  # the first process's
    metrics = [r.metric for r in _wandb_records(log) if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "*" and m.step_metric == STEP_INDEX for m in metrics)
    chart = history[2]["per_step/val/miou_1pt_table"]
    files = sorted(run_dir.glob("wandb/offline-run-*/files"))[0]
    assert json.loads((files / chart["path"]).read_text())["data"] == [["seed", 0.5], ["stage1/round1", 0.625],
                                                                       ["final", 0.75]]


def test_each_steps_model_and_masks_are_wandb_artifacts_naming_what_the_model_came_from(offline_run):
    run_dir, _, (run_id, *_) = offline_run
    log = sorted(run_dir.glob(f"wandb/offline-run-*/run-{run_id}.wandb"))[0]  # the first process's
    artifacts = [(r.artifact.name, r.artifact.type, set(r.artifact.aliases), json.loads(r.artifact.metadata))
                 for r in _wandb_records(log) if r.WhichOneof("record_type") == "artifact"
                 and r.artifact.type in ("model", "dataset")]
    assert artifacts == [
        (f"{run_id}-model", "model", {"seed", "latest"}, {"step": "seed", "starts_from": None, "trained_on": []}),
        (f"{run_id}-masks", "dataset", {"stage1-round1", "latest"}, {"step": "stage1/round1"}),
        (f"{run_id}-model", "model", {"stage1-round1", "latest"},
         {"step": "stage1/round1", "starts_from": "seed", "trained_on": ["stage1-round1"]}),
    ]


def test_wandb_rerun_resumes_the_same_run(offline_run):
    run_dir, _, (first_id, first_wandb_id, rerun_id, rerun_wandb_id) = offline_run
    assert first_id == first_wandb_id == rerun_id == rerun_wandb_id
    assert (run_dir / RUN_ID_FILE).read_text().strip() == first_id
    steps = json.loads((run_dir / STEPS_FILE).read_text())
    assert steps == {"seed": 0, "stage1/round1": 1, "final": 2, "stage2/round1": 3}
    assert len(list(run_dir.glob(f"wandb/offline-run-*-{first_id}*/run-{first_id}.wandb"))) == 2

    history = read_offline_history(run_dir)
    assert [row["_step"] for row in history] == [0, 1, 2, 3]
    assert [row["val/miou_1pt"] for row in history] == [0.5, 0.65, 0.75, 0.7]  # the rerun's step 1 wins
    assert [row["stage"] for row in history] == [0, 1, 4, 2]


def test_read_offline_history_stops_at_a_cut_log_and_refuses_a_corrupt_one(offline_run, tmp_path):
    run_dir, history, (run_id, *_) = offline_run
    first_log = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))[0]
    data = first_log.read_bytes()
    copy = tmp_path / "wandb" / first_log.parent.name / first_log.name
    copy.parent.mkdir(parents=True)
    (tmp_path / RUN_ID_FILE).write_text(run_id)

    copy.write_bytes(data[: data.index(b"seconds_per_mask") + 5])  # killed while writing step 1
    cut = read_offline_history(tmp_path)
    assert [row["val/miou_1pt"] for row in cut] == [0.5]

    copy.write_bytes(data.replace(b"seconds_per_mask", b"seconds_per_MASK"))
    with pytest.raises(ValueError, match="checksum"):
        read_offline_history(tmp_path)


def test_read_offline_history_without_a_run_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_offline_history(tmp_path)
