"""The LightningModule that trains SAM by simulated interaction and validates it interactively.

Per training batch: every image is encoded once, its masks (up to the loader's cap per image) go
through the 11 supervised decoder passes of ``interactive.simulate_training``, and the loss is
divided by the number of masks across all ranks (so the gradient does not depend on the world size).
Optimisation is manual so that a non-finite loss skips the step on every rank at once (a rank that
skips alone would hang the others); after ``max_consecutive_nonfinite`` such steps the run stops.

Validation logs ``val/miou_1pt`` (one click at the point farthest from the boundary, output chosen
by predicted IoU) and ``val/miou_1pt_oracle`` (best of the three), ``val/miou_box``, ``val/miou_5pt``
(clicks at the centre of the largest error region), ``val/noc90`` (clicks to reach IoU 0.9, capped at
``eval_max_clicks``), ``val/iou_mae`` (the IoU head's mean absolute error on the first click) and
``val/miou_1pt_ci95`` (half-width of the 1-click mIoU's 95% interval over validation images).

Under FSDP (``trainer=fsdp``, ``sam_engine.train.distributed.SamFSDPStrategy``) Lightning does not run
``training_step`` as the forward of the root FSDP module, as it otherwise would: FSDP1 allows no backward
pass inside a forward (Lightning issue #19685). ``training_step`` sends the batch through the root module
(``forward``), then runs the backward pass and the step.
"""

from __future__ import annotations

import logging
import zlib
from contextlib import nullcontext
from dataclasses import replace

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel
from torchmetrics import MeanMetric

from sam_engine.data.loader import Batch
from sam_engine.metrics.interactive import clicks_to_reach
from sam_engine.metrics.interval import ImageMeanInterval
from sam_engine.model import Sam
from sam_engine.train.interactive import TrainingLoss, evaluate_interactive, simulate_training
from sam_engine.train.optim import build_optimizer
from sam_engine.train.settings import OptimConfig, SimulationConfig

log = logging.getLogger(__name__)

VAL_METRICS = ("miou_1pt", "miou_1pt_oracle", "miou_box", "miou_5pt", "noc90", "iou_mae")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps with a non-finite loss."""


class InteractiveSamModule(LightningModule):
    """Trains ``model`` as SAM was trained.

    Arguments:
        model: the SAM model (its weights already initialised: export, checkpoint or fresh).
        simulation: how the annotator is simulated and the loss weighted (default: SAM's).
        optim: optimiser and schedule (default: SAM's).
        seed: all prompt sampling derives from (seed, step, rank): a seeded run is reproducible.
        prompt_warmup_steps: the first steps decode the initial prompt only (one pass, no clicks), as
            ``num_click_rounds=0``; the interactive passes start after. A model trained from scratch
            first has to learn where its prompt is; until it does, its masks are empty and the error
            clicks drawn from them only repeat the first click, at 11 times the cost of a step.
        gradient_clip_norm: clip the global gradient norm to this (None: no clipping).
        grad_checkpointing: recompute the image encoder's activations in the backward pass.
        max_consecutive_nonfinite: stop after this many skipped steps in a row.
        eval_max_clicks, noc_threshold: the NoC protocol (SAM/RITM: 20 clicks, IoU 0.9).
    """

    def __init__(
        self,
        model: Sam,
        simulation: SimulationConfig | None = None,
        optim: OptimConfig | None = None,
        *,
        seed: int = 0,
        prompt_warmup_steps: int = 0,
        gradient_clip_norm: float | None = 1.0,
        grad_checkpointing: bool = False,
        max_consecutive_nonfinite: int = 5,
        eval_max_clicks: int = 20,
        noc_threshold: float = 0.9,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model.train()  # build_sam returns eval mode; Lightning keeps the mode it is given
        self.simulation = simulation or SimulationConfig()
        self.optim = optim or OptimConfig()
        self.seed = seed
        self.prompt_warmup_steps = prompt_warmup_steps
        self.gradient_clip_norm = gradient_clip_norm
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.eval_max_clicks = eval_max_clicks
        self.noc_threshold = noc_threshold
        self.consecutive_nonfinite = 0
        self.skipped_steps = 0
        model.image_encoder.set_grad_checkpointing(grad_checkpointing)
        self.val_metrics = torch.nn.ModuleDict({name: MeanMetric() for name in VAL_METRICS})
        self.val_interval_1pt = ImageMeanInterval()

    def _fsdp_root(self) -> torch.nn.Module | None:
        """The root FSDP module that holds this module's weights in shards, or None (not FSDP)."""
        strategy = self.trainer.strategy
        return strategy.model if isinstance(strategy, FSDPStrategy) else None

    def configure_optimizers(self):
        # Under FSDP the parameters are flat shards until a forward pass gathers them; their full shapes
        # (which decide the weight decay) are back inside summon_full_params, with the same Parameter objects.
        root = self._fsdp_root()
        with nullcontext() if root is None else FullyShardedDataParallel.summon_full_params(root, writeback=False):
            optimizer, scheduler = build_optimizer(self.model, self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _generator(self) -> torch.Generator:
        """A generator for this step and rank: resuming at step k replays the prompts of step k."""
        key = zlib.crc32(f"{self.seed}/{self.global_step}/{self.global_rank}".encode())
        return torch.Generator(device=self.device).manual_seed(key)

    def _global_sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(value.float(), reduce_op="sum")

    def _all_parameters_term(self) -> torch.Tensor | float:
        """0 x the sum of every trainable parameter: every parameter gets a (zero) gradient, so DDP
        never waits for one a step did not use (e.g. the multimask tokens in an all-box batch).

        0 under FSDP, which needs no such term (it reduces whole flat parameters, the unused parts as zeros)
        and where the parameters of a block outside its forward are flat shards, not the weights.
        """
        if self._fsdp_root() is not None:
            return 0.0
        return 0.0 * sum(p.sum() for p in self.model.parameters() if p.requires_grad)

    @staticmethod
    def _masks_of(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid masks of a batch, flattened: image index N and masks N x S x S."""
        image_index, mask_index = batch.mask_valid.nonzero(as_tuple=True)
        return image_index, batch.masks[image_index, mask_index]

    def forward(self, batch: Batch) -> TrainingLoss:
        """The loss terms of a training batch: its images encoded once, its masks through the simulation.

        ``total`` includes 0 x the image embeddings: every FSDP unit (the encoder blocks, the root) takes
        part in the backward pass on every rank, also on one whose batch has no usable mask.
        """
        image_index, gt_masks = self._masks_of(batch)
        embeddings = self.model.encode_images(batch.image)
        result = simulate_training(
            self.model, embeddings, image_index, gt_masks, self._simulation_now(), self._generator()
        )
        return result._replace(total=result.total + 0.0 * embeddings.sum())

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        root = self._fsdp_root()
        result = self(batch) if root is None else root(batch)
        global_masks = self._global_sum(result.num_masks)
        normaliser = (global_masks / self.trainer.world_size).clamp(min=1.0)
        loss = result.total / normaliser + self._all_parameters_term()

        finite = self.trainer.strategy.reduce(torch.isfinite(loss).float(), reduce_op="min") > 0
        if finite:
            self.consecutive_nonfinite = 0
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if self.gradient_clip_norm is not None:
                self._clip_gradient_norm(optimizer)
            optimizer.step()
            scheduler.step()
        else:
            self._skip_step(loss)

        size = len(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in (("focal", result.focal), ("dice", result.dice), ("iou_mse", result.iou)):
            self.log(f"train/{name}", value.detach() / normaliser, batch_size=size, sync_dist=True)
        last_iou = result.last_iou / result.num_masks.clamp(min=1)
        self.log("train/iou_last_pass", last_iou, batch_size=size, sync_dist=True)
        self.log("train/masks", global_masks, batch_size=size, reduce_fx="sum")
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=size)
        self.log("train/lr", optimizer.param_groups[-1]["lr"], batch_size=size)
        self.log("data/bad_samples", float(batch.num_bad), batch_size=size, reduce_fx="sum", sync_dist=True)

    def _clip_gradient_norm(self, optimizer) -> None:
        """Scale the gradients so that their global norm is at most ``gradient_clip_norm``.

        Under FSDP each rank holds a shard of the gradients: only the root FSDP module can compute their
        global norm (Lightning's FSDP precision plugin refuses ``clip_gradients(..., "norm")`` for that reason).
        """
        root = self._fsdp_root()
        if root is None:
            self.clip_gradients(optimizer, self.gradient_clip_norm, gradient_clip_algorithm="norm")
        else:
            root.clip_grad_norm_(self.gradient_clip_norm)

    def _simulation_now(self) -> SimulationConfig:
        """The simulation of this step: the initial prompt alone during the prompt warm-up."""
        if self.global_step < self.prompt_warmup_steps:
            return replace(self.simulation, num_click_rounds=0)
        return self.simulation

    def _skip_step(self, loss: torch.Tensor) -> None:
        self.consecutive_nonfinite += 1
        self.skipped_steps += 1
        log.warning("step %d: non-finite loss (%s) on some rank; step skipped (%d in a row)",
                    self.global_step, loss.item(), self.consecutive_nonfinite)
        if self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive training steps had a non-finite loss (last at step "
                f"{self.global_step}); lower the learning rate or check the data"
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Interactive metrics of the batch's masks. A batch without masks (images whose masks were all filtered
        out, or a rank's padding) still encodes its images and logs every metric, with no values: FSDP gathers
        the encoder's weights, and the epoch-end metric sync is collective, on every rank."""
        image_index, gt_masks = self._masks_of(batch)
        embeddings = self.model.encode_images(batch.image)
        if len(gt_masks) == 0:
            values = {name: torch.zeros(0, device=self.device) for name in VAL_METRICS}
        else:
            values = self._interactive_metrics(batch, embeddings, image_index, gt_masks)
        for name, value in values.items():
            self.val_metrics[name].update(value)
            self.log(f"val/{name}", self.val_metrics[name], on_step=False, on_epoch=True, prog_bar=name == "miou_1pt")
        self.val_interval_1pt.update(values["miou_1pt"], image_index)
        self.log("val/miou_1pt_ci95", self.val_interval_1pt, on_step=False, on_epoch=True)

    def _interactive_metrics(self, batch: Batch, embeddings: torch.Tensor, image_index: torch.Tensor,
                             gt_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each metric of ``VAL_METRICS`` per mask (N floats), for N masks: image_index N, gt_masks N x S x S."""
        size = gt_masks.shape[-1]
        coords = torch.arange(size, device=self.device)
        h, w = batch.input_size[image_index].unbind(-1)
        valid = (coords[None, :, None] < h[:, None, None]) & (coords[None, None, :] < w[:, None, None])
        result = evaluate_interactive(self.model, embeddings, image_index, gt_masks, valid, self.eval_max_clicks)
        return {
            "miou_1pt": result.ious[:, 0],
            "miou_1pt_oracle": result.first_click_oracle,
            "miou_box": result.box,
            "miou_5pt": result.ious[:, min(4, self.eval_max_clicks - 1)],
            "noc90": clicks_to_reach(result.ious, self.noc_threshold, self.eval_max_clicks).float(),
            "iou_mae": result.iou_pred_error,
        }
