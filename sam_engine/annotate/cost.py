"""How long a (simulated) person takes to annotate a mask.

SAM's stage 1 ("assisted-manual"): an annotator picks an object, clicks foreground/background
points while the model proposes a mask, then fixes what is left with a brush and an eraser.
Average time per mask fell from 34 s to 14 s as the model improved. The model here charges:

    seconds = seconds_per_mask + clicks * seconds_per_click + strokes * seconds_per_stroke

where ``strokes`` is the brushing needed to turn the last proposal into the intended mask:
``ceil(strokes_per_mask * (1 - IoU))`` (a whole mask by hand when nothing useful was proposed,
none when the proposal is exact). The defaults put an unassisted mask at 4 + 20 * 1.5 = 34 s,
the paper's starting point.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Strokes are counted up to this fraction of a stroke: an IoU stored as 0.95 in float32 is
# 0.94999999, and 20 * (1 - 0.94999999) must still be 1 stroke, not 2.
STROKE_ROUNDING = 1e-4


@dataclass(frozen=True)
class AnnotationTimeModel:
    """Seconds spent per mask, per click and per brush stroke (all non-negative).

    Attributes:
        seconds_per_mask: overhead of one mask: choosing the object, accepting the result.
        seconds_per_click: one foreground/background click.
        seconds_per_stroke: one brush or eraser stroke.
        strokes_per_mask: strokes to paint a whole mask by hand, from nothing.
    """

    seconds_per_mask: float = 4.0
    seconds_per_click: float = 1.5
    seconds_per_stroke: float = 1.5
    strokes_per_mask: int = 20

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"AnnotationTimeModel.{field.name} must be a non-negative number, got {value!r}")
        if not float(self.strokes_per_mask).is_integer():
            raise ValueError(
                f"AnnotationTimeModel.strokes_per_mask must be a whole number, got {self.strokes_per_mask}"
            )

    @property
    def unassisted_seconds(self) -> float:
        """Seconds for one mask painted entirely by hand (no model): 34.0 with the defaults."""
        return self.seconds_per_mask + self.strokes_per_mask * self.seconds_per_stroke

    def brush_strokes(self, iou: torch.Tensor) -> torch.Tensor:
        """Strokes to brush a mask of IoU ``iou`` with the intent into the intent.

        Arguments:
            iou: N float in [0, 1] (values outside are clipped).
        Returns:
            torch.Tensor: N int64, ``ceil(strokes_per_mask * (1 - iou))``: ``strokes_per_mask`` at
            IoU 0, 0 at IoU 1, never increasing with the IoU.
        """
        missing = 1.0 - torch.as_tensor(iou, dtype=torch.float32).clamp(0.0, 1.0)
        return torch.ceil(self.strokes_per_mask * missing - STROKE_ROUNDING).clamp(min=0).to(torch.int64)

    def seconds(self, clicks: torch.Tensor, strokes: torch.Tensor) -> torch.Tensor:
        """Seconds per mask for its clicks and strokes, overhead included.

        Arguments:
            clicks, strokes: N integers each (broadcastable).
        Returns:
            torch.Tensor: N float32.
        """
        clicks = torch.as_tensor(clicks, dtype=torch.float32)
        strokes = torch.as_tensor(strokes, dtype=torch.float32, device=clicks.device)
        return self.seconds_per_mask + clicks * self.seconds_per_click + strokes * self.seconds_per_stroke
