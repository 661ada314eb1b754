"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver (nothing downloaded), and the
moves a person makes on the web annotator's page (its tests and ``benchmarks/web_latency.py``).

``make test`` installs the two packages where they are missing (as root); without them the browser tests
skip, unless ``SAM_ENGINE_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium():
    """A headless Chromium WebDriver (1280 x 900); skips (or fails under SAM_ENGINE_REQUIRE_BROWSER=1) without one."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        message = f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver; make test does)"
        if os.environ.get("SAM_ENGINE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-gpu", "--no-first-run"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER),
                            options=options)


def wait_for(driver, attribute: str, value: str, timeout: float = 30) -> None:
    """Until the page's ``<body data-ATTRIBUTE>`` reads ``value`` (the page's phase and counters)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(f"data-{attribute}") == value,
        f"the page never reached data-{attribute}={value}")


def at_image_pixel(driver, x: float, y: float, size: tuple[int, int], chain=None):
    """``chain`` (a new ActionChains by default) moved to image pixel (x, y) of the page's canvas, wherever the
    page scaled it; ``size`` is the image's (H, W)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "view")
    width, height = canvas.size["width"], canvas.size["height"]
    return (chain or ActionChains(driver)).move_to_element_with_offset(
        canvas, int(x / size[1] * width - width / 2), int(y / size[0] * height - height / 2))
