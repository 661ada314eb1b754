"""Shared fixtures. Model helpers live in tests/model_helpers.py."""

import functools
import os
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (a real single-node SLURM on localhost, for any test)

# Tests never reach a server: wandb stays offline, timm/huggingface never download.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """A small embedded synthetic dataset (256 px): {"train": dir of 12 images, "val": dir of 4}."""
    from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return {
        "train": str(ensure_synthetic_dataset(root / "train", num_images=12, seed=0, image_size=256, shard_size=6)),
        "val": str(ensure_synthetic_dataset(root / "val", num_images=4, seed=1, image_size=256)),
    }


@pytest.fixture(scope="session")
def shards(synthetic_shards):
    """Hydra overrides that point training at ``synthetic_shards``."""
    return [f"data.train={synthetic_shards['train']}", f"data.val={synthetic_shards['val']}"]


@pytest.fixture(scope="session")
def model_pairs():
    """``model_pairs(variant)``: ``model_helpers.model_pair(variant)`` (ours and the official model on the same
    random weights), built once per session for the tests that only read them (a ViT-B pair takes seconds)."""
    from model_helpers import model_pair

    return functools.cache(model_pair)


@pytest.fixture(scope="session")
def disk_models():
    """The tiny model trained to answer clicks with disks (model_helpers.train_disk_models), after 100 and 200
    steps of one run (~25 s): {100: model, 200: model}."""
    from model_helpers import train_disk_models

    return dict(zip((100, 200), train_disk_models(steps=(100, 200)), strict=True))


@pytest.fixture(scope="session")
def disk_export(tmp_path_factory, disk_models):
    """Export directory of the disk model after 100 steps: a model whose automatic masks are many, distinct and
    localised (the benchmarks train 200 steps: at 100 its masks are less sharp, so more of them pass the fitted
    thresholds, ~160 on a 256-px scene, not ~50)."""
    from sam_engine.model import export_sam

    return export_sam(disk_models[100], tmp_path_factory.mktemp("disk_model") / "export")


@pytest.fixture(scope="session")
def sharp_disk_export(tmp_path_factory, disk_models):
    """The disk model after 200 steps: its largest disk, picked by its predicted IoU, has IoU > 0.8 with a disk
    of that radius (the web annotator's tests: web_helpers.disk_pool)."""
    from sam_engine.model import export_sam

    return export_sam(disk_models[200], tmp_path_factory.mktemp("sharp_disk_model") / "export")


@pytest.fixture(scope="session")
def disk_thresholds(disk_export):
    """AMG thresholds fitted to the disk model (model_helpers.amg_thresholds on the photograph): masks pass."""
    from model_helpers import amg_thresholds, photograph

    from sam_engine.model import load_export

    return amg_thresholds(load_export(disk_export), photograph())


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory, shards) -> tuple[Path, str]:
    """Four steps of two-process DDP on CPU (gloo), clipping every step: (run_dir, the command's stdout and
    stderr). The DDP test checks its outputs; the FSDP tests compare FSDP's run with it."""
    from test_distributed import COMPARED, DDP_CPU
    from test_train import FAST, train

    engine_dir = tmp_path_factory.mktemp("ddp")
    result = train(*FAST, *shards, *DDP_CPU, *COMPARED, f"engine_dir={engine_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return engine_dir / "stage1" / "train", result.stdout + result.stderr


@pytest.fixture(scope="session")
def engine_run(tmp_path_factory):
    """One small engine run (``test_engine.SMALL``, every step) with wandb (offline): (its folder, its rows).
    test_engine checks what it wrote; the SLURM engine test compares its own summary's columns with it."""
    from test_engine import run

    tmp_path = tmp_path_factory.mktemp("engine")
    return tmp_path, run(tmp_path, "logger.wandb=true")
