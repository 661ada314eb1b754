"""The web annotator in a real browser: Debian's headless Chromium clicks the centre of each object, waits for
the model's mask, accepts it and moves on; the round's shard then holds the masks with their provenance."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
from browser import at_image_pixel, chromium, wait_for
from pycocotools import mask as mask_utils
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from web_helpers import DISKS, SIDE, disk_mask, disk_pool

from sam_engine.annotate.session import pool_samples


def serve_round(tmp_path, checkpoint, *overrides: str) -> tuple[subprocess.Popen, str]:
    """``sam-annotate-web`` over the disk pool, on a free port: (the process, the page's address)."""
    command = subprocess.Popen(
        [sys.executable, "-m", "sam_engine.annotate.web", f"pool={disk_pool(tmp_path / 'pool')}",
         f"checkpoint={checkpoint}", f"out_dir={tmp_path / 'out'}", "serve.port=0",
         "serve.token=a-token-of-sixteen+chars", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = command.stdout.readline()
    address = re.search(r"annotate at (\S+)", line)
    if address is None:
        command.kill()
        raise AssertionError(line + command.stdout.read())
    return command, address.group(1)


def page_state(driver, expression: str):
    return driver.execute_script(f"return window.samEngine.state.{expression}")


def click_image_at(driver, x: float, y: float) -> None:
    at_image_pixel(driver, x, y, (SIDE, SIDE)).click().perform()


def drag(driver, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at image pixel ``start``, move through the midpoint to ``end`` and release (a box, or a stroke)."""
    middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    chain = at_image_pixel(driver, *start, (SIDE, SIDE)).click_and_hold()
    chain = at_image_pixel(driver, *middle, (SIDE, SIDE), chain)
    at_image_pixel(driver, *end, (SIDE, SIDE), chain).release().perform()


def test_a_person_clicks_accepts_and_moves_on_and_the_shard_holds_the_masks(tmp_path, sharp_disk_export):
    command, address = serve_round(tmp_path, sharp_disk_export)
    driver = None
    try:
        driver = chromium()
        started = time.monotonic()
        driver.get(address)
        # Image 1: one click at the object's centre, the model's mask accepted as it is.
        wait_for(driver, "phase", "ready")
        click_image_at(driver, *DISKS[0][0])
        wait_for(driver, "segments", "1")
        assert page_state(driver, "current.candidates.length") == 3  # a single click: three masks to choose from
        ActionChains(driver).send_keys("1").perform()
        assert page_state(driver, "current.chosen") == 0
        ActionChains(driver).send_keys("3").perform()  # the disk model's largest disk
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        wait_for(driver, "accepted", "1")
        driver.save_screenshot(str(tmp_path / "page.png"))
        ActionChains(driver).send_keys(" ").perform()
        # Image 2: a box, undone; a click; a brush stroke inside the object and an eraser stroke outside it.
        wait_for(driver, "accepted", "0")
        wait_for(driver, "phase", "ready")
        (x, y), radius = DISKS[1]
        drag(driver, (x - radius, y - radius), (x + radius, y + radius))
        wait_for(driver, "segments", "2")
        assert page_state(driver, "current.prompts[0].type") == "box"
        ActionChains(driver).send_keys("z").perform()
        assert page_state(driver, "current.prompts.length") == 0
        click_image_at(driver, x, y)
        wait_for(driver, "segments", "3")
        ActionChains(driver).send_keys("b").perform()
        drag(driver, (x - 10, y), (x + 10, y))
        ActionChains(driver).send_keys("e").perform()
        drag(driver, (10, 10), (30, 10))
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        wait_for(driver, "accepted", "1")
        # The last image publishes the round and the server stops at once: the page says so without asking
        # again, however slow its network (here every request answered after 1 s, the server long gone).
        driver.set_network_conditions(latency=1000, download_throughput=2**20, upload_throughput=2**20)
        ActionChains(driver).send_keys(" ").perform()
        wait_for(driver, "phase", "finished")
        assert "round finished" in driver.find_element(By.ID, "status").text
        elapsed = time.monotonic() - started
        latencies = driver.execute_script("return window.samEngine.latencies")
        assert command.wait(timeout=30) == 0  # the round was published: the command ends by itself
    finally:
        if driver is not None:
            driver.quit()
        command.kill()
    assert len(latencies) == 3 and all(0 < ms < 10_000 for ms in latencies)
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
    records = {s.key: s.record for s in pool_samples(tmp_path / "out")}
    assert sorted(records) == ["disk0", "disk1"]
    for n, (clicks, strokes) in enumerate([(1, 0), (2, 2)]):  # the undone box counts: it took the person's time
        centre, radius = DISKS[n]
        (annotation,) = records[f"disk{n}"]["annotations"]
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        truth = disk_mask(centre, radius)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
        assert annotation["source"] == "manual" and annotation["stage"] == 1
        assert (annotation["clicks"], annotation["strokes"]) == (clicks, strokes)
        assert 0 < annotation["seconds"] < elapsed  # the real time from the first prompt to Enter
        assert np.allclose(annotation["point_coords"][0], centre, atol=SIDE / 100)
    assert not (tmp_path / "out" / "round01.web").exists()  # drafts are removed once the shard is published


def test_stage_two_shows_the_prefilled_masks_and_a_rejected_one_is_not_written(tmp_path, sharp_disk_export):
    command, address = serve_round(tmp_path, sharp_disk_export, "stage=2", "images=1", "prefill.points_per_side=2",
                                   "prefill.pred_iou_thresh=0", "prefill.stability_score_thresh=0")
    driver = None
    try:
        driver = chromium()
        driver.get(address)
        wait_for(driver, "phase", "ready")
        prefilled = page_state(driver, "prefilled.length")
        assert prefilled >= 2
        first = page_state(driver, "prefilled[0].id")
        point = driver.execute_script(  # a pixel of the first pre-filled mask, where the person points
            "const m = window.samEngine.state.prefilled[0].mask;"
            "const a = m.getContext('2d').getImageData(0, 0, m.width, m.height).data;"
            "for (let i = 3; i < a.length; i += 4) if (a[i] >= 128 && ((i - 3) / 4) % m.width > 2)"
            "  return [((i - 3) / 4) % m.width + 0.5, Math.floor((i - 3) / 4 / m.width) + 0.5];")
        at_image_pixel(driver, *point, (SIDE, SIDE)).send_keys("r").perform()
        assert page_state(driver, "prefilled.filter((p) => p.rejected).length") >= 1
        rejected = page_state(driver, "prefilled.filter((p) => p.rejected).map((p) => p.id)")
        ActionChains(driver).send_keys(" ").perform()
        wait_for(driver, "phase", "finished")
        assert command.wait(timeout=30) == 0
    finally:
        if driver is not None:
            driver.quit()
        command.kill()
    (record,) = [s.record for s in pool_samples(tmp_path / "out")]
    assert first in rejected
    assert len(record["annotations"]) == prefilled - len(rejected)
    assert {(a["source"], a["stage"]) for a in record["annotations"]} == {("auto", 2)}
