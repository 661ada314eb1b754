"""Predictor behaviour beyond parity: input conversions, clear errors, bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import model_pair, photograph

from sam_engine.predict.predictor import SamPredictor, as_rgb_uint8


@pytest.fixture(scope="module")
def predictor():
    ours, _ = model_pair("tiny", seed=7)
    p = SamPredictor(ours)
    p.set_image(photograph())
    return p


def test_documented_image_conversions():
    rgb = photograph()
    gray = rgb[..., 0]
    assert np.array_equal(as_rgb_uint8(gray), np.stack([gray] * 3, axis=-1))
    assert np.array_equal(as_rgb_uint8(gray[..., None]), np.stack([gray] * 3, axis=-1))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    assert np.array_equal(as_rgb_uint8(rgba), rgb)
    assert np.array_equal(as_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(as_rgb_uint8(rgb[..., ::-1], image_format="BGR"), rgb)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10, 3), np.float32), "dtype float32 is not supported"),
        (np.zeros((10, 10, 2), np.uint8), "got shape"),
        (np.zeros((0, 10, 3), np.uint8), "image is empty"),
        ([[0, 1]], "must be a numpy array"),
    ],
)
def test_bad_images_are_refused(image, message):
    with pytest.raises((ValueError, TypeError), match=message):
        as_rgb_uint8(image)


def test_gray_image_gives_same_masks_as_its_rgb_copy(predictor):
    gray = photograph()[..., 1]
    p_gray, p_rgb = SamPredictor(predictor.model), SamPredictor(predictor.model)
    p_gray.set_image(gray)
    p_rgb.set_image(np.stack([gray] * 3, axis=-1))
    point = dict(point_coords=np.array([[200.0, 300.0]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(p_gray.predict(**point)[0], p_rgb.predict(**point)[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "no prompt given"),
        (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "N >= 1"),
        (dict(point_coords=np.array([[10.0, 10.0]])), "point_labels must be supplied"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 1])), r"must have shape \(1,\)"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([2])), "must be 1 .* or 0"),
        (dict(point_coords=np.array([[10.0, 10.0], [600.0, 5.0]]), point_labels=np.array([1, 1])),
         r"point 1 at \(x, y\) = \(600.0, 5.0\) lies outside the 512x600 image"),
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "point 0 .* outside"),
        (dict(box=np.array([300.0, 10.0, 100.0, 200.0])), "x1 <= x2"),
        (dict(box=np.array([10.0, 10.0, 100.0, 700.0])), "outside the 512x600 image"),
        (dict(box=np.array([10.0, 10.0, 100.0])), "4 numbers"),
        (dict(mask_input=np.zeros((1, 32, 32), np.float32)), r"mask_input must be B x 1 x 64 x 64"),
        (dict(mask_input=np.full((1, 64, 64), np.nan, np.float32)), "mask_input holds NaN, infinite or implausible"),
        (dict(mask_input=np.full((1, 64, 64), np.inf, np.float32)), "mask_input holds NaN, infinite or implausible"),
        (dict(mask_input=np.full((1, 64, 64), 1e30, np.float32)), "mask_input holds NaN, infinite or implausible"),
    ],
)
def test_bad_prompts_are_refused(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_predict_before_set_image_is_an_error(predictor):
    fresh = SamPredictor(predictor.model)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))


@pytest.mark.parametrize(("points", "boxes", "message"), [
    ([[[500.0, 5.0]]], None, "a point lies outside the model's 128 x 128 input frame"),
    ([[[-1e6, -1e6]]], None, "a point lies outside"),
    ([[[float("nan"), 5.0]]], None, "a point lies outside"),
    (None, [[0.0, 0.0, 10.0, 1e9]], "a box lies outside"),
])
def test_prompts_in_the_input_frame_are_checked_by_the_batched_calls_too(predictor, points, boxes, message):
    labels = None if points is None else torch.ones(1, 1, dtype=torch.int)
    with pytest.raises(ValueError, match=message):
        predictor.predict_torch(None if points is None else torch.tensor(points), labels,
                                None if boxes is None else torch.tensor(boxes))
    padded = torch.tensor([[[10.0, 10.0], [0.0, 0.0]]]), torch.tensor([[1, -1]])  # padding: label -1
    assert predictor.predict_torch(*padded)[1].isfinite().all()


def test_a_failed_set_image_forgets_the_previous_image():
    ours, _ = model_pair("tiny", seed=7)
    fresh = SamPredictor(ours)
    fresh.set_image(photograph())
    with pytest.raises(ValueError):
        fresh.set_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(RuntimeError, match="set_image"):  # not the previous photograph's masks
        fresh.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))


def test_point_on_the_image_edge_is_accepted(predictor):
    masks, scores, low_res = predictor.predict(point_coords=np.array([[512.0, 600.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 600, 512) and scores.shape == (3,) and low_res.shape == (3, 64, 64)


def test_return_logits_thresholds_to_the_masks(predictor):
    point = dict(point_coords=np.array([[250.0, 250.0]]), point_labels=np.array([1]))
    masks, _, _ = predictor.predict(**point)
    logits, _, _ = predictor.predict(**point, return_logits=True)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits > 0, masks)


def test_bf16_autocast_matches_fp32_closely(predictor):
    """bf16 autocast (the CUDA default) runs on CPU too; its masks stay close to float32's."""
    bf16 = SamPredictor(predictor.model, precision="bf16")
    bf16.set_image(photograph())
    assert bf16.get_image_embedding().dtype == torch.bfloat16
    point = dict(point_coords=np.array([[250.0, 250.0]]), point_labels=np.array([1]))
    masks_bf16, scores_bf16, _ = bf16.predict(**point)
    masks_fp32, scores_fp32, _ = predictor.predict(**point)
    assert masks_bf16.dtype == bool and scores_bf16.dtype == np.float32
    agreement = (masks_bf16 == masks_fp32).mean()
    assert agreement > 0.97, agreement
    np.testing.assert_allclose(scores_bf16, scores_fp32, atol=0.1)


def test_unknown_precision_is_refused(predictor):
    with pytest.raises(ValueError, match="precision must be one of"):
        SamPredictor(predictor.model, precision="fp8")
