"""The engine with any model and trainer from the command line (``model=vit_b trainer=gpu init=...``): every
pair composes into the trainings' configs, and a real seed step starts from an official-format checkpoint."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_engine import CONF, SMALL, data_dirs

from sam_engine.engine.run import DataEngine
from sam_engine.engine.session import run_engine
from sam_engine.engine.steps import Steps
from sam_engine.model import load_model

MODELS = ("tiny", "vit_b", "vit_l", "vit_h")
DDP = "lightning.pytorch.strategies.DDPStrategy"
TRAINERS = {  # trainer group -> (accelerator, strategy's kind) its trainings get
    "cpu": ("cpu", None), "gpu": ("gpu", None), "ddp": ("gpu", DDP),
    "fsdp": ("gpu", "sam_engine.train.distributed.SamFSDPStrategy"), "slurm": ("gpu", DDP),
}


def engine_config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="engine", overrides=[f"run_dir={tmp_path / 'run'}", *data_dirs(tmp_path), *SMALL,
                                                        *overrides])


@pytest.mark.parametrize(("model", "trainer"), list(itertools.product(MODELS, TRAINERS)))
def test_every_model_and_trainer_reaches_every_training(tmp_path, monkeypatch, model, trainer):
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    cfg = engine_config(tmp_path, f"model={model}", f"trainer={trainer}", "trainer.log_every_n_steps=7")
    engine = DataEngine(cfg, Steps(tmp_path / "run"))
    with initialize_config_dir(config_dir=CONF, version_base=None):
        seed = engine.train_config(tmp_path / "seed", 0, cfg.seed_training.init, 3, 1, [3])
        later = engine.train_config(tmp_path / "round", 1, tmp_path / "export", 2, 0, [2])
    for train_cfg, steps in ((seed, 3), (later, 2)):
        resolved = OmegaConf.to_container(train_cfg, resolve=True)
        assert resolved["model"] == OmegaConf.to_container(cfg.model)  # the variant, as the engine holds it
        assert resolved["model"]["name"] == model
        accelerator, strategy = TRAINERS[trainer]
        assert resolved["trainer"]["accelerator"] == accelerator
        assert resolved["trainer"]["max_steps"] == steps  # its reference resolves in the training's config
        assert resolved["trainer"]["log_every_n_steps"] == 7  # the engine's override reaches every training
        assert (resolved["trainer"].get("strategy") or {}).get("_target_") == strategy
        if trainer == "slurm":
            assert (resolved["trainer"]["num_nodes"], resolved["trainer"]["devices"]) == (2, 4)
    assert seed.init is None and later.init == str(tmp_path / "export")


def test_the_readme_command_for_a_real_model_composes(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sam_engine.engine", "model=vit_b", "trainer=gpu", "init=sam_vit_b_01ec64.pth",
         f"run_dir={tmp_path}", "--cfg", "job"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.model.name == "vit_b" and cfg.model.img_size == 1024 and cfg.trainer.accelerator == "gpu"
    assert cfg.seed_training.init == "sam_vit_b_01ec64.pth"


def test_a_model_override_inside_train_overrides_is_refused_with_the_way_to_do_it(tmp_path):
    cfg = engine_config(tmp_path, "train_overrides=['trainer.devices=2']")
    with initialize_config_dir(config_dir=CONF, version_base=None), pytest.raises(ValueError, match="trainer.devices"):
        DataEngine(cfg, Steps(tmp_path / "run")).train_config(tmp_path / "seed", 0, None, 3, 1, [3])


@pytest.mark.parametrize("model", ["tiny", "vit_b"])
def test_the_seed_step_starts_from_an_official_checkpoint(tmp_path, model, model_pairs):
    """A real training step of the engine from a checkpoint as Meta's classes save it: ViT-B (1024 px) too."""
    _, official = model_pairs(model)  # random weights in the official classes and key layout
    checkpoint = tmp_path / f"sam_{model}_official.pth"
    torch.save(official.state_dict(), checkpoint)
    cfg = engine_config(
        tmp_path, f"model={model}", f"init={checkpoint}", "seed_training.max_steps=1", "seed_training.milestones=[1]",
        "data.val=null",  # no validation: two ViT-B encodings at 1024 px that this test does not look at
        "train_overrides=['data.num_workers=0','data.batch_size=1','data.max_masks_per_image=2',"
        "'eval.max_clicks=1','optim.lr=0.0','optim.freeze_image_encoder=true']",  # no step moves a weight: the
        # export is the checkpoint; the frozen encoder spares ViT-B's backward pass (35 s on 2 CPU cores)
    )
    with initialize_config_dir(config_dir=CONF, version_base=None):
        [row] = run_engine(cfg, stages=(0,))
    assert row["step"] == "seed" and row["train_steps"] == 1
    exported = load_model(tmp_path / "run" / "seed" / "train" / "export").state_dict()
    expected = official.state_dict()
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[key], expected[key]) for key in expected)


def test_a_ddp_engine_trains_each_step_in_a_command_of_its_own(tmp_path):
    """trainer=ddp (2 CPU processes, gloo): Lightning starts the second rank by running the command again,
    so each training runs as ``python -m sam_engine.train`` on its saved config, never the engine twice."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    cfg = engine_config(tmp_path, *ddp, "stage1.rounds=1")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        rows = run_engine(cfg, stages=(0, 1))
        # Validation alone runs in this process (under DDP, Lightning would start pytest again as rank 1).
        evaluation = DataEngine(cfg, Steps(tmp_path / "run")).evaluate(tmp_path / "eval",
                                                                       tmp_path / "run" / "seed" / "train" / "export")
    assert evaluation["val/miou_1pt"] == pytest.approx(rows[0]["val/miou_1pt"])  # the seed's own figure
    assert [row["step"] for row in rows] == ["seed", "stage1/round1"]
    assert [row["train_steps"] for row in rows] == [3, 2] and all("val/miou_1pt" in row for row in rows)
    for step in ("seed", "stage1/round1"):
        saved = OmegaConf.load(tmp_path / "run" / step / "train" / "train_config.yaml")
        assert saved.trainer.strategy._target_.endswith("DDPStrategy") and saved.trainer.devices == 2
        assert (tmp_path / "run" / step / "train" / "export" / "sam.pth").is_file()
