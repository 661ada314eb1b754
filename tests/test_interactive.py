"""The simulated interaction: 11 passes, the prompts each pass sees, reproducibility, evaluation."""

from __future__ import annotations

import pytest
import torch

from sam_engine.model import build_sam
from sam_engine.train.interactive import simulate_training
from sam_engine.train.settings import SimulationConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam("tiny").train()


SIZE = 128  # the tiny model's input frame


def square_masks(n: int, size: int = SIZE) -> torch.Tensor:
    """n masks of squares of different sizes and places: N x size x size bool."""
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        x, y, side = 5 + 11 * i, 15 + 5 * i, 12 + 4 * i
        masks[i, y : y + side, x : x + side] = True
    return masks


class DecoderSpy:
    """Records, for every mask-decoder call, the prompt encoder's inputs and the decoder's settings."""

    def __init__(self, model):
        self.calls = []
        self.handles = [
            model.prompt_encoder.register_forward_hook(self._prompts, with_kwargs=True),
            model.mask_decoder.register_forward_hook(self._decoder, with_kwargs=True),
        ]
        self._pending = None

    def _prompts(self, module, args, kwargs, output):
        self._pending = {name: kwargs[name] for name in ("points", "boxes", "masks")}

    def _decoder(self, module, args, kwargs, output):
        self.calls.append(dict(self._pending, multimask=kwargs["multimask_output"], logits=output[0].detach()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def run(model, config, seed=0, n=6):
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100))
    embeddings = model.encode_images(images)
    image_index = torch.tensor([0, 1] * (n // 2))
    generator = torch.Generator().manual_seed(seed)
    return simulate_training(model, embeddings, image_index, square_masks(n), config, generator)


def test_eleven_passes_with_the_previous_mask_as_prompt(model):
    with DecoderSpy(model) as spy:
        run(model, SimulationConfig(box_probability=1.0))
    assert len(spy.calls) == 11
    first, rest = spy.calls[0], spy.calls[1:]
    assert first["boxes"] is not None and first["points"] is None and first["masks"] is None
    # Each later pass gets the previous pass's best logits back as its mask prompt, detached.
    for previous, call in zip(spy.calls, rest, strict=False):
        assert call["masks"] is not None and not call["masks"].requires_grad
        assert torch.equal(call["masks"][:, 0], previous["logits"][:, 0])  # single output: the only one
    # 8 passes add a click, 2 do not (one of them the last); the box stays.
    clicks = [0 if c["points"] is None else c["points"][0].shape[1] for c in spy.calls]
    assert clicks[-1] == clicks[-2] == 8
    added = [b - a for a, b in zip(clicks, clicks[1:], strict=False)]
    assert sorted(added) == [0, 0] + [1] * 8 and added[-1] == 0
    assert all(not c["multimask"] for c in spy.calls)


def test_a_noisy_ground_truth_mask_can_be_the_first_prompt(model):
    """SAM's training sometimes gives a mask as the first prompt (``mask_prompt_probability``)."""
    with DecoderSpy(model) as spy:
        run(model, SimulationConfig(box_probability=1.0, mask_prompt_probability=1.0))
    prompt = spy.calls[0]["masks"]  # n x 1 x L x L logits, beside the box
    low_res = model.config.low_res_size
    assert prompt is not None and prompt.shape == (6, 1, low_res, low_res)
    truth = torch.nn.functional.interpolate(square_masks(6)[:, None].float(), size=low_res, mode="area")[:, 0] >= 0.5
    shown = prompt[:, 0] > 0
    iou = (shown & truth).flatten(1).sum(1) / (shown | truth).flatten(1).sum(1)
    assert (iou > 0.4).all() and (iou < 0.95).all()  # the mask, its boundary corrupted (squares of 6-16 px)
    near = torch.nn.functional.max_pool2d(truth[:, None].float(), kernel_size=7, stride=1, padding=3)[:, 0] > 0
    assert not (shown & ~near).any()  # nothing more than 3 px away from the mask
    with DecoderSpy(model) as spy:
        run(model, SimulationConfig(box_probability=1.0, mask_prompt_probability=0.0))
    assert spy.calls[0]["masks"] is None


def test_point_started_masks_use_three_outputs_only_for_the_single_point(model):
    with DecoderSpy(model) as spy:
        run(model, SimulationConfig(box_probability=0.0))
    assert len(spy.calls) == 11
    single_point = [c["points"][0].shape[1] == 1 for c in spy.calls]
    assert [c["multimask"] for c in spy.calls] == single_point
    assert single_point[0] and not single_point[-1]
    # The first click lies inside its mask, and is positive.
    points, labels = spy.calls[0]["points"]
    assert (labels == 1).all()
    masks = square_masks(6)
    x, y = points[:, 0].round().long().unbind(-1)
    assert masks[torch.arange(6), y, x].all()


def test_mixed_batch_decodes_two_groups_per_pass(model):
    with DecoderSpy(model) as spy:
        result = run(model, SimulationConfig(box_probability=0.5), n=8)
    assert len(spy.calls) == 22
    assert int(result.num_masks) == 8
    assert sum(len(c["logits"]) for c in spy.calls[:2]) == 8


def test_reproducible_under_a_seed(model):
    config = SimulationConfig()
    with torch.no_grad():
        a, b, c = run(model, config, seed=1), run(model, config, seed=1), run(model, config, seed=2)
    assert torch.equal(a.total, b.total)
    assert not torch.equal(a.total, c.total)


def test_masks_too_small_for_the_loss_grid_are_left_out(model):
    masks = square_masks(2)
    masks[1] = False
    masks[1, 100, 100] = True  # one pixel: nothing on the 64 x 64 loss grid
    embeddings = model.encode_images(torch.randn(1, 3, SIZE, SIZE))
    result = simulate_training(
        model, embeddings, torch.zeros(2, dtype=torch.long), masks, SimulationConfig(), torch.Generator().manual_seed(0)
    )
    assert int(result.num_masks) == 1 and torch.isfinite(result.total)


def test_no_masks_contributes_nothing(model):
    embeddings = model.encode_images(torch.randn(1, 3, SIZE, SIZE))
    result = simulate_training(
        model, embeddings, torch.zeros(0, dtype=torch.long), torch.zeros(0, SIZE, SIZE, dtype=torch.bool),
        SimulationConfig(), torch.Generator().manual_seed(0),
    )
    assert int(result.num_masks) == 0 and float(result.total) == 0.0


def test_loss_matches_the_loss_of_each_pass(model):
    """The returned terms are the mean over passes of multimask_loss on each pass's outputs."""
    from sam_engine.train.interactive import downsample_masks
    from sam_engine.train.losses import multimask_loss

    with DecoderSpy(model) as spy:
        with torch.no_grad():
            result = run(model, SimulationConfig(box_probability=1.0))
    targets = downsample_masks(square_masks(6), 64)
    per_pass = [
        multimask_loss(c["logits"], torch.zeros(6, 1), targets, num_masks_total=1.0) for c in spy.calls
    ]
    expected_focal = sum(t.focal for t in per_pass) / 11
    expected_dice = sum(t.dice for t in per_pass) / 11
    torch.testing.assert_close(result.focal, expected_focal)
    torch.testing.assert_close(result.dice, expected_dice)


def test_evaluation_protocol_with_a_decoder_that_knows_the_truth(monkeypatch):
    """A fake decoder whose first multimask output is the truth but whose IoU head prefers another
    (empty) output; single-mask passes return the truth. So: 1-click IoU 0 as SAM would choose,
    ~1 for the oracle, ~1 from click 2 on, and a ~perfect box (bilinear up-sampling of the low-res
    truth rounds off one pixel at each corner)."""
    import sam_engine.train.interactive as interactive
    from sam_engine.metrics.interactive import clicks_to_reach

    masks = torch.zeros(3, 256, 256, dtype=torch.bool)
    for i, (y, x, side) in enumerate([(8, 8, 40), (100, 60, 64), (160, 160, 32)]):
        masks[i, y : y + side, x : x + side] = True  # aligned to the 4-px low-res cells: exact at 1/4
    truth_logits = 10.0 * (2 * interactive.downsample_masks(masks, 64).float() - 1)[:, None]

    def fake_decode(model, embeddings, points, labels, boxes, mask_logits, multimask, use_mask=None):
        if not multimask:
            return interactive.Decoded(truth_logits, torch.ones(3, 1))
        empty = torch.full_like(truth_logits, -10.0)
        return interactive.Decoded(torch.cat([truth_logits, empty, empty], 1), torch.tensor([[0.2, 0.9, 0.1]] * 3))

    monkeypatch.setattr(interactive, "decode", fake_decode)
    embeddings = torch.zeros(1, 128, 16, 16)
    result = interactive.evaluate_interactive(
        build_sam("tiny"), embeddings, torch.zeros(3, dtype=torch.long), masks, torch.ones_like(masks), max_clicks=5
    )
    assert result.ious[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert result.first_click_oracle.tolist() == pytest.approx([1.0] * 3, abs=0.01)
    assert result.ious[:, 1:].min() > 0.99
    assert clicks_to_reach(result.ious, 0.9, 20).tolist() == [2, 2, 2]
    assert result.box.tolist() == pytest.approx([1.0] * 3, abs=0.01)
    # IoU head error on click 1: |0.2 - ~1| + |0.9 - 0| + |0.1 - 0| over 3 outputs.
    torch.testing.assert_close(result.iou_pred_error, torch.full((3,), 1.8 / 3), atol=0.01, rtol=0)
