"""The model behind the annotation page: a person's prompts on an image -> the model's masks.

Each image is encoded once (the last ``cache_size`` images keep their embedding: a person going back and
forth does not wait for the encoder again); every prompt after that costs one decoder call. A refinement
(a click after the first, a box with clicks) gives the decoder the low-res logits of the mask the person
saw last as mask prompt, as SAM's interactive training and the simulated annotator do; those logits stay
on the server under a token the page sends back.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sam_engine.model.sam import Sam
from sam_engine.predict.predictor import EmbeddedImage, SamPredictor


@dataclass
class Candidate:
    """One mask the model proposes: H x W bool, its predicted IoU, the token of its low-res logits."""

    mask: np.ndarray
    score: float
    token: str


class Segmenter:
    """Masks for prompts on images addressed by key; safe to call from several request threads.

    Arguments:
        model: the model, on the device it runs on, in eval mode.
        cache_size: images whose embedding is kept.
        logits_kept: low-res logits kept for refinements (the newest; about 4 x 256 x 256 bytes each at vit_b).
    """

    def __init__(self, model: Sam, cache_size: int = 4, logits_kept: int = 64) -> None:
        self.predictor = SamPredictor(model)
        self.cache_size = cache_size
        self.logits_kept = logits_kept
        self._lock = threading.Lock()
        self._embedded: OrderedDict[str, EmbeddedImage] = OrderedDict()
        self._logits: OrderedDict[str, tuple[str, torch.Tensor]] = OrderedDict()  # token -> (key, 1 x L x L)

    def embed(self, key: str, image: Callable[[], np.ndarray]) -> None:
        """Encode the image of ``key`` unless its embedding is cached (``image()`` gives H x W x 3 uint8)."""
        with self._lock:
            self._use(key, image)

    def segment(self, key: str, image: Callable[[], np.ndarray], points: np.ndarray, labels: np.ndarray,
                box: np.ndarray | None, previous: str | None) -> list[Candidate]:
        """The model's masks for one prompt set on the image of ``key``.

        Arguments:
            points: N x 2 (x, y) pixels of the image; labels: N, 1 foreground, 0 background (N may be 0).
            box: 4 numbers XYXY in pixels, or None.
            previous: the token of the mask shown before this prompt (its logits are the mask prompt), or None.
        Returns:
            Three candidates for a single click without a previous mask (the person picks), else one.
        Raises:
            ValueError: no prompt, or a point or box outside the image.
        """
        with self._lock:
            self._use(key, image)
            mask_input = None
            if previous is not None and previous in self._logits and self._logits[previous][0] == key:
                mask_input = self._logits[previous][1].numpy()
            multimask = len(points) == 1 and box is None and mask_input is None
            masks, scores, low_res = self.predictor.predict(
                point_coords=points if len(points) else None, point_labels=labels if len(points) else None,
                box=box, mask_input=mask_input, multimask_output=multimask,
            )  # C x H x W bool, C, C x L x L
            candidates = []
            for mask, score, logits in zip(masks, scores, low_res, strict=True):
                token = secrets.token_urlsafe(12)
                self._logits[token] = (key, torch.from_numpy(logits)[None])
                candidates.append(Candidate(mask, float(score), token))
            while len(self._logits) > self.logits_kept:
                self._logits.popitem(last=False)
            return candidates

    def _use(self, key: str, image: Callable[[], np.ndarray]) -> None:
        """Make ``key`` the predictor's image: from the cache, or encoded now (and cached)."""
        if key in self._embedded:
            self._embedded.move_to_end(key)
            self.predictor.use_embedded_image(self._embedded[key])
            return
        self.predictor.set_image(image())
        self._embedded[key] = self.predictor.embedded_image()
        while len(self._embedded) > self.cache_size:
            self._embedded.popitem(last=False)
