"""Click-to-mask latency of the web annotator, measured in a real browser (Debian's headless Chromium).

    python benchmarks/web_latency.py                                   # tiny and vit_b, fresh weights
    python benchmarks/web_latency.py --checkpoint EXPORT --variants tiny --screenshot docs/images/web_annotator.png

For each model the page is served (``sam_engine.annotate.web``) over synthetic scenes (``--image-size`` px) and
Chromium clicks the objects as a person would: a first click on an object (three masks: the model's multimask
output), then ``--refinements`` more clicks at the centre of the largest error region (one mask, the previous
one as mask prompt). The page's own clock gives the latency: from the click to the mask drawn on the canvas
(``window.samEngine.latencies``): the request, the decoder, the masks' PNGs, their decoding and drawing.
Printed beside it: the server's share (decoder + PNG encoding, timed in-process on the same prompts) and the
image encoder's time, paid once per image when the page loads it. Weights do not change the time of a call,
so fresh weights measure any export of the same variant; ``--checkpoint`` (an export) gives the screenshot a
model that segments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import at_image_pixel, chromium, wait_for  # noqa: E402  (tests/browser.py: as the tests drive it)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from sam_engine.annotate.session import pool_samples  # noqa: E402
from sam_engine.annotate.web.masks import mask_to_png, png_to_mask  # noqa: E402
from sam_engine.annotate.web.options import ServeOptions  # noqa: E402
from sam_engine.annotate.web.round import WebRound  # noqa: E402
from sam_engine.annotate.web.segmenter import Segmenter  # noqa: E402
from sam_engine.annotate.web.server import serve  # noqa: E402
from sam_engine.data.images import decode_image  # noqa: E402
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset  # noqa: E402
from sam_engine.model import build_sam, load_model  # noqa: E402
from sam_engine.train.prompts import Clicks, largest_error_region_clicks  # noqa: E402


def wait_for_image(driver, key: str, timeout: float = 300) -> None:
    """Until the page shows image ``key``, ready for clicks."""
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const s = window.samEngine.state; return document.body.dataset.phase === 'ready' && s.image && s.image.key")
        == key)


def click(driver, x: float, y: float, size: tuple[int, int], background: bool = False) -> None:
    """A click at image pixel (x, y) of the canvas (the image is ``size`` = (H, W)); Shift-click for background."""
    if background:
        shift = ActionChains(driver).key_down(Keys.SHIFT)
        at_image_pixel(driver, x, y, size, shift).click().key_up(Keys.SHIFT).perform()
    else:
        at_image_pixel(driver, x, y, size).click().perform()


def current_mask(driver, size: tuple[int, int]) -> np.ndarray:
    """The mask the page shows for the object being annotated (H x W bool)."""
    data = driver.execute_script("return window.samEngine.state.current.mask.toDataURL('image/png')")
    return png_to_mask(data, size)


def next_click(mask: np.ndarray, truth: np.ndarray, previous: list[tuple[float, float, int]]):
    """(x, y, label) at the centre of the largest error region (the simulated annotator's rule)."""
    points = torch.tensor([[p[:2] for p in previous]], dtype=torch.float32)
    labels = torch.tensor([[p[2] for p in previous]])
    new = largest_error_region_clicks(torch.from_numpy(mask)[None], torch.from_numpy(truth)[None],
                                      previous=Clicks(points, labels))
    return float(new.points[0, 0]), float(new.points[0, 1]), int(new.labels[0])


def server_share(model, image: np.ndarray, prompts: list[list[tuple[float, float, int]]]) -> float:
    """Median ms of the server's work for one prompt set: the decoder and the masks' PNGs (image encoded once)."""
    segmenter = Segmenter(model)
    segmenter.embed("image", lambda: image)
    times = []
    for clicks in prompts:
        points = np.array([c[:2] for c in clicks])
        labels = np.array([c[2] for c in clicks])
        start = time.perf_counter()
        for candidate in segmenter.segment("image", lambda: image, points, labels, None, None):
            mask_to_png(candidate.mask)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(variant: str, checkpoint: str | None, pool: Path, objects: int, refinements: int,
            screenshot: Path | None) -> dict:
    model = (load_model(checkpoint) if checkpoint else build_sam(variant)).eval()
    samples = list(pool_samples(pool))
    round_ = WebRound(samples, Path(tempfile.mkdtemp()), "bench", 1, variant)
    addresses, stop = [], threading.Event()
    thread = threading.Thread(target=serve, args=(round_, Segmenter(model), ServeOptions(port=0)),
                              kwargs={"on_ready": addresses.append, "stop": stop}, daemon=True)
    thread.start()
    while not addresses:
        time.sleep(0.05)
    driver = chromium()
    loads, prompts = [], []
    try:
        for sample in samples:
            start = time.perf_counter()
            if sample is samples[0]:
                driver.get(addresses[0])
            else:
                ActionChains(driver).send_keys(" ").perform()
            wait_for_image(driver, sample.key)
            loads.append(time.perf_counter() - start)
            info = sample.record["image"]
            size = (info["height"], info["width"])
            annotations = sorted(sample.record["annotations"], key=lambda a: -a["area"])[:objects]
            for annotation in annotations:
                truth = mask_utils.decode(annotation["segmentation"]).astype(bool)
                clicks = [(*annotation["point_coords"][0], 1)]
                for k in range(1 + refinements):
                    done = int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-segments"))
                    if k > 0:
                        clicks.append(next_click(current_mask(driver, size), truth, clicks))
                    x, y, label = clicks[-1]
                    click(driver, x, y, size, background=label == 0)
                    wait_for(driver, "segments", str(done + 1), timeout=120)
                    prompts.append(list(clicks))
                if screenshot is not None and sample is samples[0] and annotation is annotations[-1]:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(screenshot))  # the objects accepted, the last one's clicks
                ActionChains(driver).send_keys(Keys.ENTER).perform()
        latencies = driver.execute_script("return window.samEngine.latencies")
    finally:
        driver.quit()
        stop.set()
        thread.join(10)
    per_object = 1 + refinements
    first = [ms for i, ms in enumerate(latencies) if i % per_object == 0]
    later = [ms for i, ms in enumerate(latencies) if i % per_object != 0]
    image = decode_image(samples[0].data)
    return {
        "variant": variant, "clicks": len(latencies),
        "first_click_ms": statistics.median(first), "refinement_ms": statistics.median(later) if later else None,
        "p90_ms": float(np.percentile(latencies, 90)),
        "server_ms": server_share(model, image, [p for i, p in enumerate(prompts) if i % per_object]),
        "image_load_s": statistics.median(loads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--checkpoint", help="an export for the first variant (the screenshot's model)")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=768)
    parser.add_argument("--objects", type=int, default=3, help="objects clicked per image")
    parser.add_argument("--refinements", type=int, default=2, help="clicks after the first, per object")
    parser.add_argument("--screenshot", type=Path, help="a PNG of the page at the first image's last object")
    args = parser.parse_args()
    pool = ensure_synthetic_dataset(Path(tempfile.mkdtemp()) / "pool", num_images=args.images, seed=2000,
                                    image_size=args.image_size)
    print(f"{args.images} synthetic scenes of {args.image_size} px, {args.objects} objects each, 1 + "
          f"{args.refinements} clicks per object; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("variant | first click (3 masks) ms | refinement (1 mask) ms | p90 ms | server share ms | image load s")
    for n, variant in enumerate(args.variants):
        row = measure(variant, args.checkpoint if n == 0 else None, pool, args.objects, args.refinements,
                      args.screenshot if n == 0 else None)
        print(f"{row['variant']} | {row['first_click_ms']:.0f} | {row['refinement_ms']:.0f} | {row['p90_ms']:.0f} | "
              f"{row['server_ms']:.0f} | {row['image_load_s']:.2f}", flush=True)


if __name__ == "__main__":
    main()
