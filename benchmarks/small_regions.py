"""Time the batched small-region removal against the official per-mask loop (the same masks out).

    python benchmarks/small_regions.py [--masks 200] [--size 512] [--min-area 100]

Masks: smooth random blobs with salt-and-pepper holes and islands (tests/test_small_regions.blobs). The
official post-processing (``segment_anything.utils.amg.remove_small_regions``, holes then islands) runs
one mask at a time; ours (``sam_engine.amg.small_regions``) labels stacked masks in a few OpenCV calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_small_regions import blobs, official  # noqa: E402

from sam_engine.amg.small_regions import remove_small_regions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--min-area", type=float, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    masks = blobs(np.random.default_rng(3), args.masks, args.size, args.size)
    expected, expected_changed = official(masks, args.min_area)
    got, got_changed = remove_small_regions(masks, args.min_area)
    identical = np.array_equal(got, expected) and np.array_equal(got_changed, expected_changed)
    cpu = torch.device("cpu")
    theirs = median_seconds(lambda: official(masks, args.min_area), cpu, args.runs)
    ours = median_seconds(lambda: remove_small_regions(masks, args.min_area), cpu, args.runs)
    print(f"remove_small_regions, {args.masks} x {args.size} x {args.size}, min_area={args.min_area:g}, "
          f"{int(expected_changed.sum())} changed, identical: {identical}")
    print(f"official loop {theirs:.3f} s, batched {ours:.3f} s: {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
