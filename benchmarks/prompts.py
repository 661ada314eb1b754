"""Time the prompt sampling of one simulated-interaction step (measures only; asserts nothing).

    python benchmarks/prompts.py [--device cuda] [--num-masks 64] [--sizes 256 1024]

Per size it times, for a batch of masks: the round-1 prompts (a uniform point and a noisy box per
mask), one training error click, one evaluation click (centre of the largest error region, two
distance transforms) and the 1-point evaluation click (farthest from the boundary of the whole
mask, the distance transform's worst case: its cost grows with the largest mask's inner radius).
The masks are ellipses of varied sizes; the "prediction" is each ellipse shifted by 1% of the size.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds

from sam_engine.train.prompts import (
    farthest_from_boundary_points,
    largest_error_region_clicks,
    mask_boxes,
    noisy_boxes,
    sample_error_clicks,
    sample_points_in_masks,
)


def ellipses(num_masks: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """num_masks x size x size bool: ellipses with radii from 2% to 40% of the size."""
    device = generator.device
    coords = torch.arange(size, device=device, dtype=torch.float32)
    centres = (0.2 + 0.6 * torch.rand(num_masks, 2, 1, 1, generator=generator, device=device)) * size
    radii = (0.02 + 0.38 * torch.rand(num_masks, 2, 1, 1, generator=generator, device=device)) * size
    dx = (coords.view(1, 1, size) - centres[:, 0]) / radii[:, 0]
    dy = (coords.view(1, size, 1) - centres[:, 1]) / radii[:, 1]
    return dx**2 + dy**2 < 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-masks", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, {args.num_masks} masks")

    for size in args.sizes:
        gt = ellipses(args.num_masks, size, generator)
        pred = torch.roll(gt, shifts=(size // 100, size // 100), dims=(1, 2))
        steps = {
            "round-1 point + noisy box": lambda gt=gt, size=size: (
                sample_points_in_masks(gt, generator),
                noisy_boxes(mask_boxes(gt), generator, image_size=(size, size)),
            ),
            "error click (training)": lambda gt=gt, pred=pred: sample_error_clicks(pred, gt, generator),
            "largest-error-region click": lambda gt=gt, pred=pred: largest_error_region_clicks(pred, gt),
            "farthest-from-boundary click": lambda gt=gt: farthest_from_boundary_points(gt),
        }
        for name, step in steps.items():
            print(f"{size:>5} x {size:<5} {name:<30} {median_seconds(step, device, args.repeats) * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
