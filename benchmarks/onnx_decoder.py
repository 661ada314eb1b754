"""Time one click's decoding with the exported ONNX decoder (onnxruntime, CPU) against our PyTorch decoder and
the official ``SamOnnxModel`` in PyTorch, on the same weights: the part of click-to-mask that runs per click
once the image embedding is cached (the image encoder runs once per image).

    python benchmarks/onnx_decoder.py --variants tiny vit_b --runs 50

Prints, per variant and image size, the median milliseconds of each and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from segment_anything.utils.onnx import SamOnnxModel
from timing import median_seconds

from sam_engine.model import build_sam
from sam_engine.model.official import official_twin
from sam_engine.onnx_export.decoder import OnnxDecoder, export_decoder


def median_ms(fn, runs: int) -> float:
    return 1000 * median_seconds(fn, torch.device("cpu"), runs)


def one_click(model, original: tuple[int, int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    h, w = model.prompt_encoder.image_embedding_size
    click = rng.uniform(0, model.img_size, (1, 1, 2))
    return {
        "image_embeddings": torch.tensor(rng.standard_normal((1, model.config.prompt_embed_dim, h, w)),
                                         dtype=torch.float32),
        "point_coords": torch.tensor(np.concatenate([click, np.zeros((1, 1, 2))], 1), dtype=torch.float32),
        "point_labels": torch.tensor([[1.0, -1.0]]),
        "mask_input": torch.zeros(1, 1, 4 * h, 4 * w),
        "has_mask_input": torch.tensor([0.0]),
        "orig_im_size": torch.tensor(original, dtype=torch.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--sizes", nargs="+", default=["480x640", "1500x2250"], help="original image sizes HxW")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)
    print(f"{args.threads} threads; one click + padding point, return_single_mask=true; median of {args.runs}")
    print("variant  image       onnxruntime  ours (torch)  official (torch)  ours/onnx  official/onnx")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            torch.manual_seed(0)
            model = build_sam(variant).eval()
            official = SamOnnxModel(official_twin(model).eval(), return_single_mask=True)
            ours = OnnxDecoder(model, return_single_mask=True)
            path = export_decoder(model, Path(tmp) / f"{variant}.onnx")
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for size in args.sizes:
                inputs = one_click(model, tuple(int(s) for s in size.split("x")), rng)
                feed = {name: tensor.numpy() for name, tensor in inputs.items()}
                onnx_ms = median_ms(partial(session.run, None, feed), args.runs)
                with torch.no_grad():
                    ours_ms = median_ms(partial(ours, **inputs), args.runs)
                    official_ms = median_ms(partial(official, **inputs), args.runs)
                print(f"{variant:8} {size:11} {onnx_ms:9.1f} ms {ours_ms:10.1f} ms {official_ms:13.1f} ms"
                      f" {ours_ms / onnx_ms:10.2f} {official_ms / onnx_ms:14.2f}")


if __name__ == "__main__":
    main()
