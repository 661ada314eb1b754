"""Helpers for the data-layer tests: random masks, SA-1B samples, small shard sets."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from sam_engine.data.records import make_annotations, make_record
from sam_engine.data.shards import ShardWriter


def random_masks(num: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """N x H x W bool: random non-empty rectangles, each under half the image."""
    y0 = rng.integers(0, height // 2, num)
    x0 = rng.integers(0, width // 2, num)
    y1 = y0 + rng.integers(1, height // 2 + 1, num)
    x1 = x0 + rng.integers(1, width // 2 + 1, num)
    ys, xs = np.arange(height), np.arange(width)
    rows = (ys >= y0[:, None]) & (ys < y1[:, None])
    cols = (xs >= x0[:, None]) & (xs < x1[:, None])
    return rows[:, :, None] & cols[:, None, :]


def encode_image(pixels: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def make_sample(key: str, *, height: int = 24, width: int = 32, num_masks: int = 3, seed: int = 0):
    """(png bytes, record, masks) of a random image with ``num_masks`` rectangle masks."""
    rng = np.random.default_rng(seed)
    masks = random_masks(num_masks, height, width, rng)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    record = make_record(key, width, height, f"{key}.png", make_annotations(masks))
    return encode_image(pixels), record, masks


def write_shard_set(directory: Path, sizes: list[int], prefix: str = "shard") -> list[str]:
    """Write shards of the given sample counts with ShardWriter; returns all keys in order."""
    keys = []
    with ShardWriter(directory, prefix=prefix, max_samples=max(sizes)) as writer:
        for shard, size in enumerate(sizes):
            for i in range(size):
                key = f"{prefix}{shard}_{i}"
                data, record, _ = make_sample(key, seed=len(keys))
                writer.write(key, data, "png", record)
                keys.append(key)
            writer.finish_shard()
    return keys


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with exactly these members, bypassing every check of ShardWriter."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tar_keys_in(paths) -> list[str]:
    """Every sample key in these tars, with repetitions."""
    keys = []
    for path in paths:
        with tarfile.open(path) as tar:
            keys += [m.name.partition(".")[0] for m in tar if m.name.endswith(".json")]
    return keys
