"""Throughput of the data layer: writing SA-1B shards and reading them through the training pipeline.

    python benchmarks/data.py                         # 48 images of 1024 px with 64 masks each
    python benchmarks/data.py --images 200 --image-size 1500 --workers 1 2 4

Synthetic JPEG images with 64 random ellipses and polygons each are generated in memory, annotated
(RLE, bbox, area, points), written with ShardWriter, then read back through the full training path
(decode image, sample the masks, decode their RLEs, resize, normalise, pad, collate) with a
DataLoader in-process and with each number of workers. Every process uses one thread, so N workers
can use at most N cores. MB/s counts shard bytes (image + JSON).

The machine's own ceiling is measured first: the speed-up of pure Python compute in 2 processes over
1. A read speed-up can only be judged against it (a VM with 2 vCPUs may give one core's worth).
"""

from __future__ import annotations

import argparse
import gc
import io
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from sam_engine.data.loader import make_dataset, make_loader
from sam_engine.data.records import make_annotations, make_record
from sam_engine.data.shards import ShardWriter, read_manifest


def _spin(iterations: int) -> None:
    total = 0
    for i in range(iterations):
        total += i


def cpu_speedup(processes: int = 2, iterations: int = 10_000_000) -> float:
    """Wall-time speed-up of ``processes`` processes of pure compute over one: the machine's ceiling."""

    def wall(count: int) -> float:
        start = time.perf_counter()
        workers = [multiprocessing.Process(target=_spin, args=(iterations,)) for _ in range(count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return (time.perf_counter() - start) / count

    return wall(1) / wall(processes)


def random_masks(num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """num x size x size bool: random filled ellipses and polygons (cv2 drawing, data generation only)."""
    masks = np.zeros((num, size, size), np.uint8)
    for mask in masks:
        center = rng.integers(0, size, 2)
        if rng.random() < 0.5:
            axes = rng.integers(size // 40, size // 4, 2)
            cv2.ellipse(mask, center.tolist(), axes.tolist(), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            points = center + rng.normal(0, size / 10, (int(rng.integers(3, 9)), 2))
            cv2.fillPoly(mask, [np.clip(points, 0, size - 1).astype(np.int32)], 1)
    return masks.astype(bool)


def random_jpeg(size: int, masks: np.ndarray, rng: np.random.Generator) -> bytes:
    """A JPEG whose regions follow the masks (flat colours over a gradient), so it compresses like a photo."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    background = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.float32(128)), axis=-1)
    colours = rng.uniform(0, 255, (len(masks), 3)).astype(np.float32)
    painted = np.einsum("nhw,nc->hwc", masks[:, ::4, ::4].astype(np.float32), colours)  # quarter resolution
    painted = cv2.resize(painted, (size, size), interpolation=cv2.INTER_NEAREST).clip(0, 255)
    pixels = 0.5 * background + 0.5 * painted
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generate(num_images: int, size: int, num_masks: int, seed: int) -> tuple[list, float]:
    """[(key, jpeg, record)] and the seconds spent annotating (make_annotations) alone."""
    rng = np.random.default_rng(seed)
    samples, annotate_seconds = [], 0.0
    for i in range(num_images):
        masks = random_masks(num_masks, size, rng)
        jpeg = random_jpeg(size, masks, rng)
        start = time.perf_counter()
        annotations = make_annotations(masks, provenance={"source": "auto", "stage": 3})
        annotate_seconds += time.perf_counter() - start
        samples.append((f"sa_{i}", jpeg, make_record(i, size, size, f"sa_{i}.jpg", annotations)))
    return samples, annotate_seconds


def write(samples: list, directory: Path, shard_size: int) -> float:
    start = time.perf_counter()
    with ShardWriter(directory, max_samples=shard_size) as writer:
        for key, jpeg, record in samples:
            writer.write(key, jpeg, "jpg", record)
    return time.perf_counter() - start


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def read(
    directory: Path, num_workers: int, img_size: int, batch_size: int, num_masks: int
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all processes) of one pass through the training pipeline."""
    dataset = make_dataset(directory, img_size=img_size, batch_size=batch_size, max_masks_per_image=num_masks)
    loader = make_loader(dataset, num_workers=num_workers)
    cpu, start = _cpu_seconds(), time.perf_counter()
    count = sum(len(batch) for batch in loader)
    seconds = time.perf_counter() - start
    del loader  # joins the persistent workers, so that their CPU time is counted
    gc.collect()
    if count != dataset.num_samples:
        raise RuntimeError(f"read {count} samples of {dataset.num_samples}")
    return seconds, _cpu_seconds() - cpu


def print_table(args, megabytes: float, ceiling: float, rows: list, reads: dict) -> None:
    print(
        f"{args.images} images of {args.image_size}x{args.image_size} px, {args.masks} masks each, "
        f"{megabytes:.1f} MB of shards; model input {args.img_size}, batch {args.batch_size}, "
        f"1 thread per process, best of {args.repeats} passes"
    )
    print(f"machine ceiling: 2 processes of pure compute run {ceiling:.2f}x faster than 1")
    print(f"{'stage':<30}{'seconds':>9}{'samples/s':>11}{'MB/s':>9}{'CPU ms/sample':>15}")
    for name, seconds, cpu in rows:
        cpu_column = "" if cpu is None else f"{1000 * cpu / args.images:>15.0f}"
        print(
            f"{name:<30}{seconds:>9.2f}{args.images / seconds:>11.1f}{megabytes / seconds:>9.1f}{cpu_column}"
        )
    first = args.workers[0]
    for w in args.workers[1:]:
        print(
            f"speed-up of {w} workers over {first}: {reads[first][0] / reads[w][0]:.2f}x "
            f"(over in-process: {reads[0][0] / reads[w][0]:.2f}x; machine ceiling {ceiling:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48, help="number of synthetic images")
    parser.add_argument("--image-size", type=int, default=1024, help="side of the square images")
    parser.add_argument("--masks", type=int, default=64, help="masks per image (all of them are read)")
    parser.add_argument("--img-size", type=int, default=1024, help="model input size S")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=16, help="samples per shard")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts")
    parser.add_argument("--repeats", type=int, default=2, help="passes per reading setup; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ceiling = cpu_speedup()

    samples, annotate_seconds = generate(args.images, args.image_size, args.masks, args.seed)
    directory = Path(tempfile.mkdtemp(prefix="sam_engine_bench_"))
    try:
        write_seconds = write(samples, directory, args.shard_size)
        megabytes = sum(entry["bytes"] for entry in read_manifest(directory)["shards"].values()) / 2**20
        reads = {
            w: min(
                read(directory, w, args.img_size, args.batch_size, args.masks) for _ in range(args.repeats)
            )
            for w in [0, *args.workers]
        }
    finally:
        shutil.rmtree(directory)
    rows = [
        ("annotate (make_annotations)", annotate_seconds, None),
        ("write (ShardWriter)", write_seconds, None),
    ]
    rows += [(f"read, {w} workers" if w else "read, in-process", *result) for w, result in reads.items()]
    print_table(args, megabytes, ceiling, rows, reads)


if __name__ == "__main__":
    main()
