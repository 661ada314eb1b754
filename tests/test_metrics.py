"""IoU, NoC, multimask choice and IoU-head error on hand-made examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_engine.metrics.interactive import clicks_to_reach, iou_head_mae, mask_iou, multimask_ious
from sam_engine.metrics.interval import ImageMeanInterval


def test_mask_iou_by_hand():
    pred = torch.zeros(4, 3, 4, dtype=torch.bool)
    gt = torch.zeros(4, 3, 4, dtype=torch.bool)
    pred[0, 0, :3] = True  # 3 pixels
    gt[0, 0, 1:] = True  # 3 pixels, 2 shared: 2 / 4
    pred[1] = gt[1] = True  # identical: 1
    gt[2, 1, 1] = True  # nothing predicted: 0
    # mask 3: both empty, counts as a perfect match
    assert mask_iou(pred, gt).tolist() == [0.5, 1.0, 0.0, 1.0]


def test_mask_iou_broadcasts_over_outputs():
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[:, :2] = True
    outputs = torch.stack([gt, ~gt, gt | torch.ones_like(gt)], dim=1)  # N x 3 x H x W
    assert mask_iou(outputs, gt[:, None]).tolist() == [[1.0, 0.0, 0.5]] * 2


def test_mask_iou_refuses_logits():
    with pytest.raises(ValueError, match="bool"):
        mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))


def test_clicks_to_reach_counts_from_one_and_caps():
    ious = torch.tensor(
        [
            [0.95, 0.2, 0.99],  # first click already there
            [0.5, 0.9, 0.95],  # the threshold itself counts
            [0.5, 0.6, 0.7],  # never: the cap
        ]
    )
    assert clicks_to_reach(ious).tolist() == [1, 2, 20]
    assert clicks_to_reach(ious, threshold=0.6, cap=5).tolist() == [1, 2, 2]


def test_clicks_to_reach_ignores_clicks_beyond_the_cap():
    ious = torch.zeros(1, 25)
    ious[0, 21] = 1.0  # reached at click 22
    assert clicks_to_reach(ious, cap=20).tolist() == [20]
    assert clicks_to_reach(ious, cap=25).tolist() == [22]


def test_multimask_predicted_and_oracle_choices():
    ious = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.1, 0.3]])
    iou_pred = torch.tensor([[0.8, 0.1, 0.3], [0.6, 0.6, 0.2]])  # second row: tie, first wins
    choice = multimask_ious(ious, iou_pred)
    assert choice.predicted.tolist() == pytest.approx([0.2, 0.7])
    assert choice.oracle.tolist() == pytest.approx([0.9, 0.7])


def test_iou_head_mae():
    iou_pred = torch.tensor([[0.5, 1.0], [0.0, 0.25]])
    ious = torch.tensor([[0.75, 0.5], [0.0, 0.5]])
    assert iou_head_mae(iou_pred, ious).item() == pytest.approx((0.25 + 0.5 + 0 + 0.25) / 4)


def test_image_mean_interval_is_taken_over_image_means_in_any_batching():
    ious = [torch.tensor([0.2, 0.4]), torch.tensor([0.9]), torch.tensor([0.5, 0.7, 0.3]), torch.tensor([0.0, 1.0])]
    means = np.array([0.3, 0.9, 0.5, 0.5])  # one per image, however many masks it has
    expected = 1.96 * means.std(ddof=1) / np.sqrt(len(means))
    together, split = ImageMeanInterval(), ImageMeanInterval()
    together.update(torch.cat(ious), torch.tensor([0, 0, 1, 2, 2, 2, 3, 3]))
    split.update(torch.cat(ious[:2]), torch.tensor([5, 5, 2]))  # two batches; image indices per batch
    split.update(torch.cat(ious[2:]), torch.tensor([0, 0, 0, 1, 1]))
    assert float(together.compute()) == pytest.approx(expected, rel=1e-6)
    assert float(split.compute()) == pytest.approx(expected, rel=1e-6)
    one = ImageMeanInterval()
    one.update(torch.tensor([0.5, 0.6]), torch.tensor([0, 0]))
    assert torch.isnan(one.compute())
