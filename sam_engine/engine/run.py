"""The data engine's steps, in order, for one run directory (see ``conf/engine.yaml``).

    seed                 train the seed model on the seed set (ground truth); without one, ``init`` is the seed model
    stage1/round<k>      annotate chunk k of pool1 with the current model, retrain on seed + stage 1 masks
    stage2/round<k>      pre-fill chunk k of pool2 (confident automatic masks), annotate what they miss,
                         retrain on seed + stage 1 + stage 2 masks
    stage3               automatic masks over pool3, train the final model on them alone
    final                evaluate the final model; write the summary (CSV, JSON, PNG) and the wandb table

Masks land in ``<run_dir>/stage<N>/shards`` (a shard per round, named after it); every training in
``<step>/train`` (``checkpoints/``, ``export/``, ``metrics.json``), starting from the previous step's export.
Each step's metrics row: ``stage``, ``round``, the validation metrics of the model it ends with
(``val/miou_1pt``, ``val/miou_box``, ``val/miou_5pt``, ``val/noc90`` ...) and what it collected
(``session.round_statistics``).

On your own photos (``data=folder``, ``conf/engine_data/folder.yaml``) the folder is imported first; there
is then no seed set (the seed model is ``init``) and, unless ``data.val`` is given, no evaluation: the rows
hold what each step collected only.

This is the orchestration layer: it reads the engine's config and composes the
``train`` config of every training with Hydra's compose API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from sam_engine.amg import SamAutomaticMaskGenerator
from sam_engine.annotate.coco_bridge import CVAT_ZIP, export_coco, import_coco_corrections
from sam_engine.annotate.cost import AnnotationTimeModel
from sam_engine.annotate.label_studio import CONFIG_FILE as LS_CONFIG_FILE
from sam_engine.annotate.label_studio import export_label_studio, import_label_studio
from sam_engine.annotate.session import (
    RoundSetup,
    annotate_round,
    intent_masks,
    pool_chunk,
    pool_samples,
    record_info,
    round_statistics,
)
from sam_engine.annotate.simulated import SimulatedAnnotator
from sam_engine.annotate.web.options import ServeOptions
from sam_engine.annotate.web.round import WebRound
from sam_engine.annotate.web.segmenter import Segmenter
from sam_engine.annotate.web.server import serve
from sam_engine.data.images import decode_image
from sam_engine.data.importers.folder import import_folder
from sam_engine.data.records import decode_masks, make_record
from sam_engine.data.shards import ShardWriter, shard_name
from sam_engine.data.synthetic.dataset import ensure_synthetic_dataset
from sam_engine.engine.dashboard import Dashboard, NullDashboard
from sam_engine.engine.launcher import make_launcher
from sam_engine.engine.steps import EnginePaused, Steps
from sam_engine.label.labeller import model_id
from sam_engine.model import export_sam, load_model
from sam_engine.predict.predictor import SamPredictor
from sam_engine.stages import FINAL_STEP, SEED_STEP
from sam_engine.stages import stage as stage_of
from sam_engine.train.distributed import one_process
from sam_engine.utils.config_checks import typed_config
from sam_engine.utils.device import pick_device
from sam_engine.utils.paths import folder_name
from sam_engine.utils.visualize import overlay_masks, save_png

log = logging.getLogger(__name__)

ANNOTATOR_KINDS = ("simulated", "people", "web")
ENGINE_GROUPS = ("model", "trainer")
"""The train config's groups that the engine config holds itself: every training of a run uses them."""
CORRECTED = ("corrected.json", "corrected.zip", "corrected_label_studio.json")
"""People's corrections of a round, under the round's directory: COCO JSON, CVAT's zip, Label Studio's JSON."""


def _quoted(value) -> str:
    """A Hydra override value: paths quoted, so that any character in them is taken literally."""
    return "null" if value is None else "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class DataEngine:
    """Runs (or resumes) the engine's steps.

    Arguments:
        cfg: the ``engine`` config.
        steps: the run directory's step runner (dashboards hook into it).
        dashboard: gets each step's masks on one image and its outputs (``WandbDashboard`` or ``NullDashboard``).
    """

    def __init__(self, cfg: DictConfig, steps: Steps, dashboard: Dashboard | None = None) -> None:
        self.cfg = cfg
        self.steps = steps
        self.run_dir = Path(cfg.run_dir)
        self.dashboard = dashboard or NullDashboard()
        self.device = pick_device(cfg.device)
        self.launcher = make_launcher(cfg)

    # --- the plan ------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Import the photo folder (``data.images``) or generate the synthetic datasets that are missing; check
        that the seed model has a source and that the pools hold what the annotator needs."""
        data = self.cfg.data
        if self.cfg.annotator.kind not in ANNOTATOR_KINDS:
            raise ValueError(f"annotator.kind={self.cfg.annotator.kind}: expected one of {', '.join(ANNOTATOR_KINDS)}")
        if data.seed is None and self.cfg.seed_training.init is None:
            raise ValueError("data.seed and init are both null: the seed model needs shards with ground truth to "
                             "train on (data.seed=DIR) or weights to start from (init=sam_vit_b_01ec64.pth or an "
                             "export directory)")
        if data.images is not None:
            report = import_folder(data.images, data.photos)
            log.info("data.images=%s -> %s: %s", data.images, data.photos, report.summary())
        for spec in data.synthetic or []:
            ensure_synthetic_dataset(**OmegaConf.to_container(spec, resolve=True))
        if self.cfg.annotator.kind == "simulated":
            for option in (f"pool{stage}" for stage in (1, 2) if self.cfg[f"stage{stage}"].rounds):
                first = next(pool_samples(self.cfg.data[option]), None)
                if first is None:
                    raise ValueError(f"data.{option}={self.cfg.data[option]}: no readable image")
                intent_masks(first, f"data.{option}")

    def plan(self) -> list[tuple[str, int, Callable[[Path], dict]]]:
        """Every step of the engine, in order: (name, stage, action filling the step's directory)."""
        steps = [("seed", SEED_STEP, self.seed_step)]
        for stage in (1, 2):
            for k in range(1, self.cfg[f"stage{stage}"].rounds + 1):
                steps.append((f"stage{stage}/round{k}", stage, lambda d, s=stage, k=k: self.round_step(d, s, k)))
        return steps + [("stage3", 3, self.stage3_step), ("final", FINAL_STEP, self.final_step)]

    def run(self, stages: tuple[int, ...]) -> list[dict]:
        """Run the steps of ``stages`` (0 = seed training, 4 = final evaluation); returns their metrics rows."""
        self.prepare_data()
        chosen = [(name, action) for name, stage, action in self.plan() if stage in stages]
        return [self.steps.run(name, action, (k, len(chosen))) for k, (name, action) in enumerate(chosen, 1)]

    def finished_rows(self) -> list[dict]:
        """The metrics rows of every finished step of the run, in order (what the summary shows)."""
        return [self.steps.finished_row(name) for name, _, _ in self.plan() if self.steps.is_done(name)]

    def export_before(self, step: str) -> Path:
        """The export the given step starts from: the one of the training step before it (a stage of 0 rounds
        has none: stage 3 after ``stage2.rounds=0`` starts from stage 1's last model).

        Raises:
            FileNotFoundError: it was not made (its step did not run), naming the file.
        """
        export = self.run_dir / self.training_before(step) / "train" / "export"
        if not (export / "sam.pth").is_file():
            raise FileNotFoundError(f"{export / 'sam.pth'}: the previous step's model is missing; run the engine "
                                    "from the start (python -m sam_engine.engine run_dir=...) to make it")
        return export

    def training_before(self, step: str) -> str:
        """The training step before ``step``: the one whose export ``step`` starts from."""
        trainings = [name for name, stage, _ in self.plan() if stage != FINAL_STEP]
        return trainings[trainings.index(step) - 1]

    def masks_trained_on(self, step: str, stage: int) -> list[str]:
        """The steps whose masks the training of ``step`` reads (``conf/stage``'s ``collected``): stage 1's
        rounds so far; stage 1's and stage 2's so far; or stage 3's own."""
        plan = self.plan()
        so_far = plan[: [name for name, _, _ in plan].index(step) + 1]
        stages = (3,) if stage == 3 else tuple(range(1, stage + 1))
        return [name for name, s, _ in so_far if s in stages]

    def round_start(self, stage: int, round_: int) -> int:
        """The index in its pool of a round's first image: rounds take ``images_per_round`` images each, in
        order; stage 2 goes on after stage 1's images when both stages share one pool (``data=folder``)."""
        start = (round_ - 1) * self.cfg[f"stage{stage}"].images_per_round
        if stage == 2 and Path(self.cfg.data.pool2).resolve() == Path(self.cfg.data.pool1).resolve():
            start += self.cfg.stage1.rounds * self.cfg.stage1.images_per_round
        return start

    # --- steps ---------------------------------------------------------------------------------------------

    def seed_step(self, directory: Path) -> dict:
        """Train the seed model on ``data.seed``; without a seed set, export ``init`` as the seed model."""
        seed = self.cfg.seed_training
        export = directory / "train" / "export"
        if self.cfg.data.seed is None:
            export_sam(load_model(seed.init, OmegaConf.to_container(self.cfg.model, resolve=True)), export)
            metrics = self.evaluate(directory, export)
        else:
            metrics = self.train(directory / "train", SEED_STEP, seed.init, seed.max_steps, seed.prompt_warmup_steps,
                                 seed.milestones)
        self.dashboard.log_outputs("seed", export, None, None, [])
        return {"stage": SEED_STEP, "round": 0, **metrics}

    def round_step(self, directory: Path, stage: int, round_: int) -> dict:
        """Stage 1 or 2, one round: annotate chunk ``round_`` of the stage's pool, then retrain."""
        options = self.cfg[f"stage{stage}"]
        export = self.export_before(f"stage{stage}/round{round_}")
        pool = self.cfg.data[f"pool{stage}"]
        samples = pool_chunk(pool, self.round_start(stage, round_), options.images_per_round)
        shards = self.run_dir / f"stage{stage}" / "shards"
        prefix = f"round{round_:02d}"
        model = load_model(export).to(self.device).eval()
        if self.cfg.annotator.kind == "people":
            self.people_round(directory, samples, model, export, stage, shards, prefix)
        elif self.cfg.annotator.kind == "web":
            self.web_round(samples, model, export, stage, shards, prefix)
        else:
            setup = RoundSetup(
                predictor=SamPredictor(model),
                annotator=SimulatedAnnotator(
                    AnnotationTimeModel(**self.cfg.annotator.time), accept_iou=self.cfg.annotator.accept_iou,
                    max_clicks=self.cfg.annotator.max_clicks, move_on_seconds=self.cfg.annotator.move_on_seconds,
                    patience=self.cfg.annotator.patience,
                ),
                stage=stage,
                model=model_id(export),
                prefill=self.prefill_generator(model) if stage == 2 else None,
                cover_iou=self.cfg.stage2.cover_iou,
                review=self.cfg.stage2.review,
                pool_option=f"data.pool{stage}",
            )
            annotate_round(samples, shards, prefix, setup)
        shard = shards / shard_name(prefix, 0)
        collected = round_statistics(shard, {s.key: s.record["annotations"] for s in samples if s.record})
        name = f"stage{stage}/round{round_}"
        self.log_masks(name, shard)
        metrics = self.train(directory / "train", stage, export, options.train_steps, 0,
                             self.retrain_milestones(options.train_steps))
        self.dashboard.log_outputs(name, directory / "train" / "export", shard, self.training_before(name),
                                   self.masks_trained_on(name, stage))
        return {"stage": stage, "round": round_, **collected, **metrics}

    def stage3_step(self, directory: Path) -> dict:
        """Automatic masks over pool3 with the previous step's model (stage 2's last), then the final model trained
        on them. When no mask passes the filters the model is not confident enough to label alone: nothing is
        trained, and the engine ends with the model stage 3 started from (``final_model``)."""
        export = self.export_before("stage3")
        shards = self.run_dir / "stage3" / "shards"
        self.launcher.label(self.label_config(export, shards))
        truth = {s.key: s.record["annotations"] for s in pool_samples(self.cfg.data.pool3) if s.record}
        collected = round_statistics(shards, truth)
        if not collected["masks_collected"]:
            amg = self.cfg.stage3.amg
            log.warning("stage 3: no automatic mask of the %d images of data.pool3 passed the filters "
                        "(stage3.amg.pred_iou_thresh=%s, stability_score_thresh=%s): the final model is %s's, "
                        "not retrained", collected["images"], amg.pred_iou_thresh, amg.stability_score_thresh,
                        self.training_before("stage3"))
            return {"stage": 3, "round": 0, **collected}
        self.log_masks("stage3", shards)
        steps = self.cfg.stage3.train_steps
        metrics = self.train(directory / "train", 3, export, steps, 0, self.retrain_milestones(steps))
        self.dashboard.log_outputs("stage3", directory / "train" / "export", shards, self.training_before("stage3"),
                                   ["stage3"])
        return {"stage": 3, "round": 0, **collected, **metrics}

    def final_step(self, directory: Path) -> dict:
        return {"stage": FINAL_STEP, "round": 0, **self.evaluate(directory, self.final_model())}

    def final_model(self) -> Path:
        """The export the engine ends with: stage 3's; or, where stage 3 found no confident mask, the one it
        started from.

        Raises:
            FileNotFoundError: stage 3 has not run, naming the missing file.
        """
        export = self.run_dir / "stage3" / "train" / "export"
        if (export / "sam.pth").is_file():
            return export
        if self.steps.is_done("stage3") and not self.steps.finished_row("stage3")["masks_collected"]:
            return self.export_before("stage3")
        raise FileNotFoundError(f"{export / 'sam.pth'}: stage 3's final model is missing; run the engine first")

    # --- parts ---------------------------------------------------------------------------------------------

    def evaluate(self, directory: Path, export: Path) -> dict:
        """The validation metrics (``val/*``) of ``export`` on ``data.val``; none without a validation set."""
        if self.cfg.data.val is None:
            return {}
        cfg = self.train_config(directory, 3, export, 1, 0, [1])
        cfg.trainer = one_process(cfg.trainer)  # in the engine's process: no rank may run the engine again
        return self.launcher.evaluate(cfg)

    def prefill_generator(self, model) -> SamAutomaticMaskGenerator:
        return SamAutomaticMaskGenerator(model, **OmegaConf.to_container(self.cfg.stage2.prefill, resolve=True))

    def people_round(self, directory: Path, samples, model, export: Path, stage: int, shards: Path,
                     prefix: str) -> None:
        """A round annotated by people: export the images (and stage 2's pre-filled masks) as COCO, pause;
        on the rerun that finds ``<round>/corrected.json``, import it as the round's manual masks."""
        if (shards / shard_name(prefix, 0)).is_file():
            return
        corrected = next((directory / name for name in CORRECTED if (directory / name).is_file()), None)
        if corrected is not None:
            read = import_label_studio if corrected.name == CORRECTED[2] else import_coco_corrections
            report = read(corrected, directory / "proposals", shards, stage=stage, prefix=prefix)
            log.info("imported %s: %s", corrected, json.dumps(report))
            return
        proposals = directory / "proposals"
        provenance = {"source": "auto", "stage": stage, "model": model_id(export)}
        generator = self.prefill_generator(model) if stage == 2 else None
        with ShardWriter(proposals, prefix="proposals", max_samples=2**31, max_bytes=2**50) as writer:
            if not (proposals / shard_name("proposals", 0)).is_file():
                for sample in samples:
                    image = decode_image(sample.data, source=sample.source)
                    annotations = generator.generate(image, provenance) if generator else []
                    writer.write(sample.key, sample.data, sample.ext,
                                 make_record(**record_info(sample, image.shape[:2]), annotations=annotations))
        coco = export_coco(proposals, directory / "to_annotate", layout="cvat")
        tasks = export_label_studio(proposals, directory / "to_annotate" / "label_studio")
        raise EnginePaused(
            f"stage {stage} {prefix}: waiting for people. Import {coco.parent.parent / CVAT_ZIP} into CVAT (COCO "
            f"1.0), or {tasks} into Label Studio (labelling interface: {tasks.parent / LS_CONFIG_FILE}), or "
            f"{coco} into another tool; correct and complete the masks; put CVAT's COCO 1.0 zip at "
            f"{directory / CORRECTED[1]}, Label Studio's JSON export at {directory / CORRECTED[2]} or a COCO "
            f"file at {directory / CORRECTED[0]}, and run the engine again"
        )

    def web_round(self, samples, model, export: Path, stage: int, shards: Path, prefix: str) -> None:
        """A round annotated by people on the page the engine serves (``annotator.web``), until every image is
        finished and the round's shard published. Stopped before (Ctrl+C), the engine pauses; its rerun serves
        the round again with what was accepted so far."""
        options = typed_config(ServeOptions, self.cfg.annotator.web, "annotator.web")
        prefill = self.prefill_generator(model) if stage == 2 else None
        round_ = WebRound(samples, shards, prefix, stage, model_id(export), prefill,
                          claim_seconds=options.claim_minutes * 60)
        if round_.published:
            return
        if not serve(round_, Segmenter(model), options,
                     on_ready=lambda url: log.info("stage %d %s: annotate at %s", stage, prefix, url)):
            raise EnginePaused(f"stage {stage} {prefix}: the annotation page stopped with {round_.progress()}; "
                               "run the engine again to go on with the round")

    def log_masks(self, name: str, shards: Path) -> None:
        """The masks of the first image a step collected: over the image in ``<step>/overlay.png``, and on the
        dashboard (wandb: a layer each for manual and automatic masks)."""
        first = next(pool_samples(shards), None)
        if first is None:
            return
        image = decode_image(first.data, source=first.source)
        annotations = first.record["annotations"]
        masks = decode_masks([a["segmentation"] for a in annotations], image.shape[:2])
        save_png(overlay_masks(image, masks), self.run_dir / name / "overlay.png")
        self.dashboard.log_masks(name, image, masks, [a.get("source", "manual") for a in annotations])

    def retrain_milestones(self, steps: int) -> list[int]:
        """Where a retraining of ``steps`` drops its learning rate (``retrain_lr_drop``, a fraction of it): every
        training then ends at a tenth of its rate, as the seed's does, not at the full rate that moved it last."""
        return [round(steps * self.cfg.retrain_lr_drop)]

    def train_config(self, run_dir: Path, stage: int, init: Path | str | None, steps: int,
                     prompt_warmup_steps: int, milestones) -> DictConfig:
        """The ``train`` config of one training of the engine: its ``model`` and ``trainer`` are the engine's
        (group choice and overrides alike), taken unresolved so that their references resolve in it."""
        cfg = self.cfg
        overrides = [
            f"stage={stage_of(max(stage, 1)).config}",  # the seed trains as stage 1 does
            *self.training_logger(run_dir),
            f"seed={cfg.seed}", f"engine_dir={_quoted(self.run_dir)}", f"run_dir={_quoted(run_dir)}",
            f"init={_quoted(init)}", f"stage.max_steps={steps}", f"prompt_warmup_steps={prompt_warmup_steps}",
            f"stage.milestones=[{','.join(str(m) for m in milestones)}]",
            f"data.train={_quoted(cfg.data.seed)}", f"data.val={_quoted(cfg.data.val)}", "data.synthetic=[]",
            "validate_before_training=false",
        ]
        if cfg.data.seed is None:
            overrides.append("stage.use_seed_data=false")
        overrides.append("stage.collected=[]" if stage == SEED_STEP else f"optim.lr={cfg.retrain_lr}")
        if (run_dir / "checkpoints" / "last.ckpt").is_file():  # a killed training: resume it
            overrides.append("ckpt_path=last")
        for override in cfg.train_overrides:
            if override.lstrip("+~").split(".")[0].split("=")[0] in ENGINE_GROUPS:
                raise ValueError(f"train_overrides: {override!r}: the engine's own {', '.join(ENGINE_GROUPS)} "
                                 "apply to every training; set them on its command line (model.depth=..., "
                                 "trainer.devices=...)")
        train_cfg = compose(config_name="train", overrides=overrides + list(cfg.train_overrides))
        for group in ENGINE_GROUPS:
            train_cfg[group] = OmegaConf.create(OmegaConf.to_container(cfg[group], resolve=False))
        return train_cfg

    def training_logger(self, run_dir: Path) -> list[str]:
        """The logger overrides of a training: CSV, and with the engine's wandb (``logger.wandb``) a wandb run
        named after the step, in the engine run's group, so that its loss curves sit beside the engine's run."""
        if not self.cfg.logger.wandb:
            return ["logger=csv"]
        step = run_dir.relative_to(self.run_dir).as_posix().removesuffix("/train")
        mode = self.cfg.logger.get("mode")
        return ["logger=wandb", f"logger.wandb.project={_quoted(self.cfg.logger.project)}",
                f"logger.wandb.group={_quoted(engine_group(self.run_dir))}", f"logger.wandb.name={_quoted(step)}",
                "+logger.wandb.reinit=create_new",  # a run of its own beside the engine's, in the same process
                *([f"+logger.wandb.mode={mode}"] if mode else [])]

    def train(self, run_dir: Path, stage: int, init: Path | None, steps: int, prompt_warmup_steps: int,
              milestones) -> dict:
        """Train one model of the engine (where the launcher runs it); returns its final validation metrics
        (``val/*``) and ``train_steps``."""
        metrics = self.launcher.train(self.train_config(run_dir, stage, init, steps, prompt_warmup_steps, milestones))
        return {**metrics["final"], "train_steps": metrics["steps"]}

    def label_config(self, export: Path, shards: Path) -> DictConfig:
        """The ``label`` config of stage 3: pool3 into ``shards`` with ``export``, filtered as ``stage3.amg`` says."""
        overrides = [f"input={_quoted(self.cfg.data.pool3)}", f"output={_quoted(shards)}",
                     f"checkpoint={_quoted(export)}", f"device={self.cfg.device}"]
        cfg = compose(config_name="label", overrides=overrides)
        cfg.amg = OmegaConf.create(OmegaConf.to_container(self.cfg.stage3.amg, resolve=True))
        return cfg


def engine_group(run_dir: Path) -> str:
    """The wandb group of an engine run and its trainings: the run directory's name (as ``sam-train
    logger=wandb`` names its group after ``engine_dir``)."""
    return folder_name(run_dir)
