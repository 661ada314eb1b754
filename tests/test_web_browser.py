"""The web annotator in a real browser: Debian's headless Chromium clicks the centre of each object, waits for
the model's mask, accepts it and moves on; the round's shard then holds the masks with their provenance."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
from browser import chromium
from pycocotools import mask as mask_utils
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from web_helpers import DISKS, SIDE, disk_mask, disk_pool

from sam_engine.annotate.session import pool_samples


def wait_for(driver, attribute: str, value: str, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(f"data-{attribute}") == value,
        f"the page never reached data-{attribute}={value}")


def click_image_at(driver, x: float, y: float) -> None:
    """A left click at image pixel (x, y) of the page's canvas, wherever the page scaled it."""
    canvas = driver.find_element(By.ID, "view")
    width, height = canvas.size["width"], canvas.size["height"]
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(x / SIDE * width - width / 2), int(y / SIDE * height - height / 2)).click().perform()


def test_a_person_clicks_accepts_and_moves_on_and_the_shard_holds_the_masks(tmp_path, sharp_disk_export):
    pool = disk_pool(tmp_path / "pool")
    command = subprocess.Popen(
        [sys.executable, "-m", "sam_engine.annotate.web", f"pool={pool}", f"checkpoint={sharp_disk_export}",
         f"out_dir={tmp_path / 'out'}", "serve.port=0", "serve.token=a-token-of-sixteen+chars"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        line = command.stdout.readline()
        address = re.search(r"annotate at (\S+)", line)
        assert address, line + command.stdout.read()
        driver = chromium()
        started = time.monotonic()
        driver.get(address.group(1))
        for n, (centre, _) in enumerate(DISKS):
            wait_for(driver, "phase", "ready")
            click_image_at(driver, *centre)
            wait_for(driver, "segments", str(n + 1))
            ActionChains(driver).send_keys(Keys.ENTER).perform()
            wait_for(driver, "accepted", "1")
            if n == 0:
                driver.save_screenshot(str(tmp_path / "page.png"))
            ActionChains(driver).send_keys(" ").perform()
        wait_for(driver, "phase", "finished")
        elapsed = time.monotonic() - started
        latencies = driver.execute_script("return window.samEngine.latencies")
        assert command.wait(timeout=30) == 0  # the round was published: the command ends by itself
    finally:
        if driver is not None:
            driver.quit()
        command.kill()
    assert len(latencies) == len(DISKS) and all(0 < ms < 10_000 for ms in latencies)
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
    records = {s.key: s.record for s in pool_samples(tmp_path / "out")}
    assert sorted(records) == ["disk0", "disk1"]
    for n, (centre, radius) in enumerate(DISKS):
        (annotation,) = records[f"disk{n}"]["annotations"]
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        truth = disk_mask(centre, radius)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
        assert annotation["source"] == "manual" and annotation["stage"] == 1
        assert annotation["clicks"] == 1 and annotation["strokes"] == 0
        assert 0 < annotation["seconds"] < elapsed  # the real time from the click to Enter
        assert np.allclose(annotation["point_coords"][0], centre, atol=SIDE / 100)
    assert not (tmp_path / "out" / "round01.web").exists()  # drafts are removed once the shard is published
