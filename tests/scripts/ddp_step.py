"""One training step of the tiny model on the same 4 validation images, split over DEVICES CPU processes.

    python tests/scripts/ddp_step.py DEVICES SHARD_DIR OUT_JSON

Prompts are deterministic (tight boxes, one pass), so the step's loss and gradients must not depend on
the number of processes: rank r of R reads images r, r + R, ... (the loader's split). Rank 0 writes the
logged loss and the decoder's output-upscaling gradient (summed over ranks by DDP) to OUT_JSON.
"""

import json
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from sam_engine.data.loader import make_dataset
from sam_engine.model import build_sam
from sam_engine.train.module import InteractiveSamModule
from sam_engine.train.settings import OptimConfig, SimulationConfig


class GradientProbe(pl.Callback):
    """Keeps the gradient of one decoder weight as the optimiser sees it (after DDP's all-reduce)."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.gradient = module.model.mask_decoder.output_upscaling[0].weight.grad.detach().clone()


class FixedBatches(pl.LightningDataModule):
    def __init__(self, shard_dir: str, images: int):
        super().__init__()
        self.shard_dir, self.images = shard_dir, images

    def train_dataloader(self):
        dataset = make_dataset(
            self.shard_dir, img_size=128, batch_size=self.images // self.trainer.world_size, resample=False,
            shuffle_buffer=0, max_masks_per_image=4, rank=self.trainer.global_rank, world_size=self.trainer.world_size,
        )
        return DataLoader(dataset, batch_size=None)


def main(devices: int, shard_dir: str, out: str) -> None:
    torch.manual_seed(0)
    simulation = SimulationConfig(num_click_rounds=0, box_probability=1.0, box_noise_fraction=0.0)
    module = InteractiveSamModule(build_sam("tiny"), simulation, OptimConfig(warmup_steps=1), gradient_clip_norm=None)
    probe = GradientProbe()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=FixedBatches(shard_dir, images=4))
    if trainer.is_global_zero:
        result = {"loss": trainer.callback_metrics["train/loss"].item(), "gradient": probe.gradient.flatten().tolist()}
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
