"""Building variants, strict checkpoint loading with clear errors, and export."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import randomize

from sam_engine.model import CheckpointError, SamConfig, build_sam, export_sam, load_export, load_variant
from sam_engine.model.official import build_official_sam


@pytest.mark.parametrize("variant", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_state_dict_keys_and_shapes_equal_official(variant):
    ours = {k: tuple(v.shape) for k, v in build_sam(variant).state_dict().items()}
    official = {k: tuple(v.shape) for k, v in build_official_sam(variant).state_dict().items()}
    assert ours == official


def test_variant_sizes():
    params = {v: sum(p.numel() for p in build_sam(v).parameters()) for v in ("tiny", "vit_b")}
    assert 2e6 < params["tiny"] < 8e6  # a few million: the CPU default
    assert 90e6 < params["vit_b"] < 95e6  # SAM ViT-B: 93.7M
    tiny = load_variant("tiny")
    assert (tiny.img_size, tiny.embedding_size, tiny.low_res_size) == (128, 16, 64)


def test_forward_shapes_tiny():
    model = build_sam("tiny")
    embeddings = model.encode_images(model.preprocess(torch.rand(2, 3, 128, 96) * 255))
    assert embeddings.shape == (2, 128, 16, 16)
    points = (torch.rand(5, 2, 2) * 128, torch.ones(5, 2, dtype=torch.int))
    logits, iou = model.predict_masks(embeddings[:1], points=points, multimask_output=True)
    assert logits.shape == (5, 3, 64, 64) and iou.shape == (5, 3)
    # One embedding per prompt works too (training decodes many images' masks at once).
    logits, iou = model.predict_masks(embeddings[[0, 1, 1, 0, 1]], points=points, multimask_output=False)
    assert logits.shape == (5, 1, 64, 64)


def test_unknown_variant_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model variant 'vit_x'.*tiny.*vit_b.*vit_h.*vit_l"):
        build_sam("vit_x")


def test_config_rejects_unknown_keys_and_bad_shapes():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['embed_dims'\]"):
        build_sam({"embed_dims": 768})
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        SamConfig(img_size=1000)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("img_size", "256", "img_size '256' is not a positive integer"),
    ("num_heads", 0, "num_heads 0 is not a positive integer"),
    ("depth", True, "depth True is not a positive integer"),
    ("global_attn_indexes", None, "global_attn_indexes None is not a list of integers"),
    ("global_attn_indexes", ["2"], r"global_attn_indexes \['2'\] is not a list of integers"),
    ("pixel_std", [58.4, 0.0, 57.4], "pixel_std .* is not three finite numbers, all positive"),
    ("pixel_mean", [1.0, 2.0], "pixel_mean .* is not three finite numbers"),
    ("mlp_ratio", float("nan"), "mlp_ratio nan is not a positive number"),
    ("mask_threshold", "0", "mask_threshold '0' is not a finite number"),
])
def test_an_export_config_of_wrong_types_is_an_error_naming_the_file_and_the_field(tmp_path, key, value, message):
    export_sam(build_sam("tiny"), tmp_path)
    config = json.loads((tmp_path / "sam_config.json").read_text())
    (tmp_path / "sam_config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=f"sam_config.json: model config 'tiny': {message}"):
        load_export(tmp_path)
    (tmp_path / "sam_config.json").write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(ValueError, match="sam_config.json: not valid JSON"):
        load_export(tmp_path)


def test_a_config_node_of_a_command_is_a_valid_model_config():
    from omegaconf import OmegaConf

    node = OmegaConf.create(load_variant("tiny").to_dict())  # lists are ListConfig, as sam-label passes them
    assert SamConfig.from_mapping(node) == load_variant("tiny")


@pytest.mark.parametrize(("change", "message"), [
    (lambda w: w.long(), r"not floating point: mask_decoder.iou_token.weight: torch.int64"),
    (lambda w: w.index_fill(0, torch.tensor([0]), float("nan")),
     "NaN or infinite values: mask_decoder.iou_token.weight"),
])
def test_weights_not_floating_point_or_not_finite_are_refused_by_name(tmp_path, change, message):
    state = build_sam("tiny").state_dict()
    state["mask_decoder.iou_token.weight"] = change(state["mask_decoder.iou_token.weight"])
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        build_sam("tiny", checkpoint=tmp_path / "bad.pth")
    state = build_sam("tiny").state_dict()
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "half.pth")  # another precision loads
    assert build_sam("tiny", checkpoint=tmp_path / "half.pth").mask_decoder.iou_token.weight.dtype == torch.float32


def test_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    model = randomize(build_sam("tiny"), seed=1)
    export_sam(model, tmp_path)
    rebuilt = load_export(tmp_path)
    assert rebuilt.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    config = json.loads((tmp_path / "sam_config.json").read_text())
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "global_attn_indexes",
                "window_size", "prompt_embed_dim", "mask_threshold"):
        assert config[key] == getattr(model.config, key) or config[key] == list(getattr(model.config, key))
    # The export is a bare state dict: exactly the model's keys, no wrapper.
    assert set(torch.load(tmp_path / "sam.pth", weights_only=True)) == set(model.state_dict())
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_an_export_whose_weights_changed_since_is_refused(tmp_path):
    export_sam(randomize(build_sam("tiny"), seed=2), tmp_path)
    digest, name = (tmp_path / "sam.pth.sha256").read_text().split()
    assert name == "sam.pth" and len(digest) == 64  # sha256sum -c reads it
    weights = bytearray((tmp_path / "sam.pth").read_bytes())
    weights[len(weights) // 2] ^= 0x01  # one bit, inside a tensor's bytes: torch.load takes it
    (tmp_path / "sam.pth").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match=r"sam.pth: its SHA-256 is not the one in .*sam.pth.sha256"):
        load_export(tmp_path)
    (tmp_path / "sam.pth.sha256").unlink()  # an export made before checksums: loaded as it is
    load_export(tmp_path)


def test_checkpoint_with_missing_and_extra_keys_is_named(tmp_path):
    state = build_sam("tiny").state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.surprise"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as error:
        build_sam("tiny", checkpoint=tmp_path / "bad.pth")
    message = str(error.value)
    assert "bad.pth" in message
    assert "missing keys: mask_decoder.iou_token.weight" in message
    assert "unexpected keys: mask_decoder.surprise" in message


def test_checkpoint_of_another_variant_is_recognised(tmp_path):
    torch.save(build_sam("tiny").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError) as error:
        build_sam("vit_b", checkpoint=tmp_path / "tiny.pth")
    message = str(error.value)
    assert "does not fit model 'vit_b'" in message
    assert "embed_dim 192, depth 6 (variant tiny)" in message
    assert "missing keys: image_encoder.blocks.10." in message
    assert "image_encoder.patch_embed.proj.weight: checkpoint (192, 3, 8, 8) vs model (768, 3, 16, 16)" in message


def test_unreadable_and_wrapped_checkpoints(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        build_sam("tiny", checkpoint=tmp_path / "junk.pth")
    torch.save({"state_dict": build_sam("tiny").state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(CheckpointError, match="expected a bare state dict"):
        build_sam("tiny", checkpoint=tmp_path / "wrapped.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_sam("tiny", checkpoint=tmp_path / "nowhere.pth")


def test_official_checkpoint_loads_strictly(tmp_path):
    """A checkpoint saved by the official code (as Meta's release) loads into ours with strict=True."""
    official = randomize(build_official_sam("tiny"), seed=2)
    torch.save(official.state_dict(), tmp_path / "official.pth")
    ours = build_sam("tiny", checkpoint=tmp_path / "official.pth")
    for key, value in official.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key


def timm_encoder(img_size: int):
    """timm's own SAM ViT (its Mlp names fc1/fc2) with the tiny variant's shape and random weights."""
    from functools import partial

    from timm.models.vision_transformer_sam import VisionTransformerSAM

    torch.manual_seed(3)
    encoder = VisionTransformerSAM(
        img_size=img_size, patch_size=8, embed_dim=192, depth=6, num_heads=3, window_size=8, global_attn_indexes=(2, 5),
        use_rel_pos=True, neck_chans=128, num_classes=0, global_pool="",
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )
    with torch.no_grad():
        for param in encoder.parameters():
            param.normal_(0, 0.05)
    return encoder


def test_timm_encoder_weights_load_exactly(tmp_path):
    from safetensors.torch import save_file

    from sam_engine.model.build import load_timm_encoder

    encoder = timm_encoder(128)
    assert any(".mlp.fc1." in key for key in encoder.state_dict())
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, tmp_path / "model.safetensors")
    model = build_sam("tiny")
    load_timm_encoder(model, tmp_path / "model.safetensors")
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(image), encoder.forward_features(image))


def test_timm_encoder_weights_of_another_size_are_resampled(tmp_path):
    from sam_engine.model.build import load_timm_encoder

    encoder = timm_encoder(256)  # 32x32 grid, global rel-pos tables of 63
    torch.save(encoder.state_dict(), tmp_path / "encoder.pth")
    model = build_sam("tiny")  # 16x16 grid
    load_timm_encoder(model, tmp_path / "encoder.pth")
    assert model.image_encoder.pos_embed.shape == (1, 16, 16, 192)
    assert model.image_encoder.blocks[2].attn.rel_pos_h.shape == (31, 64)
    assert torch.equal(model.image_encoder.blocks[0].mlp.lin1.weight, encoder.blocks[0].mlp.fc1.weight)


def test_timm_encoder_weights_of_another_width_are_refused(tmp_path):
    from sam_engine.model.build import load_timm_encoder

    torch.save(build_sam("vit_b").state_dict(), tmp_path / "vit_b.pth")  # an official-format checkpoint
    expected = r"(?s)encoder weights do not fit model 'tiny'.*unexpected keys: blocks.10.*shape mismatches"
    with pytest.raises(CheckpointError, match=expected):
        load_timm_encoder(build_sam("tiny"), tmp_path / "vit_b.pth")


def test_fresh_attention_keys_start_mimetic():
    from sam_engine.model.transformer import Attention

    model = build_sam("tiny")
    attentions = [m for m in model.mask_decoder.modules() if isinstance(m, Attention)]
    assert len(attentions) == 7  # 2 blocks x (self, token->image, image->token) + the final attention
    for attention in attentions:
        product = attention.q_proj.weight.T @ attention.k_proj.weight
        assert product.diagonal().mean().item() == pytest.approx(1.0, rel=1e-4)
        assert product.diagonal().min().item() > 0  # every input direction matches itself
    for block in model.image_encoder.blocks:
        query, key, _ = block.attn.qkv.weight.chunk(3, dim=0)
        assert (query.T @ key).diagonal().mean().item() == pytest.approx(1.0, rel=1e-4)
    # A point's token attends most to its own image location at initialisation.
    pe = model.prompt_encoder
    grid = pe.get_dense_pe()[0].flatten(1).T  # (16*16) x C, row-major over the 16 x 16 grid
    point = torch.tensor([[[200.0, 56.0]]])  # x, y in the 256 px frame: cell (row 3, column 12)
    token = pe.pe_layer.encode_pixels(point, (256, 256))[0]  # 1 x C
    attention = attentions[-1]  # final token -> image attention
    scores = attention.q_proj(token) @ attention.k_proj(grid).T
    assert divmod(scores.argmax().item(), 16) == (3, 12)


@pytest.mark.parametrize(
    "query_shape, key_shape",
    [
        ((3, 7, 256), (3, 300, 256)),  # tokens -> per-prompt image: folded into the queries
        ((3, 7, 256), (1, 300, 256)),  # tokens -> shared image: the image projected once
        ((3, 300, 256), (3, 7, 256)),  # per-prompt image -> tokens: folded into the keys
        ((1, 300, 256), (3, 7, 256)),  # shared image -> tokens
        ((3, 18, 256), (3, 300, 256)),  # 8 heads x 18 tokens >= 128: projected as usual
    ],
)
@pytest.mark.parametrize("encodings", [False, True])
@pytest.mark.parametrize("grad", [True, False])
def test_attention_equals_official_whichever_side_is_folded(query_shape, key_shape, encodings, grad):
    """Values and gradients; with ``encodings``, q_pe and k_pe given apart equal adding them first."""
    from segment_anything.modeling.transformer import Attention as OfficialAttention

    from sam_engine.model.transformer import Attention

    torch.manual_seed(0)
    ours = Attention(256, 8, downsample_rate=2)
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_(0, 0.1)
    official = OfficialAttention(256, 8, downsample_rate=2)
    official.load_state_dict(ours.state_dict())
    q = torch.randn(query_shape, requires_grad=True)
    k = torch.randn(key_shape, requires_grad=True)
    q_pe, k_pe = (torch.randn(1, *shape[1:]) if encodings else torch.zeros(1, *shape[1:])
                  for shape in (query_shape, key_shape))
    batch = max(query_shape[0], key_shape[0])
    with torch.set_grad_enabled(grad):  # without a gradient, the encodings' scores are added in place
        expected = official((q + q_pe).expand(batch, -1, -1), (k + k_pe).expand(batch, -1, -1),
                            k.expand(batch, -1, -1))
        got = ours(q, k, k, q_pe=q_pe, k_pe=k_pe) if encodings else ours(q, k, k)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    if not grad:
        return
    (expected_q_grad, expected_w_grad) = torch.autograd.grad(expected.square().sum(), (q, official.q_proj.weight))
    (q_grad, w_grad) = torch.autograd.grad(got.square().sum(), (q, ours.q_proj.weight))
    for got_grad, expected_grad in ((q_grad, expected_q_grad), (w_grad, expected_w_grad)):  # sums of many terms
        assert (got_grad - expected_grad).abs().max() <= 1e-4 * expected_grad.abs().max()


def test_transformer_returns_the_tokens_asked_for():
    """``returned_tokens``: the first tokens of the full output, the image unchanged."""
    torch.manual_seed(0)
    transformer = randomize(build_sam("tiny"), seed=0).mask_decoder.transformer
    image, pe, tokens = torch.randn(1, 128, 16, 16), torch.randn(1, 128, 16, 16), torch.randn(3, 7, 128)
    with torch.no_grad():
        all_tokens, all_image = transformer(image, pe, tokens)
        first_tokens, image_out = transformer(image, pe, tokens, returned_tokens=5)
    assert first_tokens.shape == (3, 5, 128)
    torch.testing.assert_close(first_tokens, all_tokens[:, :5], rtol=1e-5, atol=1e-6)
    assert torch.equal(image_out, all_image)


def test_confident_attention_weights_drop_subnormals_only():
    from sam_engine.model.transformer import _softmax

    scores = torch.tensor([[0.0, -50.0, -95.0, -100.0, -200.0]])  # e^-95 ~ 5e-42 is subnormal, e^-50 not
    weights = _softmax(scores, dim=-1)
    expected = scores.softmax(dim=-1)
    assert 0 < expected[0, 2] < torch.finfo(torch.float32).tiny  # the case it exists for
    assert weights[0, 2:].eq(0).all()
    assert torch.equal(weights[0, :2], expected[0, :2])


def decoder_outputs(variant: str, batch: int):
    """A decoder with random weights, and its transformer's outputs for ``batch`` random prompts."""
    torch.manual_seed(0)
    model = build_sam(variant)
    randomize(model, seed=0)
    c, side = model.config.prompt_embed_dim, model.config.embedding_size
    image = torch.randn(batch, c, side, side)
    sparse = torch.randn(batch, 2, c)
    tokens, image = model.mask_decoder.run_transformer(image, model.prompt_encoder.get_dense_pe(), sparse,
                                                       torch.zeros(1, c, side, side))
    return model.mask_decoder, tokens, image


def test_channels_last_upscaling_equals_the_transposed_convolutions():
    decoder, tokens, image = decoder_outputs("tiny", 3)
    with torch.no_grad():
        nchw = image.permute(0, 3, 1, 2)
        expected = decoder.output_upscaling(nchw)  # 3 x C/8 x 4h x 4w, the official layers
        hyper = torch.stack([mlp(tokens[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        expected_logits = torch.einsum("bmc,bchw->bmhw", hyper, expected)
        logits = decoder.predict_mask_logits(tokens, image)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_selected_masks_equal_those_of_all_masks_in_chunks_of_any_size(monkeypatch):
    import sam_engine.model.common as common

    decoder, tokens, image = decoder_outputs("tiny", 5)
    prompt, output = torch.tensor([0, 0, 2, 3, 3, 3]), torch.tensor([1, 3, 0, 1, 2, 3])
    with torch.no_grad():
        everything = decoder.predict_mask_logits(tokens, image)  # 5 x 4 x 64 x 64
        for chunk_bytes in (1, 2 * 4 * 16 * 16 * 16 * 16, 2**30):  # one prompt per chunk, two, all
            monkeypatch.setattr(common, "CPU_CHUNK_BYTES", chunk_bytes)
            selected = decoder.predict_selected_mask_logits(tokens, image, prompt, output)
            torch.testing.assert_close(selected, everything[prompt, output], rtol=1e-5, atol=1e-6)
        none = decoder.predict_selected_mask_logits(tokens, image, prompt[:0], output[:0])
    assert none.shape == (0, 64, 64)


def test_batch_chunk_fills_the_cpu_budget_and_gives_a_gpu_the_batch():
    from sam_engine.model.common import CPU_CHUNK_BYTES, batch_chunk

    assert batch_chunk(torch.device("cpu"), CPU_CHUNK_BYTES // 4, 64) == 4
    assert batch_chunk(torch.device("cpu"), 10 * CPU_CHUNK_BYTES, 64) == 1  # never 0
    assert batch_chunk(torch.device("cuda"), CPU_CHUNK_BYTES, 64) == 64


@pytest.mark.parametrize("input_size, original_size", [((128, 128), (128, 128)), ((128, 85), (128, 85)),
                                                       ((128, 85), (600, 400))])
def test_postprocess_equals_sams_two_interpolations(input_size, original_size):
    import torch.nn.functional as F

    model = build_sam("tiny")
    low_res = torch.randn(2, 3, 64, 64) * 10
    expected = F.interpolate(low_res, (128, 128), mode="bilinear", align_corners=False)
    expected = expected[..., : input_size[0], : input_size[1]]
    expected = F.interpolate(expected, original_size, mode="bilinear", align_corners=False)
    got = model.postprocess_masks(low_res, input_size, original_size)
    assert got.shape == (2, 3, *original_size) and got.is_contiguous()
    assert torch.equal(got, expected)  # the second interpolation, skipped at equal sizes, is the identity
