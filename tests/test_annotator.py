"""The simulated annotator of stages 1 and 2: time model, clicking protocol, move-on rule, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sam_engine.annotate.cost import AnnotationTimeModel
from sam_engine.annotate.simulated import AnnotatedMasks, SimulatedAnnotator, review_prefilled
from sam_engine.data.synthetic.scenes import LEVEL_WHOLE, SceneSpec, generate_scene
from sam_engine.metrics.interactive import mask_iou
from sam_engine.model import build_sam
from sam_engine.predict.predictor import SamPredictor
from sam_engine.train.prompts import farthest_from_boundary_points

TIME = AnnotationTimeModel()
NEVER = math.inf  # move_on_seconds that keeps every mask


class CountingPredictor(SamPredictor):
    """A real predictor that counts its decoder calls."""

    decoder_calls = 0

    def predict_low_res_torch(self, *args, **kwargs):
        self.decoder_calls += 1
        return super().predict_low_res_torch(*args, **kwargs)


class OraclePredictor(SamPredictor):
    """A perfect stand-in model: a click inside an object returns exactly that object's mask.

    Its "low-res" logits are already at the image size (``upscale_masks`` is the identity); every
    output of a prompt is the object under the prompt's first point, with predicted IoU 1.
    """

    def __init__(self, sam_model, intent: torch.Tensor) -> None:
        super().__init__(sam_model, precision="fp32")
        self.intent = intent  # N x H x W bool, objects disjoint

    def predict_low_res_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True):
        scale = max(self.original_size) / self.model.img_size
        x, y = (point_coords[:, 0] * scale).long().unbind(-1)  # first point of each prompt, image pixels
        under_click = self.intent[:, y, x].T  # B x N
        masks = self.intent[under_click.float().argmax(dim=1)]  # B x H x W
        outputs = 3 if multimask_output else 1
        logits = torch.where(masks, 20.0, -20.0)[:, None].expand(-1, outputs, -1, -1)
        return logits, torch.ones(len(masks), outputs)

    def upscale_masks(self, low_res_logits):
        return low_res_logits


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam("tiny").eval()


@pytest.fixture(scope="module")
def scene():
    """(image H x W x 3 uint8, intent: the 5 whole objects as 5 x H x W bool)."""
    scene = generate_scene(0, 7, SceneSpec(image_size=256, min_objects=3, max_objects=6))
    intent = torch.as_tensor(scene.masks[scene.levels == LEVEL_WHOLE].copy())
    assert len(intent) == 5
    return scene.image, intent


@pytest.fixture(scope="module")
def predictor(model, scene):
    predictor = CountingPredictor(model, precision="fp32")
    predictor.set_image(scene[0])
    return predictor


# Random weights propose a blob that barely overlaps any object (IoU 0.0-0.15): a low acceptance
# threshold makes some proposals acceptable, so both outcomes (accepted, brushed) occur.
ASSISTED = dict(accept_iou=0.05, max_clicks=4, patience=4)  # patience past the budget: it never cuts clicking


@pytest.fixture(scope="module")
def assisted(predictor, scene):
    """Every object of the scene annotated with the real model: (AnnotatedMasks, decoder calls)."""
    predictor.decoder_calls = 0
    result = SimulatedAnnotator(TIME, move_on_seconds=NEVER, **ASSISTED).annotate(predictor, scene[1])
    return result, predictor.decoder_calls


def decreasing_area_order(intent: torch.Tensor) -> list[int]:
    return sorted(range(len(intent)), key=lambda i: -int(intent[i].sum()))


# --- time model -------------------------------------------------------------------------------


def test_time_model_defaults_price_an_unassisted_mask_at_34_seconds():
    assert TIME.unassisted_seconds == 34.0
    assert TIME.seconds(torch.tensor([0, 2, 1]), torch.tensor([20, 0, 3])).tolist() == [34.0, 7.0, 10.0]


def test_brush_strokes_fall_with_the_iou():
    ious = torch.tensor([0.0, 0.5, 0.9, 0.95, 0.951, 0.99, 1.0])
    assert TIME.brush_strokes(ious).tolist() == [20, 10, 2, 1, 1, 1, 0]
    strokes = TIME.brush_strokes(torch.linspace(0, 1, 1001))
    assert strokes.dtype == torch.int64
    assert (strokes[1:] <= strokes[:-1]).all() and strokes[0] == 20 and strokes[-1] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seconds_per_click=-1.0), "seconds_per_click must be a non-negative number"),
        (dict(strokes_per_mask=2.5), "strokes_per_mask must be a whole number"),
        (dict(seconds_per_mask="4"), "seconds_per_mask"),
    ],
)
def test_time_model_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnnotationTimeModel(**kwargs)


# --- without a model --------------------------------------------------------------------------


def test_unassisted_annotator_brushes_one_mask_then_moves_on(scene):
    intent = scene[1]
    result = SimulatedAnnotator(TIME).annotate(None, intent)
    largest = decreasing_area_order(intent)[0]
    assert len(result) == 1  # 34 s > 30 s: the first mask is the last on this image
    assert result.object_index.tolist() == [largest]
    assert torch.equal(result.masks[0], intent[largest])
    assert result.brushed.tolist() == [True] and result.clicks.tolist() == [0] and result.strokes.tolist() == [20]
    assert result.seconds.tolist() == [34.0] and result.iou.tolist() == [1.0]
    assert result.click_points.shape == (1, 0, 2)
    x, y = result.first_points()[0].long().tolist()
    assert intent[largest, y, x]


def test_unassisted_annotator_without_move_on_draws_every_object(scene):
    intent = scene[1]
    result = SimulatedAnnotator(TIME, move_on_seconds=NEVER).annotate(None, intent)
    assert result.object_index.tolist() == decreasing_area_order(intent)
    assert torch.equal(result.masks, intent[result.object_index])
    assert result.seconds.tolist() == [34.0] * len(intent)


# --- with a perfect model ---------------------------------------------------------------------


def test_perfect_model_is_accepted_after_one_click(model, scene):
    image, intent = scene
    oracle = OraclePredictor(model, intent)
    oracle.set_image(image)
    result = SimulatedAnnotator(TIME).annotate(oracle, intent)
    assert result.object_index.tolist() == decreasing_area_order(intent)  # all kept: 5.5 s each
    assert torch.equal(result.masks, intent[result.object_index])
    assert result.clicks.tolist() == [1] * len(intent)
    assert result.seconds.tolist() == [4.0 + 1.5] * len(intent)
    assert result.strokes.tolist() == [0] * len(intent) and not result.brushed.any()
    assert result.iou.tolist() == [1.0] * len(intent)
    assert result.click_labels.tolist() == [[1]] * len(intent)


def test_min_area_and_exclude_leave_objects_out(model, scene):
    image, intent = scene
    oracle = OraclePredictor(model, intent)
    oracle.set_image(image)
    order = decreasing_area_order(intent)
    smallest_area = int(intent[order[-1]].sum())
    exclude = torch.zeros(len(intent), dtype=torch.bool)
    exclude[order[0]] = True
    annotator = SimulatedAnnotator(TIME, min_area=smallest_area + 1)
    assert annotator.annotate(oracle, intent, exclude=exclude).object_index.tolist() == order[1:-1]


# --- with a real (random) model ---------------------------------------------------------------


def test_real_model_results_follow_the_protocol(assisted, scene):
    result, _ = assisted
    intent = scene[1]
    targets = intent[result.object_index]
    max_clicks, accept_iou = ASSISTED["max_clicks"], ASSISTED["accept_iou"]
    assert result.object_index.tolist() == decreasing_area_order(intent)
    assert result.brushed.any() and not result.brushed.all()  # both outcomes are exercised
    assert ((result.clicks >= 1) & (result.clicks <= max_clicks)).all()
    # Brushed: the budget ran out, the mask is the intent exactly. Accepted: the model's own mask.
    brushed, accepted = result.brushed, ~result.brushed
    assert (result.clicks[brushed] == max_clicks).all()
    assert torch.equal(result.masks[brushed], targets[brushed])
    assert (result.iou[brushed] == 1.0).all()
    actual = mask_iou(result.masks, targets)
    assert torch.equal(actual[accepted], result.iou[accepted])
    assert (result.iou[accepted] >= accept_iou).all() and (result.model_iou[brushed] < accept_iou).all()
    assert not torch.equal(result.masks[accepted], targets[accepted])
    # Time: the time model applied to the clicks and strokes.
    assert torch.equal(result.strokes, torch.where(brushed, TIME.brush_strokes(result.model_iou), 0))
    assert torch.equal(result.seconds, TIME.seconds(result.clicks, result.strokes))
    # Clicks: the first at the object's centre, each mask's clicks real then padding.
    assert torch.equal(result.first_points(), farthest_from_boundary_points(targets).points)
    made = torch.arange(result.click_labels.shape[1])[None] < result.clicks[:, None]
    assert ((result.click_labels >= 0) == made).all()
    assert (result.click_labels[:, 0] == 1).all()


def test_real_model_masks_match_the_predictors_interactive_api(assisted, predictor, scene):
    """Replaying one object's clicks through ``SamPredictor.predict`` (one object, numpy, as SAM's
    tool) gives the batched run's mask: the annotator is the interactive protocol, batched."""
    result, _ = assisted
    i = int(torch.nonzero(result.brushed)[0])
    points, labels = result.click_points[i].numpy(), result.click_labels[i].numpy()
    intent = scene[1][result.object_index[i]]
    masks, scores, low_res = predictor.predict(points[:1], labels[:1], multimask_output=True)
    ious, previous = [mask_iou(torch.as_tensor(masks[scores.argmax()]), intent)], low_res[scores.argmax()][None]
    for k in range(2, int(result.clicks[i]) + 1):
        masks, _, low_res = predictor.predict(points[:k], labels[:k], mask_input=previous, multimask_output=False)
        ious.append(mask_iou(torch.as_tensor(masks[0]), intent))
        previous = low_res
    assert max(ious).item() == pytest.approx(result.model_iou[i].item(), abs=1e-3)  # the best proposal is kept


def test_annotation_is_batched_over_objects(assisted, scene):
    _, decoder_calls = assisted
    assert len(scene[1]) > ASSISTED["max_clicks"]
    assert 1 <= decoder_calls <= ASSISTED["max_clicks"]  # one call per click round, whatever the object count


def test_move_on_rule_keeps_masks_up_to_the_first_slow_one(assisted, predictor, scene):
    everything, _ = assisted
    result = SimulatedAnnotator(TIME, move_on_seconds=30.0, **ASSISTED).annotate(predictor, scene[1])
    slow = (everything.seconds > 30.0).nonzero()[:, 0].tolist()
    assert slow and slow[0] < len(everything) - 1  # the rule has something to cut
    assert result.object_index.tolist() == everything.object_index[: slow[0] + 1].tolist()
    assert (result.seconds[:-1] <= 30.0).all() and result.seconds[-1] > 30.0


def test_patience_stops_clicking_after_clicks_that_do_not_help(assisted, predictor, scene):
    everything, _ = assisted
    impatient = SimulatedAnnotator(TIME, move_on_seconds=NEVER, **{**ASSISTED, "patience": 1})
    result = impatient.annotate(predictor, scene[1])
    assert torch.equal(result.object_index, everything.object_index)
    assert (result.clicks <= everything.clicks).all() and result.clicks.sum() < everything.clicks.sum()
    # Stopped early only after a click that did not beat the best proposal: its IoU is the best so far.
    stopped = result.brushed & (result.clicks < ASSISTED["max_clicks"])
    assert stopped.any()
    assert (result.model_iou[stopped] <= everything.model_iou[stopped] + 1e-6).all()


def test_exclude_removes_objects_from_a_real_run(predictor, scene):
    intent = scene[1]
    order = decreasing_area_order(intent)
    exclude = torch.zeros(len(intent), dtype=torch.bool)
    exclude[[order[1], order[3]]] = True
    annotator = SimulatedAnnotator(TIME, max_clicks=1, move_on_seconds=NEVER)
    result = annotator.annotate(predictor, intent, exclude=exclude)
    assert result.object_index.tolist() == [order[0], order[2], order[4]]
    assert result.clicks.tolist() == [1, 1, 1]


# --- bad inputs and edge cases ----------------------------------------------------------------


def test_no_objects_gives_an_empty_result(predictor):
    result = SimulatedAnnotator(TIME).annotate(predictor, torch.zeros(0, 256, 256, dtype=torch.bool))
    assert isinstance(result, AnnotatedMasks) and len(result) == 0
    assert result.masks.shape == (0, 256, 256) and result.seconds.shape == (0,)


@pytest.mark.parametrize(
    "intent, exclude, message",
    [
        (torch.zeros(2, 256, 256), None, "intent must be an N x H x W bool"),
        (torch.zeros(256, 256, dtype=torch.bool), None, "intent must be an N x H x W bool"),
        (torch.zeros(2, 128, 256, dtype=torch.bool), None, r"intent masks are \(128, 256\)"),
        (torch.zeros(2, 256, 256, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), "exclude must be a bool"),
    ],
)
def test_bad_inputs_are_refused(predictor, intent, exclude, message):
    with pytest.raises(ValueError, match=message):
        SimulatedAnnotator(TIME).annotate(predictor, intent, exclude=exclude)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(accept_iou=1.5), "accept_iou"), (dict(max_clicks=0), "max_clicks"), (dict(min_area=-1), "min_area"),
     (dict(patience=0), "patience")],
)
def test_bad_annotator_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulatedAnnotator(TIME, **kwargs)


# --- stage 2: the pre-filled masks kept, and the objects they leave to annotate ---------------------


def test_the_review_keeps_right_prefilled_masks_and_finds_the_objects_they_leave():
    intent = torch.zeros(3, 10, 10, dtype=torch.bool)
    intent[0, 0:4, 0:4] = True  # 16 px
    intent[1, 5:10, 0:5] = True  # 25 px
    intent[2, 0:2, 6:10] = True  # 8 px
    prefilled = torch.zeros(3, 10, 10, dtype=torch.bool)
    prefilled[0, 0:4, 0:4] = True  # object 0 exactly: IoU 1
    prefilled[1, 5:10, 0:2] = True  # 10 px inside object 1: IoU 0.4
    prefilled[2, 5:10, 6:10] = True  # on no object
    kept_all = review_prefilled(intent, prefilled)
    assert kept_all.kept.tolist() == [True, True, True] and kept_all.uncovered.tolist() == [False, True, True]
    assert review_prefilled(intent, prefilled, cover_iou=0.4).uncovered.tolist() == [False, False, True]
    reviewed = review_prefilled(intent, prefilled, cover_iou=0.4, reject_below=0.9)
    assert reviewed.kept.tolist() == [True, False, False]
    assert reviewed.uncovered.tolist() == [False, True, True]  # a rejected mask covers nothing
    assert review_prefilled(intent, prefilled, reject_below=0.3).kept.tolist() == [True, True, False]
    nothing = review_prefilled(intent, prefilled[:0], reject_below=0.9)
    assert nothing.kept.tolist() == [] and nothing.uncovered.tolist() == [True, True, True]
    assert review_prefilled(intent[:0], prefilled, reject_below=0.9).kept.tolist() == [False, False, False]


def test_the_review_refuses_masks_of_different_sizes():
    with pytest.raises(ValueError, match="differ in H x W"):
        review_prefilled(torch.zeros(1, 10, 10, dtype=torch.bool), torch.zeros(1, 10, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="prefilled must be an N x H x W bool"):
        review_prefilled(torch.zeros(1, 10, 10, dtype=torch.bool), np.zeros((1, 10, 10), bool))
