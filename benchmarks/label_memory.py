"""Does pseudo-labelling stream? Label N images in-process and watch the resident memory.

    python benchmarks/label_memory.py                          # 500 synthetic 256-px scenes, CPU
    python benchmarks/label_memory.py --images 2000 --device cuda --points-per-side 32
    python benchmarks/label_memory.py --export outputs/benchmarks/label_memory/disk   # reuse a model

The input is a synthetic shard set (256-px scenes with ground truth, shards of ``--shard-size``), labelled
with the library's :class:`~sam_engine.label.labeller.Labeller` exactly as ``python -m sam_engine.label`` does
(one output shard per input shard, the summary written after each, quality against the ground truth).
The process's resident set size (``/proc/self/statm``) is read after every ``--every`` images. A labeller
that streams holds one image and its masks at a time: its RSS levels off once the first images have warmed
the allocators, so the growth from image 100 to image N should be a few MiB, not a slope.

Weights: by default the tiny model trained for a few seconds to answer clicks with disks
(tests/model_helpers.train_disk_model), with the generator's thresholds fitted to it as in the tests
(tests/model_helpers.amg_thresholds); it is exported once to ``--export`` and reused. ``--random`` uses
random tiny weights instead, with both thresholds at 0 so every mask reaches the records.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mib() -> float:
    """The resident set size of this process now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MIB


def ensure_model(export: Path, random_weights: bool) -> Path:
    """An export directory of the benchmark's model (trained or random once, then reused)."""
    from sam_engine.model import build_sam, export_sam

    if not (export / "sam.pth").exists():
        torch.manual_seed(0)
        if random_weights:
            model = build_sam("tiny")
        else:
            from model_helpers import train_disk_model

            print("training the disk model (once; reused from --export next time)...", flush=True)
            model = train_disk_model()
        export_sam(model, export)
    return export


def fitted_thresholds(model, size: int) -> dict:
    """The generator's thresholds fitted to the disk model on a scene (tests/model_helpers.amg_thresholds):
    a model trained for seconds predicts IoUs on a plateau of its own, which SAM's 0.88 may be above."""
    from model_helpers import amg_thresholds

    from sam_engine.data.synthetic.scenes import SceneSpec, generate_scene

    return amg_thresholds(model, generate_scene(0, 0, SceneSpec(image_size=size)).image)


def run(args, work: Path) -> dict:
    from sam_engine.amg import SamAutomaticMaskGenerator
    from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset
    from sam_engine.label.inputs import list_input_shards
    from sam_engine.label.labeller import Labeller, LabelSummary, model_id
    from sam_engine.model import load_export

    torch.set_num_threads(args.threads)
    export = ensure_model(Path(args.export) if args.export else work / "model", args.random)
    start = time.perf_counter()
    source = ensure_synthetic_dataset(work / "input", num_images=args.images, seed=0, image_size=args.size,
                                      shard_size=args.shard_size)
    print(f"{args.images} input scenes of {args.size} px ready in {time.perf_counter() - start:.0f} s", flush=True)

    model = load_export(export).to(args.device).eval()
    thresholds = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0) if args.random else fitted_thresholds(
        model, args.size)
    generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **thresholds)
    provenance = {"source": "auto", "stage": 3, "model": model_id(export)}
    samples: list[tuple[int, float, float]] = [(0, rss_mib(), 0.0)]  # (images, RSS MiB, seconds)
    clock = time.perf_counter()

    class SampledLabeller(Labeller):
        def label_sample(self, sample, writer, summary):
            super().label_sample(sample, writer, summary)
            if summary.images % args.every == 0:
                samples.append((summary.images, rss_mib(), time.perf_counter() - clock))

    labeller = SampledLabeller(generator, work / "output", provenance, max_short_side=1500)
    shards = list_input_shards(source)
    summary = labeller.run(shards, LabelSummary(0, 1, [s.name for s in shards]), progress=False)
    seconds = time.perf_counter() - clock
    if samples[-1][0] != summary.images:
        samples.append((summary.images, rss_mib(), seconds))
    result = summary.to_dict()
    return dict(samples=samples, images=summary.images, masks=summary.masks, seconds=seconds,
                peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                skipped=len(result["skipped_images"]), quality=result["quality"])


def report(args, r: dict) -> None:
    samples = r["samples"]
    print(f"\ndevice {args.device}, {args.threads} threads, {args.size} px, points_per_side {args.points_per_side}, "
          f"{'random weights, thresholds 0' if args.random else 'disk model'}")
    print(f"{'images':>7}{'RSS MiB':>10}{'seconds':>10}")
    for images, mib, secs in samples:
        print(f"{images:>7}{mib:>10.1f}{secs:>10.1f}")
    at_100 = next(((n, mib) for n, mib, _ in samples if n >= 100), None)
    last_n, last_mib, _ = samples[-1]
    if at_100 is not None and last_n > at_100[0]:
        growth = last_mib - at_100[1]
        per_1000 = growth / (last_n - at_100[0]) * 1000
        after = [mib for n, mib, _ in samples if n >= at_100[0]]
        print(f"RSS growth from image {at_100[0]} to image {last_n}: {growth:+.1f} MiB "
              f"({per_1000:+.1f} MiB per 1000 images); range over those samples {min(after):.1f} to "
              f"{max(after):.1f} MiB")
    print(f"peak RSS {r['peak_mib']:.0f} MiB; {r['images']} images in {r['seconds']:.0f} s: "
          f"{r['images'] / r['seconds']:.2f} images/s, {r['masks'] / max(r['images'], 1):.1f} masks/image, "
          f"{r['skipped']} skipped")
    q = r["quality"]
    if q and q["precision_iou50"] is not None:
        print(f"quality vs the scenes' ground truth: precision@0.5 {q['precision_iou50']:.3f}, "
              f"recall@0.5 {q['recall_iou50']:.3f} (a disk model is not meant to be good)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic scenes, pixels")
    parser.add_argument("--every", type=int, default=25, help="read the RSS after every this many images")
    parser.add_argument("--shard-size", type=int, default=100, help="images per input shard")
    parser.add_argument("--points-per-side", type=int, default=8, help="clicks per side of the grid (SAM: 32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--random", action="store_true", help="random tiny weights, thresholds 0")
    parser.add_argument("--export", help="the model's export directory (created if missing, then reused)")
    parser.add_argument("--work-dir", help="keep the input and output shards here (default: a temporary dir)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.work_dir:
        r = run(args, Path(args.work_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="label_memory-") as work:
            r = run(args, Path(work))
    report(args, r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
