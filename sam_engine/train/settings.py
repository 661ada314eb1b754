"""The train command's settings and their checks, without torch: what ``sam-train`` refuses before it loads
anything (a value of the wrong type or range, named by its key), and the dataclasses of its ``simulation`` and
``optim`` groups (Hydra structured configs, so an unknown key or a wrong type is named too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from sam_engine.utils.config_checks import check_values, typed_config

LOSS_RESOLUTIONS = ("low_res", "input")


@dataclass(frozen=True)
class SimulationConfig:
    """How training simulates an annotator; defaults are the SAM paper's.

    ``loss_resolution``: ``"low_res"`` supervises the decoder's 4h x 4w logits against the truth
    area-downsampled to that grid (cheap); ``"input"`` up-samples the logits to the S x S input frame
    first (as SAM 2's trainer; 16x the pixels). Clicks are always drawn in the S x S frame, against the
    full-resolution truth and the up-sampled prediction, as an annotator would click.
    """

    num_click_rounds: int = 8  # 0: the initial prompt only, one decoder pass
    box_probability: float = 0.5
    mask_prompt_probability: float = 0.0
    box_noise_fraction: float = 0.1
    box_noise_max: float = 20.0
    loss_resolution: str = "low_res"
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, got {self.loss_resolution!r}")
        for name in ("box_probability", "mask_prompt_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule settings; defaults are the SAM paper's."""

    lr: float = 8e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 250
    milestones: tuple[int, ...] = (60000, 86666)
    gamma: float = 0.1
    layer_decay: float = 0.8
    freeze_image_encoder: bool = False


TRAIN_VALUES = {  # check_values' arguments for the train config's own keys (the dataclasses check theirs)
    "integers": {"seed": 0, "stage.max_steps": 0, "prompt_warmup_steps": 0, "checkpoint_every_n_steps": 1,
                 "eval.max_clicks": 1, "data.batch_size": 1, "data.val_batch_size": 1, "data.num_workers": 0,
                 "data.steps_per_epoch": 1, "data.max_masks_per_image": 0, "data.min_image_side": 1,
                 "data.shuffle_buffer": 0, "data.min_seen": 1},
    "numbers": {"gradient_clip_norm": (0.0, math.inf), "drop_path_rate": (0.0, 1.0), "eval.noc_threshold": (0.0, 1.0),
                "snapshot_every_minutes": (0.0, math.inf), "data.max_mask_fraction": (0.0, 1.0),
                "data.max_bad_fraction": (0.0, 1.0)},
    "booleans": ("validate_before_training", "grad_checkpointing", "data.pin_memory"),
    "nullable": ("gradient_clip_norm", "snapshot_every_minutes", "data.val_batch_size"),
}


def check_train_config(cfg: DictConfig) -> None:
    """Refuse a value of the wrong type or range (``stage.max_steps=abc``) before any work, naming its key."""
    check_values(cfg, **TRAIN_VALUES)
    typed_config(SimulationConfig, cfg.simulation, "simulation")
    typed_config(OptimConfig, cfg.optim, "optim")
