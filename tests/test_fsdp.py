"""FSDP (``trainer=fsdp``) on CPU: two gloo processes train, checkpoint, resume and export as DDP does.

Neither Lightning nor torch runs FSDP on a CPU as trainer=fsdp configures it for GPUs: Lightning refuses
its own ``FSDPStrategy`` with ``accelerator=cpu`` ("requires a GPU accelerator"), and torch's FSDP1 says
"FSDP needs a non-CPU accelerator device" unless it is given ``device_id=cpu`` (Lightning passes the
device index: None on a CPU). :class:`CpuFSDPStrategy` is trainer=fsdp's ``SamFSDPStrategy`` with these
two points changed for the CPU; the training subprocesses import it from this file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from lightning.pytorch.core.optimizer import LightningOptimizer
from test_distributed import COMPARED, DDP_CPU
from test_train import FAST
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    ShardingStrategy,
    StateDictType,
)

from sam_engine.data.samples import good_samples
from sam_engine.data.shards import ShardWriter
from sam_engine.model import build_sam, load_export
from sam_engine.train.distributed import SamFSDPStrategy, encoder_block_classes

TESTS = Path(__file__).resolve().parent
CONF = TESTS.parent / "sam_engine" / "conf"
FSDP_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            f"trainer.strategy._target_={__name__}.CpuFSDPStrategy"]


class CpuFSDPStrategy(SamFSDPStrategy):
    """``SamFSDPStrategy`` on CPU processes (gloo). A subclass passes Lightning's GPU check."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(  # as Lightning wraps it, with the CPU named as the device
                model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
            )
        return super()._setup_model(model)

    def optimizer_state(self, optimizer) -> dict:
        """Lightning's full optimiser state, gathered without ``offload_to_cpu``.

        With it, on a CPU device, torch returns views of one reused buffer (``Tensor.cpu()`` copies nothing):
        every state of a parameter (``exp_avg``, ``exp_avg_sq``) holds the last one gathered. On a GPU the
        offload copies.
        """
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        full = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        full_optim = FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, full, full_optim):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:
            state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state


def train(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "sam_engine.train", *overrides], capture_output=True, text=True, timeout=600, env=env
    )


# Two strategies' weights agree to float rounding, which AdamW amplifies on weights with near-zero gradients
# (1.4e-5 after 6 steps on an AVX-512 CPU); weights trained apart, or AdamW states not restored, differ by
# steps of lr = 3e-4.
SAME_WEIGHTS = 5e-5


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards, ddp_run) -> dict[str, Path]:
    """Four steps of each strategy from the same seed, data and clipping: {"ddp": run_dir, "fsdp": run_dir}."""
    root = tmp_path_factory.mktemp("fsdp")
    result = train(*FAST, *shards, *FSDP_CPU, *COMPARED, f"engine_dir={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"ddp": ddp_run[0], "fsdp": root / "stage1" / "train"}


def test_fsdp_config_wraps_and_can_checkpoint_each_encoder_block():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        default = compose("train", overrides=["trainer=fsdp"])
        checkpointed = compose("train", overrides=[
            "trainer=fsdp", "trainer.strategy.activation_checkpointing_policy=${trainer.strategy.auto_wrap_policy}"])
    strategy = instantiate(default.trainer.strategy)
    assert isinstance(strategy, SamFSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy.kwargs["use_orig_params"] is True
    assert strategy._state_dict_type == "full" and not strategy._activation_checkpointing_kwargs
    model = build_sam("tiny")
    blocks = list(model.image_encoder.blocks)
    wrap = strategy.kwargs["auto_wrap_policy"]
    assert [m for m in model.modules() if wrap(m, recurse=False, nonwrapped_numel=0)] == blocks
    recompute = instantiate(checkpointed.trainer.strategy)._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert [m for m in model.modules() if recompute(m, recurse=False, nonwrapped_numel=0)] == blocks
    assert {type(b) for b in blocks} == encoder_block_classes()


def test_fsdp_trains_checkpoints_and_exports_as_ddp_does(runs):
    fsdp, ddp = runs["fsdp"], runs["ddp"]
    assert sorted(p.name for p in (fsdp / "checkpoints").iterdir()) == ["last.ckpt"]
    assert sorted(p.name for p in (fsdp / "export").iterdir()) == ["sam.pth", "sam.pth.sha256", "sam_config.json"]
    metrics = json.loads((fsdp / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["final"]["val/miou_1pt"] <= 1.0

    exported = load_export(fsdp / "export").state_dict()  # strict: every official key, with its full shape
    assert all(torch.isfinite(v).all() for v in exported.values())
    seed_everything(0)
    initial = build_sam("tiny").state_dict()  # what train.py starts from (seed=0)
    assert 1e-3 < max_difference(exported, initial) < 1e-2  # trained, a few lr-sized steps away
    # The same weights as DDP: gradients averaged over the ranks, clipped by their global norm (FSDP's root
    # module), weight decay chosen by the parameters' full shapes.
    assert max_difference(exported, load_export(ddp / "export").state_dict()) < SAME_WEIGHTS

    def checkpointed(run_dir: Path) -> dict[str, torch.Tensor]:
        return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]

    assert max_difference(checkpointed(fsdp), checkpointed(ddp)) < SAME_WEIGHTS  # full weights, not shards


def test_fsdp_resumes_from_its_checkpoint_as_ddp_does(runs, shards, tmp_path):
    exports = {}
    for name, strategy in (("ddp", DDP_CPU), ("fsdp", FSDP_CPU)):
        engine_dir = tmp_path / name
        shutil.copytree(runs[name].parents[1], engine_dir)
        result = train(*FAST, *shards, *strategy, *COMPARED, f"engine_dir={engine_dir}", "stage.max_steps=6",
                       "ckpt_path=last")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Restoring states from the checkpoint" in result.stdout + result.stderr
        assert json.loads((engine_dir / "stage1" / "train" / "metrics.json").read_text())["steps"] == 6
        exports[name] = load_export(engine_dir / "stage1" / "train" / "export").state_dict()
    assert max_difference(exports["fsdp"], exports["ddp"]) < SAME_WEIGHTS  # weights and AdamW states restored


def test_fsdp_steps_and_validates_on_ranks_without_masks(tmp_path, synthetic_shards):
    """Every FSDP unit takes part in every forward and backward pass, on every rank, masks or none (or FSDP
    hangs): one image with masks and one without, so that rank 0 always has masks and rank 1 never, in
    training and in validation (where a rank short of images pads with images without masks)."""
    first, second = itertools.islice(good_samples(synthetic_shards["val"], on_skip=print), 2)
    with ShardWriter(tmp_path / "uneven") as writer:
        writer.write(first.key, first.data, first.ext, first.record)
        writer.write(second.key, second.data, second.ext, {**second.record, "annotations": []})
    data = [f"data.train={tmp_path / 'uneven'}", f"data.val={tmp_path / 'uneven'}", "data.batch_size=1",
            "data.shuffle_buffer=0"]
    result = train(*FAST, *data, *FSDP_CPU, f"engine_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "stage1" / "train" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0 <= metrics["final"]["val/miou_1pt"] <= 1
