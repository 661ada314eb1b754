"""Progress of long loops: a line each twentieth of the total in a log (pytest's stderr is not a terminal)."""

from __future__ import annotations

import logging
import re
import time

from PIL import Image

from sam_engine.data.importers.folder import import_folder
from sam_engine.utils import progress as progress_module
from sam_engine.utils.progress import Progress, describe_progress, progress_of


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress_module.__name__]


def test_progress_line_holds_count_share_rate_extra_and_eta():
    assert describe_progress(250, 1000, time.monotonic() - 100, label="labelled images", unit="images",
                             extra="11.2 masks/image") == \
        "labelled images 250/1000 (25%), 2.50 images/s, 11.2 masks/image, ETA 5 min 0 s"
    assert describe_progress(7, None, time.monotonic() - 7, label="imported images", unit="images") == \
        "imported images 7, 1.00 images/s"


def test_a_line_each_twentieth_of_the_total_and_every_30_s_without_one(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    assert list(progress_of(range(40), "annotated images")) == list(range(40))
    shown = lines(caplog)
    assert len(shown) == 20 and shown[0].startswith("annotated images 2/40 (5%)")
    assert shown[-1].startswith("annotated images 40/40 (100%)") and "ETA 0 s" in shown[-1]
    caplog.clear()
    monkeypatch.setattr(progress_module, "SECONDS_BETWEEN_LINES", 3600.0)
    with Progress("imported images", None) as progress:
        progress.update(5)
    assert lines(caplog) == []  # no total: lines by time
    monkeypatch.setattr(progress_module, "SECONDS_BETWEEN_LINES", 0.0)
    with Progress("imported images", None, extra=lambda: "0 skipped") as progress:
        progress.update(5)
    assert re.fullmatch(r"imported images 5, [\d.]+ images/s, 0 skipped", lines(caplog)[0])
    caplog.clear()
    with Progress("imported images", 10, enabled=False) as progress:
        progress.update(10)
    assert lines(caplog) == [] and progress.done == 10


def test_an_import_reports_its_progress_against_the_folders_image_count(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(photos / f"{i}.png")
    import_folder(photos, tmp_path / "shards")
    assert lines(caplog)[-1].startswith("imported images 3/3 (100%)")
