"""``sam-onnx-export``: the decoder as ONNX with the official interface, run by onnxruntime against our PyTorch
decoder and the official ``SamOnnxModel`` on the same weights (a trained tiny export, and ViT-B)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from segment_anything.utils.onnx import SamOnnxModel

from sam_engine.model import build_sam, load_export
from sam_engine.model.official import official_twin
from sam_engine.onnx_export.decoder import ONNX_INPUTS, ONNX_OUTPUTS, OnnxDecoder, export_decoder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(disk_export, tmp_path_factory) -> dict[str, tuple]:
    """{variant: (model, ONNX file with all four outputs, ONNX file with one)}: the trained tiny export through
    the command, ViT-B (fresh weights: its decoder is ViT-L's and ViT-H's) through the library."""
    root = tmp_path_factory.mktemp("onnx")
    command = [sys.executable, "-m", "sam_engine.onnx_export", f"checkpoint={disk_export}",
               f"hydra.run.dir={root / 'hydra'}"]
    files = {}
    for single in (False, True):
        out = root / f"tiny_{single}.onnx"
        done = subprocess.run([*command, f"out={out}", f"return_single_mask={str(single).lower()}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        files[single] = out
    torch.manual_seed(0)
    vit_b = build_sam("vit_b").eval()
    vit_b_files = [export_decoder(vit_b, root / f"vit_b_{s}.onnx", return_single_mask=s) for s in (False, True)]
    return {"tiny": (load_export(disk_export), files[False], files[True]), "vit_b": (vit_b, *vit_b_files)}


def prompts(model, case: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The ONNX inputs of one prompt, as a tool sends them: clicks end with the padding point (0, 0, -1)."""
    h, w = model.prompt_encoder.image_embedding_size
    size = model.img_size
    clicks = torch.tensor(rng.uniform(0, size, (1, 3, 2)), dtype=torch.float32)
    box = torch.tensor([[[0.2 * size, 0.3 * size], [0.7 * size, 0.9 * size]]], dtype=torch.float32)
    padding = torch.zeros(1, 1, 2)
    coords, labels = {
        "one click": (torch.cat([clicks[:, :1], padding], 1), [[1, -1]]),
        "three clicks": (torch.cat([clicks, padding], 1), [[1, 0, 1, -1]]),
        "box and click": (torch.cat([clicks[:, :1], box], 1), [[1, 2, 3]]),
        "click and mask": (torch.cat([clicks[:, :1], padding], 1), [[1, -1]]),
    }[case]
    has_mask = case == "click and mask"
    return {
        "image_embeddings": torch.tensor(rng.standard_normal((1, model.config.prompt_embed_dim, h, w)),
                                         dtype=torch.float32),
        "point_coords": coords,
        "point_labels": torch.tensor(labels, dtype=torch.float32),
        "mask_input": torch.tensor(rng.standard_normal((1, 1, 4 * h, 4 * w)) * 5 * has_mask, dtype=torch.float32),
        "has_mask_input": torch.tensor([float(has_mask)]),
        "orig_im_size": torch.tensor([375.0, 500.0] if case != "box and click" else [900.0, 300.0]),
    }


def max_differences(ours, reference) -> list[float]:
    return [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ours, reference, strict=True)]


def test_the_file_has_the_official_interface(exported):
    for variant, (_, all_outputs, single) in exported.items():
        for path in (all_outputs, single):
            graph = onnx.load(path).graph
            onnx.checker.check_model(onnx.load(path))
            assert tuple(i.name for i in graph.input) == ONNX_INPUTS, variant
            assert tuple(o.name for o in graph.output) == ONNX_OUTPUTS, variant
            points = graph.input[1].type.tensor_type.shape.dim[1]
            assert points.dim_param == "num_points"  # any number of points


@pytest.mark.parametrize("variant", ["tiny", "vit_b"])
@pytest.mark.parametrize("case", ["one click", "three clicks", "box and click", "click and mask"])
def test_onnxruntime_matches_our_decoder_and_the_official_one(exported, variant, case):
    model, all_outputs, single = exported[variant]
    inputs = prompts(model, case, np.random.default_rng(len(case)))
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    official = official_twin(model).eval()
    for path, return_single_mask in ((all_outputs, False), (single, True)):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_outputs = session.run(None, feed)
        ours = OnnxDecoder(model, return_single_mask)(**inputs)
        theirs = SamOnnxModel(official, return_single_mask=return_single_mask)(**inputs)
        assert onnx_outputs[0].shape == (1, 1 if return_single_mask else 4, *inputs["orig_im_size"].int().tolist())
        assert max(max_differences(onnx_outputs, ours)) < TOLERANCE
        assert max(max_differences(onnx_outputs, theirs)) < TOLERANCE
        assert (onnx_outputs[0] > 0).any() and (onnx_outputs[0] < 0).any()  # real masks, not a constant


def test_the_onnx_decoder_is_our_predictor_s_decoding(exported):
    """Its single-mask and multimask outputs are what ``Sam.predict_masks`` gives the same prompt (the padding
    point added by our prompt encoder, where a tool sends it itself)."""
    model, all_outputs, _ = exported["tiny"]
    inputs = prompts(model, "three clicks", np.random.default_rng(0))
    _, _, low_res = onnxruntime.InferenceSession(str(all_outputs), providers=["CPUExecutionProvider"]).run(
        None, {name: tensor.numpy() for name, tensor in inputs.items()})
    points = (inputs["point_coords"][:, :-1], inputs["point_labels"][:, :-1])
    with torch.no_grad():
        single, _ = model.predict_masks(inputs["image_embeddings"], points=points, multimask_output=False)
        multi, _ = model.predict_masks(inputs["image_embeddings"], points=points, multimask_output=True)
    assert max(max_differences([low_res[:, :1], low_res[:, 1:]], [single, multi])) < TOLERANCE


def test_a_bad_value_is_refused_by_key(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sam_engine.onnx_export", "checkpoint=x", "opset=abc",
                           f"out={tmp_path / 'd.onnx'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "opset='abc': expected an integer >= 17" in done.stderr
    assert not (tmp_path / "d.onnx").exists()
    assert not Path("decoder.onnx").exists()
