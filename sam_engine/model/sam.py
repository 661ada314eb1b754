"""The SAM model: image encoder, prompt encoder and mask decoder, with SAM's pre- and post-processing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model.common import batch_chunk
from sam_engine.model.config import SamConfig
from sam_engine.model.image_encoder import ImageEncoder
from sam_engine.model.mask_decoder import MaskDecoder
from sam_engine.model.prompt_encoder import PromptEncoder
from sam_engine.model.transformer import TwoWayTransformer
from sam_engine.transforms import normalize_and_pad


class Sam(nn.Module):
    """Segment Anything. Parameter names and shapes equal those of the official ``segment_anything.Sam``.

    Typical use: ``embeddings = sam.encode_images(sam.preprocess(images))`` once per image, then
    ``sam.predict_masks(embeddings, points=..., boxes=..., mask_inputs=...)`` for any number of prompts.
    """

    image_format = "RGB"

    def __init__(self, config: SamConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.mask_threshold = config.mask_threshold
        side = config.embedding_size
        self.image_encoder = ImageEncoder(config, drop_path_rate=drop_path_rate)
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(side, side),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )
        # Not persistent: absent from the state dict, as in the official checkpoints.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x h x w resized images, values 0..255 -> B x 3 x S x S normalised and padded."""
        return normalize_and_pad(images, self.img_size, self.pixel_mean, self.pixel_std)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S preprocessed images -> B x C x h x w image embeddings."""
        return self.image_encoder(images)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks for B prompts.

        Arguments:
            image_embeddings: 1 x C x h x w (one image, shared) or B x C x h x w (one per prompt).
            points: (B x N x 2 (x, y) in the model input frame, B x N labels), or None.
            boxes: B x 4 XYXY in the model input frame, or None.
            mask_inputs: B x 1 x 4h x 4w logits of a previous prediction, or None.
            multimask_output: three ambiguity-aware masks if True, else one.
        Returns:
            low_res_logits: B x M x 4h x 4w, M = 3 or 1.
            iou_predictions: B x M.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def predict_confident_masks(
        self, image_embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor], min_iou: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The multimask outputs of B point prompts whose predicted IoU exceeds ``min_iou``.

        Equal to ``predict_masks(..., multimask_output=True)`` followed by the IoU filter, but the masks
        (the decoder's up-scaling, its costliest part) are computed only for prompts with an output kept.
        On a CPU, the prompts are decoded a few at a time (``common.batch_chunk``): the transformer's
        additions and norms over their image activations are memory-bound.

        Arguments:
            image_embeddings: 1 x C x h x w. points: (B x N x 2, B x N) in the model input frame.
        Returns:
            prompt, output: K int64, which prompt and which of its 3 outputs (in that order: prompt-major);
            low_res_logits: K x 4h x 4w; iou_predictions: K.
        """
        _, channels, height, width = image_embeddings.shape
        coords, labels = points
        chunk = batch_chunk(image_embeddings.device, 4 * channels * height * width, len(coords))
        parts = [
            self._predict_confident_chunk(image_embeddings, (coords[i : i + chunk], labels[i : i + chunk]), min_iou, i)
            for i in range(0, len(coords), chunk)
        ]
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def _predict_confident_chunk(
        self, image_embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor], min_iou: float, first: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``predict_confident_masks`` for one chunk of prompts, numbered from ``first``."""
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=None)
        decoder = self.mask_decoder
        tokens, image = decoder.run_transformer(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)
        iou = decoder.predict_iou(tokens)[:, 1:]
        prompt, output = (iou > min_iou).nonzero(as_tuple=True)  # prompt-major: prompt is sorted
        logits = decoder.predict_selected_mask_logits(tokens, image, prompt, output + 1)
        return prompt + first, output, logits, iou[prompt, output]

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits -> logits at the original image size (padding removed), as SAM.

        Arguments:
            masks: B x M x 4h x 4w logits.
            input_size: (h, w) of the resized image before padding.
            original_size: (H, W) of the original image.
        Returns:
            B x M x H x W logits (float32).
        """
        masks = F.interpolate(masks.float(), (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(input_size) == tuple(original_size):  # the identity (weights 1 and 0): skip its pass
            return masks.contiguous()
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
