"""Time our automatic mask generator against the official one: same weights, same image, one run.

    python benchmarks/amg.py                                   # tiny @ 256 px and vit_b @ 1024 px, CPU
    python benchmarks/amg.py --cases vit_h --device cuda --runs 5

Each (case, implementation) runs in a child process of its own, so its peak resident memory is its own;
the children alternate run by run between ours and the official (noise hits both alike). Reported: median
seconds per image, the ratio official / ours (> 1: ours is faster), images and masks per second (ours /
official), masks found by each, whether the mask sets are identical (same count, every mask matched at
IoU >= 0.99), and each child's peak RSS.

Weights: no checkpoint is downloaded. Random weights give one image-wide blob per click, which no filter
lets through, and a generator that drops everything early is no benchmark; so each case's model is trained
first, for a few minutes at most, to answer clicks with disks (tests/model_helpers.train_disk_model; vit_b
and vit_h train their decoder only, on a random encoder) and exported under --work-dir, reused by later
runs. Thresholds are fitted to each model as in the parity tests (tests/model_helpers.amg_thresholds: 30%
of the masks pass the IoU filter, half of those the stability filter) and printed with the masks found.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
from pathlib import Path
from queue import Empty

import numpy as np
import torch
from timing import seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CASES = {
    name: dict(variant=name, size=size, train_steps=steps, train_clicks=clicks)
    for name, size, steps, clicks in (("tiny", 256, 200, 32), ("vit_b", 1024, 500, 16), ("vit_h", 1024, 500, 16))
}


def case_model(name: str, export_dir: Path) -> dict:
    """Export the case's model once to ``export_dir`` (both children load identical weights); returns the
    generator's thresholds, fitted to it (tests/model_helpers.amg_thresholds)."""
    from model_helpers import amg_thresholds, train_disk_model

    from sam_engine.model import export_sam, load_export

    case = CASES[name]
    if not (export_dir / "sam.pth").exists():
        torch.manual_seed(0)
        model = train_disk_model(case["variant"], steps=case["train_steps"], clicks=case["train_clicks"])
        export_sam(model, export_dir)
    return amg_thresholds(load_export(export_dir), case_image(case["size"]))


def case_image(size: int) -> np.ndarray:
    """A synthetic scene of ``size`` x ``size`` pixels."""
    from sam_engine.data.synthetic.scenes import SceneSpec, generate_scene

    return generate_scene(0, 0, SceneSpec(image_size=size)).image


def child(name: str, implementation: str, export_dir: str, options: dict, device: str, runs: int, threads: int,
          queue) -> None:
    """Load the model, warm up, time ``runs`` generations; put times, masks and peak RSS on ``queue``."""
    from sam_engine.amg import SamAutomaticMaskGenerator
    from sam_engine.model import load_export
    from sam_engine.model.official import load_official_export

    torch.set_num_threads(threads)
    case = CASES[name]
    image = case_image(case["size"])
    if implementation == "ours":
        generator = SamAutomaticMaskGenerator(load_export(export_dir).to(device), precision="fp32", **options)
    else:
        from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator

        model = load_official_export(export_dir).to(device)
        generator = OfficialGenerator(model, output_mode="coco_rle", **options)
    with torch.inference_mode():
        masks = generator.generate(image)
        times = [seconds(lambda: generator.generate(image), torch.device(device)) for _ in range(runs)]
    peak_mib = peak_rss_mib()
    segmentations = [{"size": m["segmentation"]["size"], "counts": m["segmentation"]["counts"]} for m in masks]
    queue.put(dict(times=times, peak_mib=peak_mib, masks=segmentations))


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: ``VmHWM``, which starts afresh at exec. (``ru_maxrss`` does
    not: a spawned child would report its parent's peak at fork time.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_child(*args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(*args, queue))
    process.start()
    while True:  # a child that dies (an error, out of memory) must not leave the parent waiting forever
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"benchmark child {args[:2]} died with exit code {process.exitcode}") from None
    process.join()
    return result


def same_masks(ours: list[dict], official: list[dict]) -> bool:
    from pycocotools import mask as mask_utils

    if len(ours) != len(official):
        return False
    if not ours:
        return True
    for rle in ours + official:
        rle["counts"] = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    ious = mask_utils.iou(ours, official, [0] * len(official))
    best = ious.argmax(axis=0)
    return bool(ious[best, np.arange(len(official))].min() >= 0.99 and len(set(best.tolist())) == len(official))


def bench_case(name: str, args) -> dict:
    export_dir = Path(args.work_dir) / name
    options = case_model(name, export_dir)
    results = {"ours": [], "official": []}
    for _ in range(args.repeats):  # alternate: the machine's noise hits both alike
        for implementation in ("ours", "official"):
            results[implementation].append(
                run_child(name, implementation, str(export_dir), options, args.device, args.runs, args.threads)
            )
    ours_s = statistics.median(t for r in results["ours"] for t in r["times"])
    official_s = statistics.median(t for r in results["official"] for t in r["times"])
    ours_masks, official_masks = results["ours"][0]["masks"], results["official"][0]["masks"]
    return dict(
        case=name, size=CASES[name]["size"], options=options,
        ours_s=ours_s, official_s=official_s, ratio=official_s / ours_s,
        ours_masks=len(ours_masks), official_masks=len(official_masks),
        identical=same_masks(ours_masks, official_masks),
        ours_peak_mib=max(r["peak_mib"] for r in results["ours"]),
        official_peak_mib=max(r["peak_mib"] for r in results["official"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["tiny", "vit_b"], choices=sorted(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=2, help="timed generations per child")
    parser.add_argument("--repeats", type=int, default=1, help="children per implementation (alternating)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work-dir", default="outputs/benchmarks/amg", help="where the case models are exported")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = [bench_case(name, args) for name in args.cases]
    print(f"device {args.device}, {args.threads} threads, median of {args.runs * args.repeats} runs per implementation")
    print(f"{'case':8}{'px':>6}{'ours s':>9}{'official s':>12}{'ratio':>7}{'images/s':>17}{'masks/s':>17}"
          f"{'masks':>13}{'same':>6}{'peak MiB':>18}")
    for r in rows:
        print(f"{r['case']}: {r['options']}")
    for r in rows:
        images_per_s = f"{1 / r['ours_s']:.2f}/{1 / r['official_s']:.2f}"
        masks_per_s = f"{r['ours_masks'] / r['ours_s']:.0f}/{r['official_masks'] / r['official_s']:.0f}"
        print(f"{r['case']:8}{r['size']:>6}{r['ours_s']:>9.3f}{r['official_s']:>12.3f}{r['ratio']:>7.2f}"
              f"{images_per_s:>17}{masks_per_s:>17}{r['ours_masks']:>6}/{r['official_masks']:<6}"
              f"{str(r['identical']):>6}{r['ours_peak_mib']:>9.0f}/{r['official_peak_mib']:<8.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
