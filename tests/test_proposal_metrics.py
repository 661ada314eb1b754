"""Streaming proposal quality: exact values on hand-made masks, and COCOeval's own average recall."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_engine.data.records import encode_masks, mask_areas
from sam_engine.metrics.proposals import ProposalQuality, coco_greedy_matches


def boxes_to_masks(boxes, height: int, width: int) -> np.ndarray:
    """K x 4 (x0, y0, x1, y1), end-exclusive -> K x H x W bool, by broadcasting."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    ys = np.arange(height)[None, :, None]
    xs = np.arange(width)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def rles(boxes, height: int, width: int) -> list[dict]:
    return encode_masks(boxes_to_masks(boxes, height, width))


# --------------------------------------------------------------------------------------------------
# Hand-made masks with known IoUs
# --------------------------------------------------------------------------------------------------


def test_squares_give_exact_precision_recall_and_ar():
    h, w = 40, 40
    gt = rles([[0, 0, 10, 10], [20, 20, 30, 30], [25, 0, 35, 10]], h, w)
    pred = rles(
        [
            [0, 0, 10, 10],  # gt 0 exactly: IoU 1
            [22, 20, 32, 30],  # gt 1 moved 2 columns: 80 / 120 = 2/3
            [0, 30, 10, 40],  # nothing: 0
            [0, 1, 10, 11],  # gt 0 moved 1 row: 90 / 110 = 0.818
        ],
        h,
        w,
    )
    quality = ProposalQuality()
    quality.add(pred, np.array([0.8, 0.7, 0.6, 0.9]), gt)
    s = quality.summary()
    assert (s["images"], s["pred_masks"], s["gt_masks"]) == (1, 4, 3)
    assert s["precision_iou50"] == 3 / 4
    assert s["precision_iou75"] == 2 / 4
    assert s["precision_iou90"] == 1 / 4
    assert s["recall_iou50"] == 2 / 3
    assert s["recall_iou75"] == 1 / 3
    # Greedy by score: pred 3 (0.818) takes gt 0 for t <= 0.8, so pred 0 (IoU 1) gets it only for
    # t >= 0.85; pred 1 (2/3) takes gt 1 for t <= 0.65. Matched per threshold: 2,2,2,2,1,1,1,1,1,1.
    assert quality.ar_matched[:, 0].tolist() == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert s["ar100"] == pytest.approx(14 / 30, abs=1e-15)
    assert s["ar1000"] == s["ar100"]


@pytest.mark.parametrize(
    ("width", "shift", "iou", "key_precise", "key_recall", "coco_thresholds_met"),
    [
        (12, 4, 0.5, "precision_iou50", "recall_iou50", 1),  # 96 / 192
        (14, 2, 0.75, "precision_iou75", "recall_iou75", 6),  # 168 / 224
        (19, 1, 0.9, "precision_iou90", None, 9),  # 342 / 380; COCO's 9th threshold is 0.8999999999999999
    ],
)
def test_thresholds_precision_strict_recall_inclusive(width, shift, iou, key_precise, key_recall, coco_thresholds_met):
    h, w = 20, 40
    gt = rles([[0, 0, width, h]], h, w)
    pred = rles([[shift, 0, shift + width, h]], h, w)
    assert mask_utils.iou(pred, gt, [0])[0, 0] == iou
    quality = ProposalQuality()
    quality.add(pred, np.array([1.0]), gt)
    s = quality.summary()
    assert s[key_precise] == 0.0  # IoU == t is not > t
    if key_recall:
        assert s[key_recall] == 1.0  # IoU == t is >= t
    assert s["ar100"] == pytest.approx(coco_thresholds_met / 10, abs=1e-15)  # COCO matches IoU >= t
    assert s["ar100"] == cocoeval_average_recall([(pred, np.array([1.0]), gt, (h, w))])["ar100"]


def test_greedy_matching_breaks_iou_ties_like_cocoeval():
    # pred 0 has IoU 0.5 with both gts; COCOeval gives it the last one, which leaves gt 0 for pred 1.
    ious = np.array([[0.5, 0.5], [1.0, 0.0]])
    matched = coco_greedy_matches(ious)
    assert matched[0].tolist() == [True, True]  # t = 0.5: both
    assert matched[1:].tolist() == [[False, True]] * 9
    # The same with masks: 10 x 20 prediction over two 10 x 10 ground-truth halves.
    h, w = 10, 30
    gt = rles([[0, 0, 10, 10], [10, 0, 20, 10]], h, w)
    pred = rles([[0, 0, 20, 10], [0, 0, 10, 10]], h, w)
    quality = ProposalQuality()
    quality.add(pred, np.array([0.9, 0.8]), gt)
    assert quality.summary()["ar100"] == pytest.approx((2 + 9) / 20, abs=1e-15)


def test_equal_scores_keep_the_given_order_for_the_top_100():
    # 150 predictions, every fifth scored 0.4 and the others 0.5; only prediction 126 hits. COCOeval's
    # stable sort ranks it 102nd (after the 101 earlier ones of 0.5): outside the top 100.
    h, w = 8, 8
    gt = rles([[0, 0, 4, 4]], h, w)
    hit = np.arange(150) == 126
    pred = rles(np.where(hit[:, None], [0, 0, 4, 4], [4, 4, 8, 8]), h, w)
    image = (pred, np.where(np.arange(150) % 5 == 4, 0.4, 0.5), gt, (h, w))
    quality = ProposalQuality()
    quality.add(*image[:3])
    s = quality.summary()
    assert (s["ar100"], s["ar1000"]) == (0.0, 1.0)
    assert cocoeval_average_recall([image]) == {"ar100": 0.0, "ar1000": 1.0}


def test_recall_has_no_one_to_one_constraint():
    h, w = 10, 20
    gt = rles([[0, 0, 10, 10], [0, 0, 10, 10]], h, w)  # the same mask twice
    pred = rles([[0, 0, 10, 10]], h, w)
    quality = ProposalQuality()
    quality.add(pred, np.array([0.5]), gt)
    s = quality.summary()
    assert s["recall_iou75"] == 1.0  # one prediction recalls both
    assert s["ar100"] == 0.5  # COCO matching is one-to-one


def test_bytes_counts_equal_str_counts():
    h, w = 16, 24
    boxes_gt, boxes_pred = [[0, 0, 8, 8], [10, 4, 20, 14]], [[1, 0, 9, 8], [10, 5, 20, 15], [0, 8, 4, 16]]
    scores = np.array([0.3, 0.2, 0.1])
    as_str, as_bytes = ProposalQuality(), ProposalQuality()
    as_str.add(rles(boxes_pred, h, w), scores, rles(boxes_gt, h, w))
    raw = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in boxes_to_masks(boxes_pred, h, w)]
    raw_gt = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in boxes_to_masks(boxes_gt, h, w)]
    assert isinstance(raw[0]["counts"], bytes)
    as_bytes.add(raw, scores, raw_gt)
    assert as_bytes.summary() == as_str.summary()


# --------------------------------------------------------------------------------------------------
# Empty inputs, bad inputs, JSON, merging, memory
# --------------------------------------------------------------------------------------------------


def test_empty_inputs():
    quality = ProposalQuality()
    s = quality.summary()
    assert s == {
        "images": 0, "pred_masks": 0, "gt_masks": 0,
        "precision_iou50": None, "precision_iou75": None, "precision_iou90": None,
        "recall_iou50": None, "recall_iou75": None, "ar100": None, "ar1000": None,
    }  # fmt: skip
    quality.add([], np.zeros(0), [])
    assert quality.summary() == {**s, "images": 1}

    h, w = 8, 8
    quality.add(rles([[0, 0, 4, 4]], h, w), np.array([0.5]), [])  # predictions, no ground truth
    s = quality.summary()
    assert (s["images"], s["pred_masks"], s["precision_iou50"]) == (2, 1, 0.0)
    assert (s["recall_iou50"], s["ar100"]) == (None, None)
    quality.add([], np.zeros(0), rles([[0, 0, 4, 4], [4, 4, 8, 8]], h, w))  # ground truth, no predictions
    s = quality.summary()
    assert (s["gt_masks"], s["precision_iou50"], s["recall_iou50"], s["ar100"], s["ar1000"]) == (2, 0.0, 0.0, 0.0, 0.0)


def test_bad_inputs_are_refused():
    quality = ProposalQuality()
    masks = rles([[0, 0, 4, 4], [2, 2, 6, 6]], 8, 8)
    with pytest.raises(ValueError, match="pred_scores"):
        quality.add(masks, np.array([0.5]), masks)
    with pytest.raises(ValueError, match="size"):
        quality.add(masks, np.array([0.5, 0.4]), rles([[0, 0, 4, 4]], 8, 9))
    assert quality.images == 0  # nothing counted


def test_summary_is_json_safe():
    quality = ProposalQuality()
    json.dumps(quality.summary(), allow_nan=False)
    h, w = 8, 8
    quality.add(rles([[0, 0, 4, 4]], h, w), np.array([0.5], dtype=np.float32), rles([[0, 0, 4, 5]], h, w))
    s = quality.summary()
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    assert all(type(v) in (int, float) for v in s.values())


def test_merge_equals_one_accumulator():
    images = random_images(np.random.default_rng(3), big=False)
    whole, first, second = ProposalQuality(), ProposalQuality(), ProposalQuality()
    for i, (pred, scores, gt, _) in enumerate(images):
        whole.add(pred, scores, gt)
        (first if i % 2 else second).add(pred, scores, gt)
    assert first.merge(second).summary() == whole.summary()


def _state(quality: ProposalQuality) -> dict:
    return {
        name: (type(v).__name__, v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v).__name__
        for name, v in vars(quality).items()
    }


def test_state_size_does_not_grow_with_images():
    h, w = 16, 16
    pred = rles([[0, 0, 8, 8], [8, 8, 16, 16]], h, w)
    gt = rles([[0, 0, 8, 9]], h, w)
    quality = ProposalQuality()
    quality.add(pred, np.array([0.9, 0.1]), gt)
    state_after_one = _state(quality)
    small = [isinstance(v, int) or (isinstance(v, np.ndarray) and v.size <= 20) for v in vars(quality).values()]
    assert all(small), "state holds only ints and small count arrays"
    for _ in range(200):
        quality.add(pred, np.array([0.9, 0.1]), gt)
    assert _state(quality) == state_after_one
    assert quality.images == 201 and quality.precise.tolist() == [201, 201, 0]


# --------------------------------------------------------------------------------------------------
# Average recall against pycocotools' COCOeval
# --------------------------------------------------------------------------------------------------


def random_images(rng: np.random.Generator, big: bool = True) -> list[tuple[list, np.ndarray, list, tuple]]:
    """(pred_rles, scores, gt_rles, (H, W)) per image: random boxes, predictions jittered from them
    (some with pixel noise) plus unrelated ones; one image without predictions, one without ground
    truth, ties in scores and duplicate masks; with ``big``, 150 and 1050 predictions on two images.
    """

    def random_boxes(n, h, w):
        x0, y0 = rng.integers(0, w - 4, n), rng.integers(0, h - 4, n)
        return np.stack([x0, y0, x0 + rng.integers(3, w, n), y0 + rng.integers(3, h, n)], axis=1).clip(0, [w, h, w, h])

    def image(h, w, num_gts, num_jittered, num_random, noisy=0.0, tie_scores=False, jittered_last=False):
        gt_boxes = random_boxes(num_gts, h, w)
        parents = rng.integers(0, max(num_gts, 1), num_jittered)
        if num_gts:
            jittered = gt_boxes[parents] + rng.integers(-2, 3, (num_jittered, 4))
        else:
            jittered = random_boxes(num_jittered, h, w)
        pred_boxes = np.concatenate([jittered, random_boxes(num_random, h, w)]).clip(0, [w, h, w, h])
        pred_masks = boxes_to_masks(pred_boxes, h, w)
        pred_masks ^= rng.random(pred_masks.shape) < noisy
        scores = rng.random(len(pred_masks))
        if jittered_last:  # the predictions near the ground truth rank below all the others
            scores[:num_jittered] *= 0.01
        if tie_scores:
            scores = np.round(scores, 1)
        return encode_masks(pred_masks), scores, encode_masks(boxes_to_masks(gt_boxes, h, w)), (h, w)

    images = [
        image(32, 48, 5, 6, 3),
        image(32, 48, 4, 0, 0),  # no predictions
        image(24, 40, 0, 4, 0),  # no ground truth
        image(40, 32, 6, 10, 4, noisy=0.02, tie_scores=True),
    ]
    pred, scores, gt, size = image(32, 48, 4, 5, 0, tie_scores=True)
    images.append((pred + pred[:2], np.concatenate([scores, scores[:2]]), gt + gt[:1], size))  # duplicates
    if big:
        images.append(image(48, 64, 20, 140, 10, noisy=0.01, tie_scores=True))  # > 100 predictions, ties
        images.append(image(32, 32, 8, 1000, 50))  # > 1000 predictions
        # 1030 predictions, the 30 near the ground truth last: COCOeval drops those beyond the top 1000
        images.append(image(32, 32, 6, 30, 1000, jittered_last=True))
    return images


def cocoeval_average_recall(images) -> dict:
    """ar100 / ar1000 from COCOeval (segm, one category, useCats=0, maxDets [1, 100, 1000], area 'all')."""
    gt_anns, dt_anns, image_infos = [], [], []
    for image_id, (pred, scores, gt, (h, w)) in enumerate(images, start=1):
        image_infos.append({"id": image_id, "height": h, "width": w})
        areas = mask_areas(gt).tolist()
        for rle, area in zip(gt, areas, strict=True):
            ann = {"image_id": image_id, "category_id": 1, "segmentation": dict(rle), "area": area, "iscrowd": 0}
            gt_anns.append({"id": len(gt_anns) + 1, **ann})  # ids from 1: COCOeval reads id 0 as "unmatched"
        for rle, score in zip(pred, scores.tolist(), strict=True):
            dt_anns.append({"image_id": image_id, "category_id": 1, "segmentation": dict(rle), "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": image_infos, "annotations": gt_anns, "categories": [{"id": 1, "name": "thing"}]}
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(dt_anns), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = [1, 100, 1000]
        coco_eval.evaluate()
        coco_eval.accumulate()
    recall = coco_eval.eval["recall"]  # T x K x A x M
    assert coco_eval.params.areaRngLbl[0] == "all"
    return {"ar100": float(recall[:, 0, 0, 1].mean()), "ar1000": float(recall[:, 0, 0, 2].mean())}


def test_average_recall_equals_cocoeval():
    images = random_images(np.random.default_rng(0))
    assert max(len(pred) for pred, *_ in images) > 1000
    quality = ProposalQuality()
    for pred, scores, gt, _ in images:
        quality.add(pred, scores, gt)
    ours = quality.summary()
    expected = cocoeval_average_recall(images)
    assert ours["ar100"] == pytest.approx(expected["ar100"], abs=1e-12)
    assert ours["ar1000"] == pytest.approx(expected["ar1000"], abs=1e-12)
    assert ours["ar100"] != pytest.approx(ours["ar1000"], abs=1e-3)  # the top-100 cut matters here
    assert 0.05 < ours["ar100"] < ours["ar1000"] < 1.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_average_recall_equals_cocoeval_small_images(seed):
    images = random_images(np.random.default_rng(seed), big=False)
    quality = ProposalQuality()
    for pred, scores, gt, _ in images:
        quality.add(pred, scores, gt)
    ours, expected = quality.summary(), cocoeval_average_recall(images)
    assert ours["ar100"] == pytest.approx(expected["ar100"], abs=1e-12)
    assert ours["ar1000"] == pytest.approx(expected["ar1000"], abs=1e-12)
