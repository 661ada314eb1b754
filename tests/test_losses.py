"""SAM's losses against hand-computed values, and the multimask selection and normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from sam_engine.train.losses import dice_loss, iou_of_logits, multimask_loss, sigmoid_focal_loss

LOGIT_OF_3_4 = math.log(3.0)  # sigmoid(log 3) = 0.75


def test_focal_loss_matches_the_formula_by_hand():
    # One 1 x 2 mask: a positive pixel predicted at p = 0.75, a negative one at p = 0.5.
    logits = torch.tensor([[[LOGIT_OF_3_4, 0.0]]])
    targets = torch.tensor([[[True, False]]])
    positive = 0.25 * (1 - 0.75) ** 2 * -math.log(0.75)  # alpha * (1 - p_t)^gamma * CE
    negative = 0.75 * (1 - 0.5) ** 2 * -math.log(0.5)
    loss = sigmoid_focal_loss(logits, targets)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx((positive + negative) / 2, rel=1e-6)


def test_focal_loss_without_alpha_and_with_another_gamma():
    logits = torch.tensor([[[LOGIT_OF_3_4, 0.0]]])
    targets = torch.tensor([[[True, False]]])
    expected = ((1 - 0.75) * -math.log(0.75) + (1 - 0.5) * -math.log(0.5)) / 2
    assert sigmoid_focal_loss(logits, targets, alpha=-1, gamma=1).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_matches_the_formula_by_hand():
    # 2 x 2 masks. First: p = 0.5 everywhere, one true pixel: 1 - (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5.
    # Second: p = 0.75 on the two true pixels, 0.5 elsewhere: 1 - (3 + 1) / (2.5 + 2 + 1) = 3 / 11.
    logits = torch.zeros(2, 2, 2)
    logits[1, 0] = LOGIT_OF_3_4
    targets = torch.zeros(2, 2, 2, dtype=torch.bool)
    targets[0, 0, 0] = True
    targets[1, 0] = True
    assert dice_loss(logits, targets).tolist() == pytest.approx([0.5, 3 / 11], rel=1e-6)


def test_iou_of_logits_thresholds_at_zero():
    logits = torch.full((1, 2, 2, 4), -1.0)
    logits[0, 0, :, :2] = 1.0  # columns 0..1: 4 pixels, 2 of them true
    logits[0, 1, 0, 0] = 0.0  # logit 0 is not foreground: an empty prediction
    targets = torch.zeros(1, 2, 4, dtype=torch.bool)
    targets[0, :, 1] = True  # column 1
    assert iou_of_logits(logits, targets).tolist() == [[pytest.approx(2 / 4), 0.0]]


def _three_outputs_second_perfect() -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.zeros(2, 8, 8, dtype=torch.bool)
    targets[:, 2:6, 2:6] = True
    perfect = torch.where(targets, 10.0, -10.0)
    logits = torch.stack([torch.zeros_like(perfect), perfect, -perfect], dim=1)  # N x 3 x H x W
    return logits.requires_grad_(), targets


def test_multimask_loss_keeps_the_best_output_and_only_it_gets_a_gradient():
    logits, targets = _three_outputs_second_perfect()
    terms = multimask_loss(logits, torch.zeros(2, 3), targets, num_masks_total=2)
    assert terms.best_output.tolist() == [1, 1]
    expected_focal = sigmoid_focal_loss(logits[:, 1], targets).mean()
    assert terms.focal.item() == pytest.approx(expected_focal.item(), rel=1e-6)
    assert terms.focal.item() < 1e-6 and terms.dice.item() < 1e-3
    terms.total.backward()
    gradient = logits.grad.abs().sum(dim=(0, 2, 3))
    assert gradient[0] == 0 and gradient[2] == 0 and gradient[1] > 0


def test_iou_head_target_is_the_actual_iou_of_every_output():
    logits, targets = _three_outputs_second_perfect()
    actual = torch.tensor([[0.0, 1.0, 0.0]]).expand(2, 3)  # logits 0 -> empty; perfect; complement
    assert torch.equal(iou_of_logits(logits, targets), actual)
    exact = multimask_loss(logits, actual.clone(), targets, num_masks_total=2)
    assert exact.iou.item() == 0
    iou_pred = (actual + torch.tensor([0.1, 0.2, 0.4])).requires_grad_()
    off = multimask_loss(logits, iou_pred, targets, num_masks_total=2)
    assert off.iou.item() == pytest.approx((0.01 + 0.04 + 0.16) / 3, rel=1e-5)
    off.total.backward()
    assert (iou_pred.grad != 0).all()  # every output's IoU prediction is trained


def test_total_weights_the_terms_and_is_divided_by_the_global_mask_count():
    logits = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5
    iou_pred = torch.rand(4, 3, generator=torch.Generator().manual_seed(2))
    local = multimask_loss(logits, iou_pred, targets, num_masks_total=4)
    focal, dice, iou = local.focal.item(), local.dice.item(), local.iou.item()
    assert min(focal, dice, iou) > 0
    assert local.total.item() == pytest.approx(20 * focal + dice + iou, rel=1e-6)
    weighted = multimask_loss(logits, iou_pred, targets, num_masks_total=4, focal_weight=2.0, iou_weight=3.0)
    assert weighted.total.item() == pytest.approx(2 * focal + dice + 3 * iou, rel=1e-6)
    global_batch = multimask_loss(logits, iou_pred, targets, num_masks_total=torch.tensor(8.0))
    for half, full in zip(global_batch[:4], local[:4], strict=True):
        assert half.item() == pytest.approx(full.item() / 2, rel=1e-6)


def test_single_output_and_low_precision_logits():
    logits, targets = _three_outputs_second_perfect()
    single = multimask_loss(logits[:, 1:2].detach().bfloat16(), torch.ones(2, 1), targets, num_masks_total=2)
    assert single.total.dtype == torch.float32
    assert single.best_output.tolist() == [0, 0] and single.iou.item() == 0


@pytest.mark.parametrize(
    "logits_shape, iou_shape, targets_shape",
    [((2, 3, 8, 8), (2, 3), (2, 16, 16)), ((2, 3, 8, 8), (2, 1), (2, 8, 8)), ((2, 8, 8), (2, 3), (2, 8, 8))],
)
def test_mismatched_shapes_are_refused(logits_shape, iou_shape, targets_shape):
    with pytest.raises(ValueError):
        multimask_loss(
            torch.zeros(logits_shape),
            torch.zeros(iou_shape),
            torch.zeros(targets_shape, dtype=torch.bool),
            num_masks_total=2,
        )
