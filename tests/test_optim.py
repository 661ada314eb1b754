"""SAM's optimiser: layer-wise lr decay, weight-decay exclusions, warm-up and step schedule, freezing."""

from __future__ import annotations

import pytest
import torch

from sam_engine.model import build_sam
from sam_engine.train.optim import build_optimizer, lr_factor, param_groups
from sam_engine.train.settings import OptimConfig


@pytest.fixture(scope="module")
def model():
    return build_sam("tiny")


def group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_layer_wise_decay_and_weight_decay(model):
    config = OptimConfig(lr=1e-3, layer_decay=0.5, weight_decay=0.1)
    groups = param_groups(model, config)
    depth = model.config.depth  # 6
    encoder = model.image_encoder
    assert group_of(groups, encoder.patch_embed.proj.weight)["lr"] == pytest.approx(1e-3 * 0.5 ** (depth + 1))
    assert group_of(groups, encoder.blocks[0].attn.qkv.weight)["lr"] == pytest.approx(1e-3 * 0.5**depth)
    assert group_of(groups, encoder.blocks[5].mlp.lin1.weight)["lr"] == pytest.approx(1e-3 * 0.5)
    assert group_of(groups, encoder.neck[0].weight)["lr"] == pytest.approx(1e-3)
    assert group_of(groups, model.mask_decoder.iou_token.weight)["lr"] == pytest.approx(1e-3)
    # Decay on matrices; none on biases, norms, positions and embeddings.
    assert group_of(groups, encoder.blocks[0].attn.qkv.weight)["weight_decay"] == 0.1
    for param in (encoder.blocks[0].attn.qkv.bias, encoder.blocks[0].norm1.weight, encoder.pos_embed,
                  encoder.blocks[0].attn.rel_pos_h, model.mask_decoder.mask_tokens.weight):
        assert group_of(groups, param)["weight_decay"] == 0.0
    # Every trainable parameter is in exactly one group.
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_schedule_warmup_then_steps():
    factors = [lr_factor(s, warmup_steps=4, milestones=(10, 20), gamma=0.1) for s in (0, 1, 3, 9, 10, 19, 20, 50)]
    assert factors == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_drives_every_group(model):
    config = OptimConfig(lr=1e-2, warmup_steps=2, milestones=(3,), layer_decay=0.5)
    optimizer, scheduler = build_optimizer(model, config)
    seen = []
    for _ in range(4):
        seen.append([g["lr"] / (config.lr * g["lr_scale"]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for factors, expected in zip(seen, (0.5, 1.0, 1.0, 0.1), strict=True):
        assert factors == pytest.approx([expected] * len(factors))
    assert optimizer.defaults["betas"] == (0.9, 0.999)


def test_the_fused_update_takes_adamws_steps():
    """On the CPU the update is PyTorch's fused AdamW, and it moves every weight as the per-tensor one does."""
    config = OptimConfig(lr=1e-2, warmup_steps=0, milestones=(), layer_decay=0.5)
    fused_model, reference_model = build_sam("tiny"), build_sam("tiny")
    reference_model.load_state_dict(fused_model.state_dict())
    start = fused_model.mask_decoder.iou_token.weight.detach().clone()
    optimizer, _ = build_optimizer(fused_model, config)
    reference = torch.optim.AdamW(param_groups(reference_model, config), lr=config.lr, foreach=False)
    assert optimizer.defaults["fused"] and not reference.defaults["fused"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(fused_model.parameters(), reference_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        optimizer.step()
        reference.step()
    for (name, a), b in zip(fused_model.named_parameters(), reference_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(fused_model.mask_decoder.iou_token.weight, start)  # the steps moved the weights


def test_freeze_image_encoder():
    frozen = build_sam("tiny")
    groups = param_groups(frozen, OptimConfig(freeze_image_encoder=True))
    grouped = {id(p) for g in groups for p in g["params"]}
    assert not any(p.requires_grad for p in frozen.image_encoder.parameters())
    assert not any(id(p) in grouped for p in frozen.image_encoder.parameters())
    assert all(id(p) in grouped for p in frozen.mask_decoder.parameters())
