"""How far a validation mIoU can be trusted: a 95% interval from the spread of per-image means.

The masks of one image are not independent (one bad embedding spoils them all), so the interval is
taken over images: 1.96 x the standard deviation of the per-image mean IoUs / sqrt(images), the
normal approximation. Steps of a run whose mIoUs differ by less than this cannot be told apart.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

Z_95 = 1.96


class ImageMeanInterval(Metric):
    """Half-width of the 95% interval of a per-mask mean, from its per-image means; sums across ranks.

    ``update(values, image_index)``: values N float (one per mask), image_index N int64 (its image in
    the batch). ``compute()``: the half-width (nan with fewer than two images).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, image_index: torch.Tensor) -> None:
        images, index = torch.unique(image_index, return_inverse=True)
        totals = torch.zeros(len(images), dtype=torch.float64, device=values.device)
        totals.index_add_(0, index, values.double())
        counts = torch.bincount(index, minlength=len(images)).double()
        means = totals / counts
        self.sum += means.sum()
        self.sum_sq += means.square().sum()
        self.images += len(images)

    def compute(self) -> torch.Tensor:
        n = self.images.double()
        if n < 2:
            return torch.tensor(float("nan"), device=self.sum.device)
        variance = ((self.sum_sq - self.sum.square() / n) / (n - 1)).clamp(min=0.0)
        return (Z_95 * variance.sqrt() / n.sqrt()).float()
