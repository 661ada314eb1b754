"""benchmarks/amg_calibration.py: the true IoU of generated masks, the reliability bins, the justified filters."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from amg_calibration import justified_setting, reliability, true_ious  # noqa: E402


def test_true_iou_is_the_best_match_among_nested_truths():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, :4, :4] = True  # a whole (16 px) ...
    gt[1, :2, :2] = True  # ... and its part (4 px)
    exact_part = np.zeros((8, 8), bool)
    exact_part[:2, :2] = True
    half_whole = np.zeros((8, 8), bool)
    half_whole[:4, :2] = True  # 8 px inside the whole: IoU 0.5 with it, 0.5 with the part
    elsewhere = np.zeros((8, 8), bool)
    elsewhere[6:, 6:] = True
    records = [{"segmentation": m} for m in (exact_part, half_whole, elsewhere)]
    np.testing.assert_allclose(true_ious(records, gt), [1.0, 0.5, 0.0])
    assert true_ious([], gt).shape == (0,)
    np.testing.assert_array_equal(true_ious(records, gt[:0]), [0.0, 0.0, 0.0])  # no truth: nothing is right


def test_reliability_bins_predicted_iou_and_counts_the_right_masks():
    predicted = np.array([0.1, 0.15, 0.9, 0.95, 1.0])
    true = np.array([0.0, 0.2, 0.95, 0.5, 0.91])
    rows = reliability(predicted, true)
    assert [row["masks"] for row in rows] == [2, 0, 0, 0, 3]  # 1.0 falls in the last bin
    assert rows[0]["mean_true"] == 0.1 and rows[0]["precision_iou90"] == 0.0
    assert rows[1]["mean_true"] is None
    assert rows[4]["precision_iou90"] == round(2 / 3, 4)


def test_the_justified_setting_keeps_most_masks_among_the_precise_enough():
    grid = [{"pred_iou_thresh": 0.0, "masks_per_image": 400.0, "precision_iou90": 0.1},
            {"pred_iou_thresh": 0.7, "masks_per_image": 30.0, "precision_iou90": 0.6},
            {"pred_iou_thresh": 0.88, "masks_per_image": 12.0, "precision_iou90": 0.9},
            {"pred_iou_thresh": 0.95, "masks_per_image": 0.0, "precision_iou90": None}]
    assert justified_setting(grid, 0.5)["pred_iou_thresh"] == 0.7
    assert justified_setting(grid, 0.8)["pred_iou_thresh"] == 0.88
    assert justified_setting(grid, 0.95) is None
