"""``python -m sam_engine.train``: outputs, resume, stages, bad input; the module's non-finite handling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir

from sam_engine.cli import alias_groups, alias_stage_numbers
from sam_engine.data.datamodule import SamDataModule
from sam_engine.model import build_sam, load_export
from sam_engine.train.module import InteractiveSamModule, NonFiniteLossError
from sam_engine.train.progress import ProgressLines, progress_callbacks
from sam_engine.train.run import train as run_training
from sam_engine.train.settings import check_train_config
from sam_engine.utils.progress import describe_progress

CONF = Path(__file__).resolve().parents[1] / "sam_engine" / "conf"

FAST = [  # a few tiny steps: this checks the plumbing, not the learning
    "data=shards", "data.batch_size=2", "data.num_workers=0", "data.steps_per_epoch=2",
    "data.max_masks_per_image=4", "data.min_seen=1000", "stage.max_steps=4", "stage.warmup_steps=1",
    "stage.prompt_warmup_steps=2",
    "eval.max_clicks=3", "checkpoint_every_n_steps=2",
]


def train(*overrides: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sam_engine.train", *overrides], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def train_in_process(*overrides: str) -> dict:
    """``sam-train`` with these overrides in this process (as the engine runs its trainings): the command line
    itself is tested by ``train``; a check that fails here spares the seconds of a new process's imports."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("train", overrides=alias_stage_numbers(list(overrides)))
    return run_training(cfg)


def test_train_writes_checkpoint_export_metrics_and_resumes(tmp_path, shards):
    engine = tmp_path / "engine"
    ends_between_saves = [o for o in FAST if not o.startswith(("checkpoint_every", "data.steps_per_epoch"))]
    ends_between_saves += ["checkpoint_every_n_steps=3", "data.steps_per_epoch=3"]  # saves at step 3, ends at 4
    every_step = "snapshot_every_minutes=0.0001"
    train_in_process(*ends_between_saves, *shards, f"engine_dir={engine}", every_step)
    run_dir = engine / "stage1" / "train"
    final_state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final_state["global_step"] == 4  # saved at the end, not only every 3 steps
    assert (run_dir / "logs" / "metrics.csv").is_file()
    model = load_export(run_dir / "export")
    assert model.config.name == "tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stage"] == "assisted_manual" and metrics["steps"] == 4 and metrics["skipped_steps"] == 0
    for phase in ("initial", "final"):
        assert set(metrics[phase]) == {f"val/{k}" for k in ("miou_1pt", "miou_1pt_oracle", "miou_1pt_ci95",
                                                            "miou_box", "miou_5pt", "noc90", "iou_mae")}
        assert 0.0 <= metrics[phase]["val/miou_1pt"] <= metrics[phase]["val/miou_1pt_oracle"] <= 1.0
        assert 0.0 <= metrics[phase]["val/miou_1pt_ci95"] < 1.0
        assert 1.0 <= metrics[phase]["val/noc90"] <= 3.0
    # The export holds the trained weights, not the initial ones.
    assert not torch.equal(model.state_dict()["mask_decoder.iou_token.weight"],
                           build_sam("tiny").state_dict()["mask_decoder.iou_token.weight"])

    # A snapshot after every step: the weights of that step, the last one equal to the export's.
    infos = [json.loads(p.read_text()) for p in sorted((run_dir / "snapshots").glob("*/snapshot.json"))]
    assert sorted(info["step"] for info in infos) == [1, 2, 3, 4]
    last = max((run_dir / "snapshots").iterdir(), key=lambda d: json.loads((d / "snapshot.json").read_text())["step"])
    assert torch.equal(load_export(last).state_dict()["mask_decoder.iou_token.weight"],
                       model.state_dict()["mask_decoder.iou_token.weight"])

    resumed = train(*FAST, *shards, f"engine_dir={engine}", "stage.max_steps=6", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 6 and "initial" not in metrics
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    # Its output is a file, not a terminal: a line per step of progress (4 steps -> every step), no bar.
    log = resumed.stdout + resumed.stderr
    assert re.search(r"step 6/6 \(100%\), [\d.]+ steps/s, loss [\d.]+, ETA 0 s", log), log[-3000:]
    assert "it/s]" not in log


def test_progress_lines_say_where_a_run_is_and_when_it_ends():
    assert describe_progress(120, 600, time.monotonic() - 100, 20, 0.8412) == \
        "step 120/600 (20%), 1.00 steps/s, loss 0.841, ETA 8 min 0 s"
    assert progress_callbacks(False) == ([], False)
    callbacks, bar = progress_callbacks(True)  # pytest captures stderr: not a terminal
    assert [type(c) for c in callbacks] == [ProgressLines] and bar is False



@pytest.mark.slow
def test_stage_one_learns_from_scratch_on_cpu(tmp_path):
    """Stage 1's default config (fresh tiny model, synthetic data) on a shorter schedule: 310 one-pass steps,
    then 10 with SAM's 11 passes, the learning rate divided by 10 for the last fifth as the default's; 16
    validation images up to 10 clicks; ~2-3 min here. The full default (700 steps, the last 40 with 11
    passes, 32 validation images up to 20 clicks) takes ~6 min on a 2-core CPU, too long for the suite;
    ``python -m sam_engine.train stage=1`` runs it."""
    import os

    env = {**os.environ, "SAM_ENGINE_DATA": str(tmp_path / "data")}
    schedule = ["stage.max_steps=320", "stage.prompt_warmup_steps=310", "stage.milestones=[256]",
                "data.synthetic.1.num_images=16", "eval.max_clicks=10"]
    result = subprocess.run(
        [sys.executable, "-m", "sam_engine.train", "stage=1", f"engine_dir={tmp_path / 'engine'}", *schedule],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "engine" / "stage1" / "train" / "metrics.json").read_text())
    before, after = metrics["initial"], metrics["final"]
    assert metrics["steps"] == 320 and metrics["skipped_steps"] == 0
    # From 0.02-0.05, seeds 0 / 1 / 2 reached on a 2-core VM with AMX (2026-12-07): 1-click 0.447 / 0.474 / 0.446
    # (+- 0.03-0.04), oracle 0.495 / 0.519 / 0.483, box 0.388 / 0.409 / 0.430, 5 clicks 0.402 / 0.408 / 0.421
    # (docs/performance.md). With the drop in the last 2% instead (lr / 10 at step 315) the box of seed 0 stayed
    # at 0.23 and the 5 clicks of seed 1 at 0.20. The bounds leave about twice the interval below the lowest
    # seed, for another CPU where the same seed takes another path.
    assert after["val/miou_1pt"] > max(0.35, 4 * before["val/miou_1pt"]), metrics
    assert after["val/miou_1pt_oracle"] > max(0.4, 4 * before["val/miou_1pt_oracle"]), metrics
    assert after["val/miou_box"] > max(0.3, 3 * before["val/miou_box"]), metrics
    assert after["val/miou_5pt"] > max(0.3, 3 * before["val/miou_5pt"]), metrics
    print(json.dumps(metrics))  # shown with -rP: the figures of this machine


def test_stage_numbers_and_names_select_the_same_config():
    assert alias_stage_numbers(["x", "stage=1", "stage=3", "model=tiny"]) == [
        "x", "stage=assisted_manual", "stage=fully_automatic", "model=tiny"]
    assert alias_groups(["data=folder", "data.images=a", "+data=b", "model=tiny"], {"data": "engine_data@data"}) == [
        "engine_data@data=folder", "data.images=a", "+engine_data@data=b", "model=tiny"]
    by_number = train("stage=2", "--cfg", "job")
    by_name = train("stage=semi_automatic", "--cfg", "job")
    assert by_number.returncode == 0, by_number.stderr
    assert by_number.stdout == by_name.stdout
    assert "name: semi_automatic" in by_number.stdout


def test_a_wandb_training_is_grouped_under_its_engine_folders_name(tmp_path):
    shown = train("logger=wandb", f"engine_dir={tmp_path / 'runs' / 'spring'}", "--cfg", "job", "--resolve")
    assert shown.returncode == 0, shown.stderr
    assert "group: spring\n" in shown.stdout  # not the path: the engine's own trainings use the same name


@pytest.mark.parametrize(
    "override, expected",
    [("stage=4", ["Could not find 'stage/4'", "assisted_manual", "fully_automatic", "semi_automatic"]),
     ("model=vit_x", ["model/vit_x", "tiny", "vit_b", "vit_h", "vit_l"]),
     ("logger=tensorboard", ["logger/tensorboard", "csv", "none", "wandb"])],
)
def test_unknown_choices_list_the_options(override, expected):
    result = train(override, "--cfg", "job")
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [("stage.max_steps=abc", "stage.max_steps='abc': expected an integer >= 0"),
     ("data.batch_size=0", "data.batch_size=0: expected an integer >= 1"),
     ("gradient_clip_norm=-1", "gradient_clip_norm=-1: expected a number in [0, inf]"),
     ("validate_before_training=maybe", "validate_before_training='maybe': expected true or false"),
     ("simulation.num_click_rounds=abc", "simulation.num_click_rounds: Value 'abc' of type 'str' could not be"),
     ("optim.milestones=[10,x]", "optim.milestones[1]: Value 'x' of type 'str' could not be converted to Integer"),
     ("+optim.learning_rate=1", "optim.learning_rate: Key 'learning_rate' not in 'OptimConfig'")],
)
def test_wrong_types_are_refused_naming_the_key(override, message):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("train", overrides=[override])
    with pytest.raises(ValueError) as refused:
        check_train_config(cfg)
    assert message in str(refused.value)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        check_train_config(compose("train", overrides=["gradient_clip_norm=null", "optim.lr=1e-3"]))  # valid


def test_a_wrong_type_on_the_command_line_fails_before_any_work(tmp_path):
    result = train("stage.max_steps=abc", f"engine_dir={tmp_path}")
    assert result.returncode != 0 and "stage.max_steps='abc': expected an integer >= 0" in result.stderr
    assert sorted(p.name for p in (tmp_path / "stage1" / "train").iterdir()) == ["hydra"]  # only its log


def test_missing_training_data_fails_before_training(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        train_in_process(*FAST, f"data.train={missing}", "data.val=null", f"engine_dir={tmp_path / 'e'}")
    assert not (tmp_path / "e" / "stage1" / "train" / "checkpoints").exists()


def test_stage_two_needs_stage_one_export(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "stage1" / "train" / "export"))):
        train_in_process(*FAST, *shards, "stage=2", f"engine_dir={tmp_path}")


def test_stage_three_needs_its_automatic_masks(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "stage3" / "shards"))):
        train_in_process(*FAST, *shards, "stage=3", "init=null", f"engine_dir={tmp_path}")


def test_wandb_offline_logs_the_run(tmp_path, shards):
    train_in_process(*FAST, *shards, "logger=wandb", f"engine_dir={tmp_path}", "stage.max_steps=2")
    runs = list((tmp_path / "stage1" / "train" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "stage1" / "train" / "logs" / "metrics.csv").is_file()  # the CSV fallback too


def test_non_finite_losses_skip_steps_then_stop(monkeypatch, synthetic_shards):
    import sam_engine.train.module as module_code

    real = module_code.simulate_training

    def nan_loss(*args, **kwargs):
        result = real(*args, **kwargs)
        return result._replace(total=result.total * float("nan"))

    monkeypatch.setattr(module_code, "simulate_training", nan_loss)
    model = build_sam("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = InteractiveSamModule(model, max_consecutive_nonfinite=3)
    assert module.model.training and all(m.training for m in module.model.modules())
    data = SamDataModule(synthetic_shards["train"], img_size=128, batch_size=1, num_workers=0, steps_per_epoch=10,
                         max_masks_per_image=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match="3 consecutive training steps had a non-finite loss"):
        trainer.fit(module, datamodule=data)
    assert module.skipped_steps == 3 and trainer.global_step == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed during skipped steps"


def test_prompt_warmup_steps_decode_the_initial_prompt_only(monkeypatch, synthetic_shards):
    import sam_engine.train.module as module_code

    rounds = []
    real = module_code.simulate_training

    def recording(model, embeddings, image_index, gt_masks, config, generator):
        rounds.append(config.num_click_rounds)
        return real(model, embeddings, image_index, gt_masks, config, generator)

    monkeypatch.setattr(module_code, "simulate_training", recording)
    module = InteractiveSamModule(build_sam("tiny"), prompt_warmup_steps=2)
    data = SamDataModule(synthetic_shards["train"], img_size=128, batch_size=1, num_workers=0, steps_per_epoch=4,
                         max_masks_per_image=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert rounds == [0, 0, 8, 8]
