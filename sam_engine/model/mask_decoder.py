"""SAM's mask decoder: output tokens + prompt tokens + image embedding -> masks and IoU scores.

One IoU token and ``num_multimask_outputs + 1`` mask tokens are prepended to the prompt tokens and
run through the two-way transformer with the image embedding. The image embedding is upscaled 4x by
transposed convolutions; each mask token, through its own hypernetwork MLP, gives the weights of a
dot product with the upscaled embedding: one low-res mask per token. The IoU token, through an MLP,
predicts each mask's IoU. Token 0 is the single-mask output; tokens 1..3 the ambiguity-aware outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from sam_engine.model.common import batch_chunk
from sam_engine.model.transformer import TwoWayTransformer


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (SAM's ``layers.{i}`` naming)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from image and prompt embeddings."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
            image_embeddings: 1 x C x h x w (shared by every prompt) or B x C x h x w (one per prompt).
            image_pe: 1 x C x h x w.
            sparse_prompt_embeddings: B x T x C.
            dense_prompt_embeddings: B x C x h x w.
            multimask_output: the three ambiguity-aware masks if True, else the single-mask output.
        Returns:
            masks: B x M x 4h x 4w logits, M = 3 or 1.
            iou_pred: B x M.
        """
        masks, iou_pred = self.predict_all_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_all_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All 1 + num_multimask_outputs outputs: B x 4 x 4h x 4w logits and B x 4 IoU predictions."""
        tokens, image = self.run_transformer(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)
        return self.predict_mask_logits(tokens, image), self.predict_iou(tokens)

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer over the output tokens, the prompts and the image (arguments as ``forward``;
        dense_prompt_embeddings may be 1 x C x h x w, shared).

        Returns:
            tokens: B x (1 + 4) x C, the IoU token and the mask tokens (the prompt tokens' outputs are never
            read, so the transformer's final attention skips them);
            image: B x h x w x C (channels last: the transformer's layout, no copy).
        """
        batch = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, batch):
            raise ValueError(
                f"image_embeddings has batch {image_embeddings.shape[0]}; expected 1 or {batch} (one per prompt)"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings  # batch 1 when both are shared by every prompt
        _, c, h, w = src.shape
        tokens, image = self.transformer(src, image_pe, tokens, returned_tokens=len(output_tokens))
        return tokens, image.view(batch, h, w, c)

    def predict_iou(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x 4 IoU predictions of the four outputs, from ``run_transformer``'s tokens."""
        return self.iou_prediction_head(tokens[:, 0])

    def predict_mask_logits(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """B x 4 x 4h x 4w mask logits of the four outputs, from ``run_transformer``'s tokens and image.

        An ONNX export traces the plain form (every prompt up-scaled at once, no data-dependent chunks)."""
        batch, outputs = tokens.shape[0], self.num_mask_tokens
        if torch.onnx.is_in_onnx_export():
            _, h, w, _ = image.shape
            logits = self.upscale(image) @ self._hypernetwork_weights(tokens).transpose(1, 2)  # B x 16hw x 4
            return _mask_grid(logits.transpose(1, 2).reshape(-1, 16 * h * w), h, w).view(batch, outputs, 4 * h, 4 * w)
        prompt = torch.arange(batch, device=tokens.device).repeat_interleave(outputs)
        output = torch.arange(outputs, device=tokens.device).repeat(batch)
        logits = self.predict_selected_mask_logits(tokens, image, prompt, output)
        return logits.view(batch, outputs, *logits.shape[1:])

    def predict_selected_mask_logits(
        self, tokens: torch.Tensor, image: torch.Tensor, prompt: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """The logits of the masks (prompt[k], output[k]) only; the up-scaling runs for the prompts named.

        On a CPU, prompts are up-scaled a few at a time (``common.batch_chunk``), so their activations
        stay in the processor's cache between the layers.

        Arguments:
            tokens: B x T x C and image: B x h x w x C, from ``run_transformer``.
            prompt: K int64, non-decreasing; output: K int64 in 0..3 (0: the single-mask output).
        Returns:
            K x 4h x 4w logits.
        """
        hyper_in = self._hypernetwork_weights(tokens)
        _, h, w, channels = image.shape
        prompts, masks_per_prompt = prompt.unique_consecutive(return_counts=True)
        chunk = batch_chunk(image.device, 4 * 16 * h * w * (channels // 8), len(prompts))
        parts, first = [image.new_zeros(0, 16 * h * w)], 0  # (no mask selected: K = 0)
        for start in range(0, len(prompts), chunk):
            rows, counts = prompts[start : start + chunk], masks_per_prompt[start : start + chunk]
            features = self.upscale(image.index_select(0, rows))  # n x 16hw x C/8
            logits = features @ hyper_in[rows].transpose(1, 2)  # n x 16hw x 4
            local = torch.arange(len(rows), device=rows.device).repeat_interleave(counts)
            parts.append(logits[local, :, output[first : first + len(local)]])  # k x 16hw
            first += len(local)
        return _mask_grid(torch.cat(parts), h, w)

    def _hypernetwork_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x T x C tokens -> B x 4 x C/8: each output token's MLP (one fixed loop over the four)."""
        mask_tokens = tokens[:, 1 : 1 + self.num_mask_tokens]
        return torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)

    def upscale(self, image: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` in the channels-last layout: n x h x w x C -> n x 16hw x C/8.

        A transposed convolution of kernel 2 and stride 2 is a linear map of each pixel to its 2 x 2 output
        pixels: one matrix product, and the channel LayerNorm then runs over contiguous memory. Row
        ``16 (i w + j) + 8 dy1 + 4 dx1 + 2 dy2 + dx2`` holds output pixel (4i + 2 dy1 + dy2, 4j + 2 dx1 + dx2).
        """
        first, norm, gelu, second, last_gelu = self.output_upscaling
        n, h, w, channels = image.shape
        x = torch.addmm(_pixel_bias(first), image.reshape(-1, channels), _pixel_weight(first))
        x = gelu(F.layer_norm(x.view(-1, first.out_channels), (first.out_channels,), norm.weight, norm.bias, norm.eps))
        x = last_gelu(torch.addmm(_pixel_bias(second), x, _pixel_weight(second)))
        return x.view(n, 16 * h * w, second.out_channels)


def _mask_grid(logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """K x 16hw logits in ``upscale``'s row order -> K x 4h x 4w: each pixel's 16 values are laid out (dy1, dx1,
    dy2, dx2), row 4i + 2 dy1 + dy2, column 4j + 2 dx1 + dx2."""
    return logits.view(-1, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, 4 * h, 4 * w)


def _pixel_weight(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A 2 x 2, stride-2 transposed convolution's weight as a matrix: C_in x (2 x 2 x C_out), (dy, dx, c)."""
    return conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1)


def _pixel_bias(conv: nn.ConvTranspose2d) -> torch.Tensor:
    """Its bias, repeated for the 2 x 2 output pixels: (2 x 2 x C_out)."""
    return conv.bias.repeat(4)
