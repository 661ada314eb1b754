"""SAM's prompt encoder: points, box corners and masks into sparse and dense embeddings.

Points and box corners get a random-Fourier positional encoding plus a learned embedding of their
type (negative point, positive point, top-left corner, bottom-right corner, or "not a point" for
padding). A mask prompt (the low-res logits of a previous prediction) is downscaled 4x by two strided
convolutions into a dense embedding the size of the image embedding; without one, a learned
"no mask" embedding is broadcast.
"""

from __future__ import annotations

import math

import torch
from timm.layers import LayerNorm2d
from torch import nn

# Point label convention (as SAM): -1 padding ("not a point"), 0 negative, 1 positive,
# 2 box top-left corner, 3 box bottom-right corner.
NOT_A_POINT = -1


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Tancik et al.), as SAM.

    The encoding is computed in float32 even under autocast: pixel coordinates lose their
    precision in bfloat16.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """... x 2 coordinates normalised to [0, 1] -> ... x 2*num_pos_feats."""
        with torch.autocast(device_type=coords.device.type, enabled=False):
            projected = (2 * coords.float() - 1) @ self.positional_encoding_gaussian_matrix.float()
            projected = 2 * math.pi * projected
            return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an h x w grid -> C x h x w."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # h x w x (x, y)
        return self.encode(coords).permute(2, 0, 1)

    def encode_pixels(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """B x N x 2 (x, y) pixel coordinates in an image of (H, W) -> B x N x C."""
        h, w = image_size
        scale = coords.new_tensor([1.0 / w, 1.0 / h], dtype=torch.float32)
        return self.encode(coords.float() * scale)


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Arguments:
        embed_dim: the prompt embedding dimension C.
        image_embedding_size: (h, w) of the image embedding.
        input_image_size: (H, W) of the padded model input (img_size x img_size).
        mask_in_chans: hidden channels of the mask downscaling convolutions.
    """

    num_point_embeddings = 4  # negative point, positive point, box top-left, box bottom-right

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid -> 1 x C x h x w."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """B x N x 2 pixel coordinates (model input frame) and B x N labels -> B x N x C.

        Labels follow SAM: -1 padding, 0 negative, 1 positive, 2/3 box corners.
        """
        encoding = self.pe_layer.encode_pixels(coords + 0.5, self.input_image_size)  # pixel centres
        type_table = torch.cat([e.weight for e in self.point_embeddings], dim=0)  # 4 x C
        labels = labels.long()
        type_embedding = type_table[labels.clamp(min=0)]
        is_padding = (labels == NOT_A_POINT).unsqueeze(-1)
        return torch.where(is_padding, self.not_a_point_embed.weight, encoding + type_embedding)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """B x 4 XYXY boxes (model input frame) -> B x 2 x C, one token per corner."""
        corners = boxes.reshape(-1, 2, 2)
        corner_labels = torch.tensor([2, 3], device=boxes.device).expand(corners.shape[0], 2)
        return self.embed_points(corners, corner_labels)

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """B x 1 x 4h x 4w mask logits -> B x C x h x w."""
        if tuple(masks.shape[-2:]) != self.mask_input_size:
            raise ValueError(
                f"mask_input must be B x 1 x {self.mask_input_size[0]} x {self.mask_input_size[1]} "
                f"(the low-res logits of a previous prediction), got {tuple(masks.shape)}"
            )
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed any combination of prompts.

        Arguments:
            points: (B x N x 2 coordinates, B x N labels) in the model input frame, or None.
            boxes: B x 4 XYXY in the model input frame, or None.
            masks: B x 1 x 4h x 4w mask logits, or None.
        Returns:
            sparse: B x T x C, T = N (+1 padding point when there is no box) (+2 box corners).
            dense: B x C x h x w; 1 x C x h x w (shared by every prompt) when no mask is given.
        """
        batch = next((t.shape[0] for t in (points and points[0], boxes, masks) if t is not None), 1)
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            coords, labels = points
            if boxes is None:
                # As SAM: a padding point stands in for the missing box.
                coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
                labels = torch.cat([labels, labels.new_full((batch, 1), NOT_A_POINT)], dim=1)
            sparse.append(self.embed_points(coords, labels))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1)

        if masks is not None:
            dense_embeddings = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense_embeddings = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
        return sparse_embeddings, dense_embeddings
