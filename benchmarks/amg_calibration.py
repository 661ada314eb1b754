"""Is the IoU head calibrated, and which automatic-mask filters does it justify? Measured on unseen scenes.

    python benchmarks/amg_calibration.py outputs/engine/final/export
    python benchmarks/amg_calibration.py EXPORT --images 32 --points-per-side 16 --json calibration.json

Stage 3 keeps an automatic mask when its predicted IoU passes ``pred_iou_thresh`` and its stability
score passes ``stability_score_thresh`` (SAM: 0.88 / 0.95, chosen for ViT-H). Whether other thresholds
suit another model is a question of calibration: does a predicted IoU of 0.8 mean a true IoU of 0.8?
Meta's ``SamAutomaticMaskGenerator`` runs on each export (rebuilt with the official classes) over
synthetic scenes no training saw (the embedded dataset's scene settings, ``--seed`` distinct from the
training sets); each mask's true IoU is its best IoU with a ground-truth mask (whole, part or sub-part)
of its image. Printed:

- reliability: per predicted-IoU bin, the masks, their mean true IoU and the fraction above IoU 0.9;
- per (pred_iou_thresh, stability_score_thresh) on a grid, each a run of the official generator with
  those filters: masks per image and precision at IoU 0.9 (fraction of kept masks with true IoU > 0.9,
  SAM's paper: 94%);
- the filters the calibration justifies: of the grid's settings where at least ``--min-precision`` of
  the masks are right, the one that keeps the most masks per image; "none" when no setting gets there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from official_quality import embedded_scene_spec

from sam_engine.data.synthetic.scenes import generate_scene
from sam_engine.model.official import load_official_export

IOU_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.88)
STABILITY_THRESHOLDS = (0.0, 0.8, 0.95)
RELIABILITY_BINS = np.linspace(0.0, 1.0, 6)  # predicted IoU in [0, 0.2), ..., [0.8, 1.0]
PRECISE = 0.9


def true_ious(records: list[dict], gt: torch.Tensor) -> np.ndarray:
    """Best IoU of each generated mask with a ground-truth mask of the image: N float64 (0 for no truth)."""
    if not records or len(gt) == 0:
        return np.zeros(len(records))
    pred = torch.from_numpy(np.stack([r["segmentation"] for r in records])).flatten(1).float()  # N x HW
    truth = gt.flatten(1).float()  # G x HW
    inter = pred @ truth.T  # N x G
    union = pred.sum(1, keepdim=True) + truth.sum(1) - inter
    return (inter / union.clamp(min=1)).amax(dim=1).double().numpy()


def reliability(predicted: np.ndarray, true: np.ndarray) -> list[dict]:
    """Per bin of predicted IoU: masks, mean predicted and true IoU, fraction with true IoU > 0.9."""
    bins = np.clip(np.digitize(predicted, RELIABILITY_BINS[1:-1]), 0, len(RELIABILITY_BINS) - 2)
    rows = []
    for b in range(len(RELIABILITY_BINS) - 1):
        chosen = bins == b
        count = int(chosen.sum())
        rows.append({"predicted_iou": [round(float(RELIABILITY_BINS[b]), 2), round(float(RELIABILITY_BINS[b + 1]), 2)],
                     "masks": count,
                     "mean_predicted": round(float(predicted[chosen].mean()), 4) if count else None,
                     "mean_true": round(float(true[chosen].mean()), 4) if count else None,
                     "precision_iou90": round(float((true[chosen] > PRECISE).mean()), 4) if count else None})
    return rows


def justified_setting(grid: list[dict], min_precision: float) -> dict | None:
    """Of the grid's rows with precision at IoU 0.9 >= ``min_precision``, the one keeping the most masks per image."""
    precise_enough = [row for row in grid if (row["precision_iou90"] or 0.0) >= min_precision]
    return max(precise_enough, key=lambda row: row["masks_per_image"], default=None)


@torch.no_grad()
def calibrate(export: str, num_images: int, seed: int, points_per_side: int, min_precision: float) -> dict:
    from segment_anything import SamAutomaticMaskGenerator

    model = load_official_export(export).eval()
    spec = embedded_scene_spec()
    scenes = [generate_scene(seed, index, spec) for index in range(num_images)]
    truths = [torch.from_numpy(scene.masks) for scene in scenes]
    grid = []
    for iou_thresh in IOU_THRESHOLDS:
        for stability_thresh in STABILITY_THRESHOLDS:
            generator = SamAutomaticMaskGenerator(model, points_per_side=points_per_side,
                                                  pred_iou_thresh=iou_thresh, stability_score_thresh=stability_thresh)
            predicted, true = [], []
            for scene, gt in zip(scenes, truths, strict=True):
                records = generator.generate(scene.image)
                predicted.extend(r["predicted_iou"] for r in records)
                true.append(true_ious(records, gt))
            true_all = np.concatenate(true) if true else np.zeros(0)
            grid.append({"pred_iou_thresh": iou_thresh, "stability_score_thresh": stability_thresh,
                         "masks_per_image": round(len(true_all) / num_images, 2),
                         "precision_iou90": round(float((true_all > PRECISE).mean()), 4) if len(true_all) else None,
                         "mean_true_iou": round(float(true_all.mean()), 4) if len(true_all) else None})
            if iou_thresh == 0.0 and stability_thresh == 0.0:  # every mask the generator proposes
                table = reliability(np.asarray(predicted, dtype=np.float64), true_all)
    return {"export": export, "images": num_images, "seed": seed, "points_per_side": points_per_side,
            "min_precision": min_precision, "reliability": table, "grid": grid,
            "justified": justified_setting(grid, min_precision)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", help="export directories (sam.pth + sam_config.json)")
    parser.add_argument("--images", type=int, default=16, help="unseen synthetic scenes")
    parser.add_argument("--seed", type=int, default=1000, help="scene seed (training uses 0, 1 and 10-14)")
    parser.add_argument("--points-per-side", type=int, default=16, help="grid side (the engine: 16)")
    parser.add_argument("--min-precision", type=float, default=0.5, help="precision at IoU 0.9 a setting must reach")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    results = []
    for export in args.exports:
        result = calibrate(export, args.images, args.seed, args.points_per_side, args.min_precision)
        results.append(result)
        print(f"{export}: {args.images} scenes, {args.points_per_side}x{args.points_per_side} points")
        print("  predicted IoU | masks | mean predicted | mean true | true IoU > 0.9")
        for row in result["reliability"]:
            low, high = row["predicted_iou"]
            cells = ("-", "-", "-") if not row["masks"] else (
                f"{row['mean_predicted']:.3f}", f"{row['mean_true']:.3f}", f"{row['precision_iou90']:.3f}")
            print(f"  {low:.1f}-{high:.1f}       | {row['masks']:5d} | {cells[0]:>14} | {cells[1]:>9} | {cells[2]}")
        print("  pred_iou_thresh | stability_score_thresh | masks/image | precision@0.9 | mean true IoU")
        for row in result["grid"]:
            precision = "-" if row["precision_iou90"] is None else f"{row['precision_iou90']:.3f}"
            mean_true = "-" if row["mean_true_iou"] is None else f"{row['mean_true_iou']:.3f}"
            print(f"  {row['pred_iou_thresh']:15.2f} | {row['stability_score_thresh']:22.2f} | "
                  f"{row['masks_per_image']:11.1f} | {precision:>13} | {mean_true}")
        best = result["justified"]
        print(f"  justified (precision@0.9 >= {args.min_precision}): " + (
            "none of the grid's settings" if best is None else
            f"pred_iou_thresh {best['pred_iou_thresh']} / stability_score_thresh {best['stability_score_thresh']}, "
            f"{best['masks_per_image']} masks/image at precision {best['precision_iou90']}"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
