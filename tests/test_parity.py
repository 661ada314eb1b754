"""Our model and predictor against the official segment_anything, on identical random weights.

Each variant's pair is built once per module; the photograph is encoded once by each predictor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import model_pair, photograph
from segment_anything import SamPredictor as OfficialPredictor

from sam_engine.model import export_sam
from sam_engine.model.official import load_official_export
from sam_engine.predict.predictor import SamPredictor
from sam_engine.transforms import scale_coords

TOLERANCE = 1e-4

POINTS = np.array([[150.0, 250.0], [320.0, 410.0], [260.0, 90.0]])
LABELS = np.array([1, 0, 1])
BOX = np.array([60.0, 120.0, 430.0, 560.0])

PROMPTS = {
    "one point, multimask": dict(point_coords=POINTS[:1], point_labels=LABELS[:1], multimask_output=True),
    "three points, single mask": dict(point_coords=POINTS, point_labels=LABELS, multimask_output=False),
    "box": dict(box=BOX, multimask_output=False),
    "box + points": dict(point_coords=POINTS, point_labels=LABELS, box=BOX, multimask_output=False),
    "box, multimask": dict(box=BOX, multimask_output=True),
}


@pytest.fixture(scope="module", params=["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def predictors(request, model_pairs):
    ours, official = model_pairs(request.param)
    image = photograph()
    ours_predictor, official_predictor = SamPredictor(ours), OfficialPredictor(official)
    ours_predictor.set_image(image)
    official_predictor.set_image(image)
    return ours_predictor, official_predictor


def assert_same_outputs(ours_out, official_out):
    def as_numpy(outputs):
        return [np.asarray(t.cpu()) if isinstance(t, torch.Tensor) else t for t in outputs]

    (masks, scores, low_res), (ref_masks, ref_scores, ref_low_res) = as_numpy(ours_out), as_numpy(official_out)
    assert low_res.shape == ref_low_res.shape
    np.testing.assert_allclose(low_res, ref_low_res, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(scores, ref_scores, atol=TOLERANCE, rtol=0)
    if ref_masks.dtype == bool:  # a pixel whose logit is within float error of 0 may fall either side
        assert masks.shape == ref_masks.shape
        assert (masks != ref_masks).sum() <= 1e-5 * masks.size, (masks != ref_masks).sum()
    else:  # full-size logits: equal within tolerance, and on the same side of 0 wherever that is decided
        np.testing.assert_allclose(masks, ref_masks, atol=TOLERANCE, rtol=0)
        decided = np.abs(ref_masks) > TOLERANCE
        np.testing.assert_array_equal(masks[decided] > 0, ref_masks[decided] > 0)
    # The logits are not degenerate: both signs occur, so the comparison is meaningful.
    assert (low_res > 0).any() and (low_res < 0).any()


def test_image_embeddings_match(predictors):
    ours, official = predictors
    assert ours.original_size == tuple(official.original_size)
    assert ours.input_size == tuple(official.input_size)
    np.testing.assert_allclose(
        ours.get_image_embedding().numpy(), official.get_image_embedding().numpy(), atol=TOLERANCE, rtol=0
    )


@pytest.mark.parametrize("case", list(PROMPTS))
def test_predict_matches_official(predictors, case):
    ours, official = predictors
    assert_same_outputs(ours.predict(**PROMPTS[case]), official.predict(**PROMPTS[case]))


def test_points_with_mask_input_match_official(predictors):
    ours, official = predictors
    _, _, previous = official.predict(point_coords=POINTS[:1], point_labels=LABELS[:1], multimask_output=True)
    mask_input = previous[:1]
    kwargs = dict(point_coords=POINTS, point_labels=LABELS, mask_input=mask_input, multimask_output=False)
    assert_same_outputs(ours.predict(**kwargs), official.predict(**kwargs))


def test_batched_prompts_match_official(predictors):
    ours, official = predictors
    generator = torch.Generator().manual_seed(3)
    h, w = ours.original_size
    batch = 6
    points = torch.rand(batch, 3, 2, generator=generator) * torch.tensor([w, h])
    labels = torch.randint(0, 2, (batch, 3), generator=generator)
    labels[::2, -1] = -1  # padding points in some rows
    boxes = torch.tensor(BOX, dtype=torch.float32).expand(batch, 4)
    size = ours.model.img_size
    points = scale_coords(points, (h, w), size)
    boxes = scale_coords(boxes, (h, w), size)
    # Random prompts put some pixels' logits within float noise of 0: compare full-size logits instead of bits.
    for kwargs in (
        dict(boxes=None, multimask_output=True, return_logits=True),
        dict(boxes=boxes, multimask_output=False, return_logits=True),
    ):
        assert_same_outputs(
            ours.predict_torch(points, labels, **kwargs), official.predict_torch(points, labels, **kwargs)
        )


def test_export_rebuilds_official_model(predictors, tmp_path):
    """sam.pth + sam_config.json rebuild, with the official classes, a model holding our exact weights."""
    ours, _ = predictors
    export_sam(ours.model, tmp_path)
    rebuilt = load_official_export(tmp_path)
    ours_state, rebuilt_state = ours.model.state_dict(), rebuilt.state_dict()
    assert list(ours_state) == list(rebuilt_state)
    for key, value in ours_state.items():
        assert torch.equal(value, rebuilt_state[key]), key
    # And it decodes the same masks from the same embedding.
    official = OfficialPredictor(rebuilt)
    official.features, official.is_image_set = ours.get_image_embedding(), True
    official.original_size, official.input_size = ours.original_size, ours.input_size
    kwargs = PROMPTS["box + points"]
    assert_same_outputs(ours.predict(**kwargs), official.predict(**kwargs))


def test_exported_tiny_model_runs_end_to_end_in_official_code(tmp_path):
    """Full official pipeline (its own encoder and pre-processing) on our export of the tiny model."""
    ours, _ = model_pair("tiny", seed=5)
    export_sam(ours, tmp_path)
    image = photograph()
    official = OfficialPredictor(load_official_export(tmp_path))
    official.set_image(image)
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    kwargs = PROMPTS["one point, multimask"]
    assert_same_outputs(predictor.predict(**kwargs), official.predict(**kwargs))


@pytest.mark.parametrize("size", [(600, 512), (37, 1500), (1, 1), (3, 128), (128, 128)])
def test_resize_shape_is_the_officials_and_never_zero(size):
    from segment_anything.utils.transforms import ResizeLongestSide

    from sam_engine.transforms import preprocess_shape

    for long_side in (128, 256, 1024):
        assert preprocess_shape(*size, long_side) == ResizeLongestSide.get_preprocess_shape(*size, long_side)
    assert preprocess_shape(1, 300, 128) == (1, 128)  # the official gives 0 rows here, and fails
    assert ResizeLongestSide.get_preprocess_shape(1, 300, 128) == (0, 128)
