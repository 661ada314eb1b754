"""SAM's prompt encoder + mask decoder + mask post-processing as one ONNX graph, the interface of the official
``segment_anything.utils.onnx.SamOnnxModel`` (what CVAT's SAM interactor and SAM-in-the-browser tools load):

    inputs:  image_embeddings 1 x C x h x w (from the image encoder, run elsewhere: a server, or once per image)
             point_coords     1 x N x 2 float (x, y) in the model input frame (the image resized longest side to
                              img_size), with a padding point (0, 0) of label -1 when there is no box
             point_labels     1 x N float: 1 positive, 0 negative, 2 / 3 box corners, -1 padding
             mask_input       1 x 1 x 4h x 4w float: the low-res logits of a previous prediction
             has_mask_input   1 float: 1 to use mask_input, 0 to ignore it
             orig_im_size     2 float: (H, W) of the original image
    outputs: masks            1 x M x H x W float logits (threshold at 0)
             iou_predictions  1 x M float
             low_res_masks    1 x M x 4h x 4w float logits (the next prompt's mask_input)

M is 1 with ``return_single_mask`` (the single-mask output for several points or a box, the best of the
three ambiguity-aware outputs for one point, as the official model chooses), else 4. N is dynamic.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model import Sam
from sam_engine.utils.atomic_files import write_bytes_atomic

ONNX_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
ONNX_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
OPSET = 17  # the official export's


class OnnxDecoder(nn.Module):
    """The decoding half of a :class:`Sam` with ``SamOnnxModel``'s inputs and outputs (module docstring).

    Arguments:
        model: the model whose prompt encoder and mask decoder are wrapped (shared, not copied).
        return_single_mask: one output per prompt (M = 1) instead of all four (M = 4).
    """

    def __init__(self, model: Sam, return_single_mask: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = model.img_size
        self.return_single_mask = return_single_mask

    def _dense_embedding(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """1 x C x h x w: the embedded mask where ``has_mask_input`` is 1, the no-mask embedding where it is 0."""
        prompt_encoder = self.prompt_encoder
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * prompt_encoder.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask

    def _select(self, masks: torch.Tensor, scores: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The output the official model returns alone: the single-mask token (0) for more than two sparse
        points (several clicks or a box, plus padding), else the best-scored of the four, without control flow.
        masks 1 x 4 x 4h x 4w, scores 1 x 4 -> 1 x 1 x 4h x 4w, 1 x 1."""
        reweight = torch.zeros_like(scores)
        reweight[:, 0] = 1000.0
        best = torch.argmax(scores + (num_points - 2.5) * reweight, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best].unsqueeze(1), scores[rows, best].unsqueeze(1)

    def _upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """1 x M x 4h x 4w logits -> 1 x M x H x W: up to the padded input, the padding cut, then to (H, W)."""
        size = self.img_size
        masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
        orig_im_size = orig_im_size.to(torch.float32)
        resized = torch.floor(orig_im_size * (size / orig_im_size.max()) + 0.5).to(torch.int64)  # as the predictor
        masks = masks[..., : resized[0], : resized[1]]
        original = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(original[0], original[1]), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks (1 x M x H x W), their predicted IoUs (1 x M) and low-res logits (1 x M x 4h x 4w)."""
        prompt_encoder = self.prompt_encoder
        sparse = prompt_encoder.embed_points(point_coords, point_labels)
        dense = self._dense_embedding(mask_input, has_mask_input)
        masks, scores = self.mask_decoder.predict_all_masks(
            image_embeddings, prompt_encoder.get_dense_pe(), sparse, dense
        )
        if self.return_single_mask:
            masks, scores = self._select(masks, scores, point_coords.shape[1])
        return self._upscale(masks, orig_im_size), scores, masks


def example_inputs(decoder: OnnxDecoder, num_points: int = 5) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes for tracing (any values do)."""
    h, w = decoder.prompt_encoder.image_embedding_size
    return {
        "image_embeddings": torch.randn(1, decoder.prompt_encoder.embed_dim, h, w),
        "point_coords": torch.randint(0, decoder.img_size, (1, num_points, 2), dtype=torch.float32),
        "point_labels": torch.randint(-1, 4, (1, num_points), dtype=torch.float32),
        "mask_input": torch.randn(1, 1, 4 * h, 4 * w),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def export_decoder(model: Sam, path: str | Path, return_single_mask: bool = True, opset: int = OPSET) -> Path:
    """Write the decoding half of ``model`` as ONNX to ``path`` (the official interface; N dynamic).

    A copy of the decoding half (``model`` itself is left as it is) is traced on the CPU in float32
    (TorchScript exporter, as the official script); the file is checked with ``onnx.checker`` before it
    replaces ``path``.
    """
    import onnx  # the onnx extra: pip install 'sam_engine[onnx]'

    decoder = copy.deepcopy(OnnxDecoder(model, return_single_mask)).float().cpu().eval()
    buffer = _export_bytes(decoder, example_inputs(decoder), opset)
    onnx.checker.check_model(onnx.load_from_string(buffer))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer)
    return path


def _export_bytes(decoder: OnnxDecoder, inputs: dict[str, torch.Tensor], opset: int) -> bytes:
    """The ONNX file's bytes, N dynamic. The tracer warns where sizes pass through Python ints; the graph still
    follows other point counts and image sizes than the example's (``tests/test_onnx_export.py`` runs them)."""
    points = {1: "num_points"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            decoder, tuple(inputs.values()), buffer, input_names=list(ONNX_INPUTS), output_names=list(ONNX_OUTPUTS),
            dynamic_axes={"point_coords": points, "point_labels": points}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    return buffer.getvalue()
