"""A pool of disk objects for the web annotator's tests: the disk model (model_helpers.train_disk_model) answers a
click with disks of radii 3/64, 6/64 and 10/64 of the image side, so a click at a disk of one of those radii
has a right answer among its three masks."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np

from sam_engine.data.records import make_annotations, make_record
from sam_engine.data.shards import ShardWriter

SIDE = 256
DISKS = [((100.0, 120.0), SIDE * 10 / 64), ((150.0, 110.0), SIDE * 10 / 64)]
"""(centre (x, y), radius) of the one object of each pool image: the disk model's largest disk."""


def disk_mask(centre: tuple[float, float], radius: float) -> np.ndarray:
    """SIDE x SIDE bool: the pixels whose centre lies within ``radius`` of ``centre``."""
    y, x = np.mgrid[:SIDE, :SIDE] + 0.5
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def disk_pool(directory: Path) -> Path:
    """A shard directory of len(DISKS) PNG images (a bright disk on noise), each with its disk as ground truth."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    with ShardWriter(directory, prefix="pool") as writer:
        for n, (centre, radius) in enumerate(DISKS):
            mask = disk_mask(centre, radius)
            pixels = rng.integers(0, 90, (SIDE, SIDE, 3), dtype=np.uint8)
            pixels[mask] = (230, 200, 60)
            data = io.BytesIO()
            Image.fromarray(pixels).save(data, format="PNG")
            record = make_record(f"disk{n}", SIDE, SIDE, f"disk{n}.png",
                                 make_annotations(mask[None], provenance={"source": "seed"}))
            writer.write(f"disk{n}", data.getvalue(), "png", record)
    return directory


def post(url: str, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    """POST ``body`` as JSON to ``url + path``: (status, the JSON answer)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
