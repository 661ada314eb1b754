"""The automatic mask generator against the official SamAutomaticMaskGenerator on identical weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_helpers import photograph
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
from segment_anything.utils import amg as official_amg

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.amg.grids import crop_boxes, layer_point_grids
from sam_engine.amg.mask_ops import above, count_true, masks_to_boxes, near_crop_edge, stability_scores
from sam_engine.data.records import make_record, validate_record
from sam_engine.model import load_export
from sam_engine.model.official import official_twin


@pytest.fixture(scope="module")
def models(disk_export):
    ours = load_export(disk_export)
    return ours, official_twin(ours)


@pytest.fixture(scope="module")
def thresholds(disk_thresholds):
    """Thresholds that let a few dozen of the disk model's masks through and still reject many."""
    return disk_thresholds


def match(ours: list[dict], official: list[dict]) -> np.ndarray:
    """For each official mask, the index of our mask with the highest IoU; asserts IoU >= 0.99, one-to-one."""
    assert len(ours) == len(official)
    ious = mask_utils.iou([a["segmentation"] for a in ours], [a["segmentation"] for a in official], [0] * len(official))
    best = ious.argmax(axis=0)
    assert ious[best, np.arange(len(official))].min() >= 0.99
    assert sorted(best.tolist()) == list(range(len(ours))), "two official masks matched the same mask of ours"
    return best


@pytest.mark.parametrize(
    ("crop_n_layers", "min_mask_region_area"),
    [(0, 0), (1, 0), (0, 400), (1, 400)],
)
def test_same_masks_as_the_official_generator(models, thresholds, crop_n_layers, min_mask_region_area):
    ours_model, official_model = models
    image = photograph()
    options = dict(thresholds, crop_n_layers=crop_n_layers, min_mask_region_area=min_mask_region_area)
    if crop_n_layers:
        options["points_per_side"] = 16
    ours = SamAutomaticMaskGenerator(ours_model, **options).generate(image)
    official = OfficialGenerator(official_model, output_mode="coco_rle", **options).generate(image)

    assert len(official) >= 20, "too few masks for a meaningful comparison"
    best = match(ours, official)
    for ref, ann in zip(official, (ours[i] for i in best), strict=True):
        assert ann["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-3)
        assert ann["stability_score"] == pytest.approx(ref["stability_score"], abs=1e-3)
        assert ann["point_coords"][0] == pytest.approx(ref["point_coords"][0])
        assert ann["crop_box"] == ref["crop_box"]
        assert ann["area"] == pytest.approx(ref["area"], rel=0.01)
        # The official bbox is the inclusive pixel box; ours is COCO's (toBbox), one pixel wider and taller.
        x, y, w, h = ref["bbox"]
        assert ann["bbox"] == pytest.approx([x, y, w + 1, h + 1], abs=1)
    validate_record(make_record("grace", image.shape[1], image.shape[0], "grace.jpg", ours))
    if crop_n_layers:
        assert len({tuple(a["crop_box"]) for a in ours}) > 1, "crops contributed no mask"


def test_cpu_workers_find_the_masks_of_one_batch_at_a_time(models, thresholds):
    """Batches decoded by two single-threaded workers (``cpu_workers``: the default on CI's 2 cores) give the
    masks of the sequential decoding, in the same order (their float sums may round differently)."""
    image = photograph()
    one, two = (SamAutomaticMaskGenerator(models[0], cpu_workers=workers, **thresholds).generate(image)
                for workers in (1, 2))
    assert len(one) >= 20
    assert match(two, one).tolist() == list(range(len(one)))
    for a, b in zip(one, two, strict=True):
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-5)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-3)


def test_nothing_passing_gives_an_empty_list(models):
    generator = SamAutomaticMaskGenerator(models[0], points_per_side=8, pred_iou_thresh=0.999, crop_n_layers=1)
    assert generator.generate(photograph()) == []


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 300, 3), (1, 5000, 3), (40, 30), (40, 30, 4)])
def test_degenerate_and_unusual_images(models, thresholds, shape):
    """A 1 x 1 image, 1-pixel-high strips (1 x 5000: resized to 1 x 256, never 0 px), a grey and an RGBA image:
    valid (maybe empty) records."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    generator = SamAutomaticMaskGenerator(models[0], points_per_side=8, **thresholds)
    annotations = generator.generate(image, provenance={"source": "auto", "stage": 3})
    validate_record(make_record("x", shape[1], shape[0], "x.png", annotations))
    assert all(a["source"] == "auto" and a["stage"] == 3 for a in annotations)
    counts = [a["segmentation"]["counts"] for a in annotations]
    assert len(set(counts)) == len(counts)  # no mask twice: zero-area boxes of one-pixel-high masks too


def test_one_pixel_images_give_one_mask_not_one_per_grid_point(models):
    generator = SamAutomaticMaskGenerator(models[0], points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0)
    assert len(generator.generate(np.full((1, 1, 3), 128, np.uint8))) <= 1  # it gave 64 identical masks


@pytest.mark.parametrize(
    "options",
    [dict(points_per_side=0), dict(pred_iou_thresh=1.5), dict(crop_n_layers=-1), dict(min_mask_region_area=2.5),
     dict(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2), dict(cpu_workers=0)],
)
def test_bad_options_are_refused(models, options):
    with pytest.raises(ValueError, match=next(iter(options)) if len(options) == 1 else "points"):
        SamAutomaticMaskGenerator(models[0], **options)


# --- the building blocks, against the official functions --------------------------------------------------


@pytest.mark.parametrize("size", [(600, 512), (1, 1), (37, 1500), (1024, 1024)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_grids_and_crops_equal_the_official(size, layers):
    boxes, layer_of = crop_boxes(size, layers, 512 / 1500)
    ref_boxes, ref_layers = official_amg.generate_crop_boxes(size, layers, 512 / 1500)
    assert boxes == ref_boxes and layer_of == ref_layers
    for ours, ref in zip(layer_point_grids(32, layers, 2), official_amg.build_all_layer_point_grids(32, layers, 2),
                         strict=True):
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("length", [0, 1, 254, 255, 256, 255 * 255, 255 * 255 + 7, 65536])
def test_count_true_counts_every_row_exactly(length):
    generator = torch.Generator().manual_seed(length)
    flags = torch.rand(4, length, generator=generator) > 0.4
    flags[0] = True  # 255 Trues in every uint8 position: the largest partial sum
    flags[1] = False
    counts = count_true(flags)
    assert counts.dtype == torch.int32
    assert counts.tolist() == flags.sum(dim=-1).tolist() and counts[0] == length


@pytest.mark.parametrize("threshold", [1.0, 0.0, -1.0, 0.5])
def test_above_is_the_comparison(threshold):
    edge = [1.0, 1.0000001, 0.99999994, -1.0, -0.99999994, 0.5, 0.0, -0.0, 1e-45, -1e-45]
    values = torch.tensor([*edge, math.inf, -math.inf, math.nan, *torch.randn(50).tolist()]).view(7, 9)
    expected = values > threshold  # NaN: False
    assert torch.equal(above(values, threshold), expected)
    buffer = values.clone()
    assert torch.equal(above(buffer, threshold, buffer), expected)  # in place: the values are spent


def test_mask_operations_equal_the_official():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 1, 9, 7, generator=generator)
    logits = torch.nn.functional.interpolate(logits, (90, 70), mode="bilinear")[:, 0] * 3
    logits[3] = -5  # an empty mask
    torch.testing.assert_close(
        stability_scores(logits, 0.0, 1.0), official_amg.calculate_stability_score(logits, 0.0, 1.0), equal_nan=True
    )
    masks = logits > 0
    boxes = masks_to_boxes(masks)
    assert torch.equal(boxes, official_amg.batched_mask_to_box(masks))
    assert boxes[3].tolist() == [0, 0, 0, 0]
    crop, image = [10, 20, 80, 110], [0, 0, 200, 300]
    assert torch.equal(near_crop_edge(boxes, crop, image), official_amg.is_box_near_crop_edge(boxes, crop, image))


def test_filters_off_give_valid_records(models):
    """With both filters off, masks empty even at the low cut (stability NaN) are dropped, not written."""
    image = photograph()
    generator = SamAutomaticMaskGenerator(models[0], points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    annotations = generator.generate(image)
    assert annotations and all(np.isfinite(a["stability_score"]) for a in annotations)
    validate_record(make_record("grace", image.shape[1], image.shape[0], "grace.jpg", annotations))
