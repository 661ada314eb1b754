"""Time our image encoder against the official one, same weights, same input, in one run.

    python benchmarks/encoder.py                       # vit_b and tiny on CPU, 3 timed runs each
    python benchmarks/encoder.py --variants vit_b --runs 5 --device cuda --precision bf16

Runs alternate between the two implementations so that machine noise hits both alike; the median
is reported with the ratio official / ours (> 1 means ours is faster) and the largest difference of
the outputs.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import seconds

from sam_engine.model import build_sam
from sam_engine.model.official import official_twin


def bench_variant(variant: str, runs: int, device: torch.device, precision: str) -> dict:
    ours = build_sam(variant).to(device)
    official = official_twin(ours)
    size = ours.img_size
    image = torch.randn(1, 3, size, size, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        out_ours, out_official = ours.image_encoder(image), official.image_encoder(image)  # warm-up
        max_diff = (out_ours.float() - out_official.float()).abs().max().item()
        times = {"ours": [], "official": []}
        for _ in range(runs):
            times["ours"].append(seconds(lambda: ours.image_encoder(image), device))
            times["official"].append(seconds(lambda: official.image_encoder(image), device))
    ours_s, official_s = statistics.median(times["ours"]), statistics.median(times["official"])
    return dict(variant=variant, size=size, ours=ours_s, official=official_s, ratio=official_s / ours_s, diff=max_diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["vit_b", "tiny"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device} ({torch.get_num_threads()} threads), {args.precision}, batch 1, median of {args.runs} runs")
    print(f"{'variant':8} {'input':>9} {'ours (s)':>10} {'official (s)':>13} {'official/ours':>14} {'max |diff|':>11}")
    for variant in args.variants:
        r = bench_variant(variant, args.runs, device, args.precision)
        print(
            f"{r['variant']:8} {r['size']:>4}x{r['size']:<4} {r['ours']:>10.3f} {r['official']:>13.3f} "
            f"{r['ratio']:>13.2f}x {r['diff']:>11.2e}"
        )


if __name__ == "__main__":
    main()
