"""``SamDataModule``: train and validation loaders over shard sources, for Lightning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule

from sam_engine.data.loader import Batch, ShardDataset, make_dataset, make_loader

Source = str | Path | Sequence[str | Path]


class SamDataModule(LightningDataModule):
    """Training batches from resampled shards, validation batches from one deterministic pass.

    Every DDP rank gets ``steps_per_epoch`` training batches and the same number of validation
    batches, whatever the shard sizes (see :mod:`sam_engine.data.loader`). Batches are
    :class:`~sam_engine.data.loader.Batch` (row-major ``masks`` once on the device); log with
    ``batch_size=len(batch)`` and sum ``batch.num_bad`` for the number of bad samples skipped.

    Arguments:
        train: training shards: a directory, a brace pattern, or a list of these.
        val: validation shards (same forms), or None for no validation.
        img_size: the model's input size S.
        batch_size: examples per batch and rank; ``val_batch_size`` defaults to it.
        num_workers: DataLoader workers per rank (persistent).
        steps_per_epoch: training batches per rank and epoch.
        max_masks_per_image, max_mask_fraction, min_image_side: which masks and images are used.
        scale_jitter: (low, high) large-scale jitter of the training images (``SampleDecoder.scale_range``);
            validation is never jittered. None: no jitter.
        shuffle_buffer: training samples are shuffled through a buffer this large.
        seed: seeds shard draws, shuffling and mask sampling.
        max_bad_fraction, min_seen: bad-sample tolerance per worker (see ``make_dataset``).
        pin_memory: pin batches for faster host-to-GPU copies.
        synthetic: datasets to generate first, each the keyword arguments (``out_dir`` included) of
            ``sam_engine.data.synthetic.dataset.ensure_synthetic_dataset``, used by :meth:`prepare_data` to
            generate that split's directory when it has no manifest yet.
    """

    def __init__(
        self,
        train: Source,
        val: Source | None = None,
        *,
        img_size: int = 1024,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        steps_per_epoch: int = 1000,
        max_masks_per_image: int = 64,
        max_mask_fraction: float = 0.9,
        min_image_side: int = 8,
        scale_jitter: Sequence[float] | None = None,
        shuffle_buffer: int = 256,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        min_seen: int = 100,
        pin_memory: bool = False,
        synthetic: Sequence[Mapping] | None = None,
    ):
        super().__init__()
        if any("out_dir" not in spec for spec in synthetic or ()):
            raise ValueError("every synthetic dataset needs an out_dir")
        self.sources = {"train": train, "val": val}
        self.synthetic = [dict(spec) for spec in synthetic or ()]
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.steps_per_epoch = steps_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.pin_memory = pin_memory
        self.scale_jitter = scale_jitter
        self.reading = dict(
            img_size=img_size,
            max_masks_per_image=max_masks_per_image,
            max_mask_fraction=max_mask_fraction,
            min_image_side=min_image_side,
            seed=seed,
            max_bad_fraction=max_bad_fraction,
            min_seen=min_seen,
        )
        # Generated data lands on a shared filesystem: one process (global rank 0) writes it.
        self.prepare_data_per_node = False
        self.train_set: ShardDataset | None = None
        self.val_set: ShardDataset | None = None

    def prepare_data(self) -> None:
        """Generate the synthetic datasets, or complete one a killed run left half-written (a no-op when
        they are complete)."""
        if self.synthetic:
            # imported here, so that reading shards never depends on the synthetic generator
            from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset

            for spec in self.synthetic:
                ensure_synthetic_dataset(**spec)

    def _rank(self) -> dict:
        """rank/world_size from the trainer when attached, else make_dataset's torch.distributed defaults."""
        if self.trainer is None:
            return {}
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = make_dataset(
                self.sources["train"],
                batch_size=self.batch_size,
                resample=True,
                scale_range=self.scale_jitter,
                steps_per_epoch=self.steps_per_epoch,
                shuffle_buffer=self.shuffle_buffer,
                **self.reading,
                **self._rank(),
            )
        if stage in (None, "fit", "validate") and self.sources["val"] is not None:
            self.val_set = make_dataset(
                self.sources["val"],
                batch_size=self.val_batch_size,
                resample=False,
                **self.reading,
                **self._rank(),
            )

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Masks travel as a transposed view of column-major storage (see ``Batch``); on the device,
        where it is cheap, they become row-major for the model and losses."""
        batch.masks = batch.masks.contiguous()
        return batch

    def train_dataloader(self):
        return make_loader(self.train_set, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def val_dataloader(self):
        """The validation loader, or an empty list (Lightning then skips validation)."""
        if self.val_set is None:
            return []
        return make_loader(self.val_set, num_workers=self.num_workers, pin_memory=self.pin_memory)
