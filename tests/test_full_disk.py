"""A full disk under the jobs that write shards: the import and the labelling stop with the reason in their
report, leave no temporary shard, keep every shard they completed, and a rerun with space completes the set.

The disk is real: a tmpfs of a few hundred kilobytes mounted for the test (as root; the tests skip where
mounting is not allowed, as the SLURM tests do without root).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_label import label_in_process, pool, summary_of  # noqa: F401  (pool: a fixture)

from sam_engine.data.importers.base import REPORT_FILE
from sam_engine.data.importers.folder import import_folder
from sam_engine.data.shards import integrity_problem, list_shards, read_manifest


@contextlib.contextmanager
def small_disk(path: Path, kilobytes: int) -> Iterator[Path]:
    """A tmpfs of ``kilobytes`` mounted at ``path`` for the block."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def noise_photos(folder: Path, count: int, side: int = 96) -> None:
    """PNGs of noise: about 28 KB each, incompressible."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"p{i}.png")


def assert_only_complete_shards(directory: Path) -> list[str]:
    """No temporary file; every listed shard is the file its manifest describes. Returns the listed keys."""
    assert not [p.name for p in directory.iterdir() if ".tmp-" in p.name]
    for url in list_shards(directory):
        assert integrity_problem(url) is None
    return [key for entry in read_manifest(directory)["shards"].values() for key in entry["keys"]]


def test_an_import_that_fills_the_disk_stops_with_its_report_and_a_rerun_completes(tmp_path):
    noise_photos(tmp_path / "photos", 12)
    with small_disk(tmp_path / "disk", 160) as disk:
        with pytest.raises(OSError) as stopped:
            import_folder(tmp_path / "photos", disk / "shards", shard_size=2)
        assert stopped.value.errno == errno.ENOSPC
        keys = assert_only_complete_shards(disk / "shards")
        report = json.loads((disk / "shards" / REPORT_FILE).read_text())
        assert 0 < len(keys) < 12 and report["imported"] >= len(keys)
        assert report["complete"] is False and "No space left on device" in report["stopped_by"]
        shutil.copytree(disk / "shards", tmp_path / "moved")
    again = import_folder(tmp_path / "photos", tmp_path / "moved", shard_size=2)
    assert again.already_present == len(keys) and again.imported == 12 - len(keys)
    assert sorted(assert_only_complete_shards(tmp_path / "moved")) == sorted(f"p{i}" for i in range(12))
    assert json.loads((tmp_path / "moved" / REPORT_FILE).read_text())["complete"] is True


def test_a_labelling_task_that_fills_the_disk_says_why_and_a_rerun_completes(
    disk_export, pool, tmp_path, caplog  # noqa: F811
):
    """The task's summary says what stopped it: in its file when the disk still takes it, else in the log; the
    file on disk is then the previous whole summary, which counts only what was published."""
    with small_disk(tmp_path / "disk", 40) as disk:
        with pytest.raises(OSError, match="No space left on device"):
            label_in_process(disk_export, pool, disk / "out")
        summary = summary_of(disk / "out")
        done = assert_only_complete_shards(disk / "out")
        assert 0 < len(done) < 6 and summary["images"] == len(done) and summary["complete"] is False
        logged = [r.getMessage() for r in caplog.records if "could not write the task's summary" in r.getMessage()]
        stopped_by = summary["stopped_by"] or json.loads(logged[0].split(": ", 1)[1])["stopped_by"]
        assert "No space left on device" in stopped_by
        shutil.copytree(disk / "out", tmp_path / "moved")
    summary = label_in_process(disk_export, pool, tmp_path / "moved")
    assert summary["complete"] and summary["stopped_by"] is None and len(summary["shards_already_done"]) == 1
    assert len(assert_only_complete_shards(tmp_path / "moved")) == 6
