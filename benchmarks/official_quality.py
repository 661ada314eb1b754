"""A model's quality through the official ``segment_anything`` predictor, on scenes no training saw.

    python benchmarks/official_quality.py outputs/engine/stage1/train/export
    python benchmarks/official_quality.py EXPORT_A EXPORT_B --images 64 --seed 1000 --max-clicks 20

Each export (``sam.pth`` + ``sam_config.json``) is rebuilt with Meta's classes and prompted through
``SamPredictor.predict_torch``, all the masks of an image at once. Per ground-truth mask of the
synthetic scenes (the embedded dataset's scene settings, ``--seed`` distinct from every training set):

- 1 click: at the pixel farthest from the boundary, three outputs, the highest predicted IoU kept
  (SAM's 1-point protocol); also the best of the three, what a perfect IoU head would keep;
- box: the tight box, the single output;
- k clicks: each next click at the centre of the largest error region (RITM/SAM), positive or
  negative, with the previous low-res logits as mask prompt, single output; mIoU after 5 clicks and
  NoC90 (clicks to IoU >= 0.9, ``--max-clicks`` when never reached).

Every mIoU comes with a 95% confidence interval (normal approximation over images: masks of one
image are not independent). ``--json`` writes the figures. Printed first, references on the same
scenes: the box prior without any model (the ellipse inscribed in each tight box, the floor a box prompt
should clear); the 1-click ceilings of a perfect segmenter that must still pick one of the nested
masks (whole, part, sub-part) holding the click: the smallest of them, or the largest; and the masks
drawn on the tiny model's image-embedding grid and on one twice as fine, the ceiling of a model that
outlines objects to the nearest embedding cell and no finer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from sam_engine.data.synthetic.scenes import SceneSpec, generate_scene
from sam_engine.metrics.interval import ImageMeanInterval
from sam_engine.model.official import load_official_export
from sam_engine.train.prompts import PADDING, farthest_from_boundary_points, largest_error_region_clicks, mask_boxes

CLICKS_FOR_MIOU = 5


def packaged_config(group: str, name: str) -> dict:
    """``sam_engine/conf/<group>/<name>.yaml``, as shipped in the package."""
    from importlib import resources

    return yaml.safe_load((resources.files("sam_engine.conf") / group / f"{name}.yaml").read_text())


def embedded_scene_spec() -> SceneSpec:
    """The scene settings of the embedded training data (``sam_engine/conf/data/synthetic.yaml``)."""
    config = packaged_config("data", "synthetic")
    scene = config["synthetic"][0]["scene"]
    return SceneSpec(image_size=config["synthetic"][0]["image_size"], min_objects=scene["min_objects"],
                     max_objects=scene["max_objects"], object_area=tuple(scene["object_area"]),
                     min_mask_area=scene["min_mask_area"])


def iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """... x H x W bool each, broadcast (N x 3 x H x W against N x 1 x H x W) -> ... IoUs."""
    inter = (pred & gt).flatten(-2).sum(-1)
    union = (pred | gt).flatten(-2).sum(-1)
    return inter / union.clamp(min=1)


def score_image(predictor, image: np.ndarray, gt: torch.Tensor, max_clicks: int) -> dict[str, torch.Tensor]:
    """Per-mask IoUs of one image: ``1pt`` (the output of highest predicted IoU), ``1pt_best`` (the best of the
    three: what a perfect IoU head would pick), ``box``, ``5pt`` (N each) and ``noc90`` (N clicks)."""
    predictor.set_image(image)
    size = image.shape[:2]

    def predict(points, labels, boxes=None, mask_input=None):
        coords = None if points is None else predictor.transform.apply_coords_torch(points, size)
        box = None if boxes is None else predictor.transform.apply_boxes_torch(boxes, size)
        masks, _, logits = predictor.predict_torch(coords, labels, box, mask_input, multimask_output=False)
        return masks[:, 0], logits

    first = farthest_from_boundary_points(gt)
    points, labels = first.points[:, None].float(), first.labels[:, None]
    outputs, scores, _ = predictor.predict_torch(predictor.transform.apply_coords_torch(points, size), labels,
                                                 multimask_output=True)
    per_output = iou(outputs, gt[:, None])  # N x 3
    box_masks, _ = predict(None, None, boxes=mask_boxes(gt).float())

    per_click = []
    masks, logits = predict(points, labels)  # the interactive chain: single output from the first click
    per_click.append(iou(masks, gt))
    for _ in range(max_clicks - 1):
        nxt = largest_error_region_clicks(masks, gt, previous=None)
        done = nxt.labels == PADDING  # nothing left to click: repeat the last click, as a no-op
        new_points = torch.where(done[:, None], points[:, -1], nxt.points)
        new_labels = torch.where(done, labels[:, -1], nxt.labels)
        points = torch.cat([points, new_points[:, None].float()], dim=1)
        labels = torch.cat([labels, new_labels[:, None]], dim=1)
        masks, logits = predict(points, labels, mask_input=logits)
        per_click.append(iou(masks, gt))
    ious = torch.stack(per_click, dim=1)  # N x max_clicks
    reached = ious >= 0.9
    noc = torch.where(reached.any(dim=1), reached.float().argmax(dim=1) + 1, torch.tensor(max_clicks))
    return {"1pt": per_output.gather(1, scores.argmax(dim=1, keepdim=True))[:, 0],
            "1pt_best": per_output.max(dim=1).values, "box": iou(box_masks, gt),
            "5pt": ious[:, min(CLICKS_FOR_MIOU, max_clicks) - 1], "noc90": noc.float()}


def ellipse_in_box(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x 4 inclusive XYXY boxes -> N x H x W bool: the ellipse inscribed in each box (pixel centres)."""
    ys = torch.arange(size[0], dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(size[1], dtype=torch.float32)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, k, None, None].float() for k in range(4))
    cx, cy, rx, ry = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2, (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1


def nested_click_ceilings(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x H x W bool ground truth -> two (N,) IoUs: each mask's with the smallest, and with the largest,
    ground-truth mask holding its 1-click point. What a segmenter that outlines every mask exactly scores
    when it answers the innermost or the outermost of the nested masks a click falls in."""
    clicks = farthest_from_boundary_points(gt).points.long()  # N x 2 (x, y)
    holds = gt[:, clicks[:, 1], clicks[:, 0]].T  # click k x mask j
    flat = gt.flatten(1).float()
    area = flat.sum(1)
    inter = flat @ flat.T
    ious = inter / (area[:, None] + area[None] - inter)
    rows = torch.arange(len(gt))
    smallest = torch.where(holds, area[None], torch.inf).argmin(1)
    largest = torch.where(holds, area[None], -torch.inf).argmax(1)
    return ious[rows, smallest], ious[rows, largest]


def at_grid(gt: torch.Tensor, grid: int) -> torch.Tensor:
    """N x H x W bool -> N x H x W bool: each mask as exact as a grid x grid map can draw it (the fraction of
    each cell it covers, up-sampled bilinearly, thresholded at one half). A model whose masks follow its
    image embedding's cells, and nothing finer, scores at best the IoU of these with the truth."""
    covered = F.adaptive_avg_pool2d(gt[:, None].float(), grid)
    return F.interpolate(covered, size=gt.shape[-2:], mode="bilinear")[:, 0] > 0.5


def tiny_grid() -> int:
    """The side of the embedded default model's image embedding (``sam_engine/conf/model/tiny.yaml``)."""
    config = packaged_config("model", "tiny")
    return config["img_size"] // config["patch_size"]


def references(num_images: int, seed: int) -> dict[str, tuple[float, float]]:
    """The model-free references on the benchmark's scenes, each an mIoU and its 95% half-width: ``box_prior``
    (:func:`ellipse_in_box`), the ``innermost`` and ``outermost`` 1-click ceilings
    (:func:`nested_click_ceilings`) and ``grid_G``, the masks drawn on the tiny model's G x G embedding grid and
    on one twice as fine (:func:`at_grid`); each scene is generated once."""
    grid = tiny_grid()
    grids = (grid, 2 * grid)
    spec = embedded_scene_spec()
    per_image = {"box_prior": [], "innermost": [], "outermost": [], **{f"grid_{g}": [] for g in grids}}
    for index in range(num_images):
        gt = torch.from_numpy(generate_scene(seed, index, spec).masks)
        per_image["box_prior"].append(iou(ellipse_in_box(mask_boxes(gt), gt.shape[-2:]), gt))
        smallest, largest = nested_click_ceilings(gt)
        per_image["innermost"].append(smallest)
        per_image["outermost"].append(largest)
        for grid in grids:
            per_image[f"grid_{grid}"].append(iou(at_grid(gt, grid), gt))
    return {name: mean_with_interval(values) for name, values in per_image.items()}


def mean_with_interval(per_image: list[torch.Tensor]) -> tuple[float, float]:
    """The mean over all masks and the half-width of its 95% interval, from the spread of image means."""
    values = torch.cat(per_image)
    interval = ImageMeanInterval()
    image_index = torch.repeat_interleave(torch.arange(len(per_image)), torch.tensor([len(v) for v in per_image]))
    interval.update(values, image_index)
    return float(values.mean()), float(interval.compute())


@torch.no_grad()
def evaluate(export: str, num_images: int, seed: int, max_clicks: int) -> dict:
    from segment_anything import SamPredictor

    model = load_official_export(export).eval()
    predictor = SamPredictor(model)
    spec = embedded_scene_spec()
    results: dict[str, list[torch.Tensor]] = {"1pt": [], "1pt_best": [], "box": [], "5pt": [], "noc90": []}
    for index in range(num_images):
        scene = generate_scene(seed, index, spec)
        scores = score_image(predictor, scene.image, torch.from_numpy(scene.masks), max_clicks)
        for key, value in scores.items():
            results[key].append(value)
    out = {"export": export, "images": num_images, "masks": int(sum(len(v) for v in results["1pt"])),
           "seed": seed, "max_clicks": max_clicks}
    for key, values in results.items():
        mean, half = mean_with_interval(values)
        name = "noc90" if key == "noc90" else f"miou_{key}"
        out[name], out[f"{name}_ci95"] = round(mean, 4), round(half, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", help="export directories (sam.pth + sam_config.json)")
    parser.add_argument("--images", type=int, default=32, help="unseen synthetic scenes")
    parser.add_argument("--seed", type=int, default=1000, help="scene seed (training uses 0, 1 and 10-14)")
    parser.add_argument("--max-clicks", type=int, default=20, help="NoC cap")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    reference = references(args.images, args.seed)
    (prior, prior_half), (inner, inner_half) = reference["box_prior"], reference["innermost"]
    outer, outer_half = reference["outermost"]
    print(f"box prior, no model (the ellipse inscribed in the tight box): {prior:.3f} +- {prior_half:.3f}")
    print(f"1-click ceiling of exact masks, answering the innermost of the nested masks holding the click: "
          f"{inner:.3f} +- {inner_half:.3f}; the outermost: {outer:.3f} +- {outer_half:.3f}")
    for name, (value, half) in reference.items():
        if name.startswith("grid_"):
            side = name.removeprefix("grid_")
            print(f"masks drawn on a {side} x {side} grid (each cell's covered fraction, bilinear): "
                  f"{value:.3f} +- {half:.3f}")
    rows = []
    for export in args.exports:
        row = evaluate(export, args.images, args.seed, args.max_clicks)
        rows.append(row)
        print(f"{export}: {row['masks']} masks on {row['images']} images | "
              f"1-click {row['miou_1pt']:.3f} +- {row['miou_1pt_ci95']:.3f} "
              f"(best of 3 outputs {row['miou_1pt_best']:.3f}) | box {row['miou_box']:.3f} "
              f"+- {row['miou_box_ci95']:.3f} | 5-click {row['miou_5pt']:.3f} +- {row['miou_5pt_ci95']:.3f} | "
              f"NoC90 {row['noc90']:.2f} (cap {row['max_clicks']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
