"""Time a training step with SAM's 11 simulated rounds against a single round, on the same batch.

    python benchmarks/train_step.py                          # tiny at 128 px and vit_b at 1024 px, CPU
    python benchmarks/train_step.py --variants tiny --device cuda --precision bf16

For each variant: one batch of synthetic scenes with ``--masks`` masks in all; a step is encoder
forward, the simulated decoder passes with their losses, and the backward pass. Also timed: the prompt
sampling of one step for those masks (round-1 points and noisy boxes, one error click). Steps are
timed after one warm-up step; the ratio 11-round / 1-round is the figure to watch.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds

from sam_engine.data.synthetic.scenes import SceneSpec, generate_scene
from sam_engine.model import build_sam
from sam_engine.train.interactive import simulate_training
from sam_engine.train.prompts import mask_boxes, noisy_boxes, sample_error_clicks, sample_points_in_masks
from sam_engine.train.settings import SimulationConfig


def synthetic_batch(size: int, num_images: int, num_masks: int, device: torch.device):
    """Images B x 3 x S x S (0..255), masks N x S x S and their image index N, from synthetic scenes."""
    scenes = [generate_scene(0, i, SceneSpec(image_size=size)) for i in range(num_images)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in scenes]).float()
    per_image = -(-num_masks // num_images)
    masks = torch.cat([torch.from_numpy(s.masks[:per_image]) for s in scenes])[:num_masks]
    counts = [min(per_image, len(s.masks)) for s in scenes]
    image_index = torch.repeat_interleave(torch.arange(num_images), torch.tensor(counts))[: len(masks)]
    return images.to(device), masks.to(device), image_index.to(device)


def bench(variant: str, args, device: torch.device) -> dict:
    model = build_sam(variant).to(device).train()
    size = model.img_size
    images, masks, image_index = synthetic_batch(size, args.images, args.masks, device)
    images = model.preprocess(images)
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step(config: SimulationConfig):
        def run():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                embeddings = model.encode_images(images)
                result = simulate_training(model, embeddings, image_index, masks, config, generator)
            (result.total / result.num_masks.clamp(min=1)).backward()
            model.zero_grad(set_to_none=True)
        return run

    def sampling():
        sample_points_in_masks(masks, generator)
        noisy_boxes(mask_boxes(masks), generator, image_size=(size, size))
        sample_error_clicks(masks.roll(shifts=size // 50, dims=-1), masks, generator)

    eleven = median_seconds(step(SimulationConfig()), device, args.runs)
    one = median_seconds(step(SimulationConfig(num_click_rounds=0)), device, args.runs)
    prompts = median_seconds(sampling, device, max(args.runs, 3))
    return dict(variant=variant, size=size, masks=len(masks), eleven=eleven, one=one, prompts=prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--images", type=int, default=1, help="images per batch")
    parser.add_argument("--masks", type=int, default=64, help="masks per batch (SAM: 64 per GPU)")
    parser.add_argument("--runs", type=int, default=1, help="timed steps after the warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device} ({torch.get_num_threads()} threads), {args.precision}, {args.images} image(s), "
          f"median of {args.runs} step(s) after a warm-up")
    print(f"{'variant':8} {'input':>9} {'masks':>6} {'11 rounds (s)':>14} {'images/s':>9} {'1 round (s)':>12} "
          f"{'ratio':>6} {'prompt sampling (ms)':>21}")
    for variant in args.variants:
        r = bench(variant, args, device)
        print(f"{r['variant']:8} {r['size']:>4}x{r['size']:<4} {r['masks']:>6} {r['eleven']:>14.3f} "
              f"{args.images / r['eleven']:>9.2f} {r['one']:>12.3f} {r['eleven'] / r['one']:>6.2f} "
              f"{1000 * r['prompts']:>21.1f}", flush=True)


if __name__ == "__main__":
    main()
