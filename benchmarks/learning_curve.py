"""Held-out quality against training minutes: the learning curve of a training recipe.

    python benchmarks/learning_curve.py                        # the default recipe, 30 minutes, snapshots every 2
    python benchmarks/learning_curve.py --minutes 10 --every 1 -- optim.lr=1e-3   # a variant, Hydra overrides after --

One run of ``python -m sam_engine.train stage=1`` with the default recipe stretched to ``--minutes``
of training (the same learning rate, warm-up and click schedule as fractions of the run: the steps
are sized from two short timings of this machine, of one-pass and of 11-pass steps, so that the whole
schedule, its drop and its 11-pass end included, fits the budget; ``--steps-per-minute`` gives both
rates instead), exporting the
model every ``--every`` minutes (``snapshot_every_minutes``) and at the end. Each is then scored through the
official ``segment_anything`` predictor on scenes no training saw (``official_quality.py``): 1-click,
box and 5-click mIoU with 95% intervals, and NoC90. ``--json`` writes the rows.

The schedule's one-pass prompt warm-up covers most of the run, so the snapshots before its 11-pass end
were never trained on corrective clicks: their 5-click column measures a model that has not yet
learned to read its previous mask.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import yaml
from official_quality import evaluate

from sam_engine.train.snapshots import SNAPSHOT_INFO

STAGE_ONE = yaml.safe_load((resources.files("sam_engine.conf") / "stage" / "assisted_manual.yaml").read_text())
"""The default stage-1 schedule (max_steps, prompt_warmup_steps, milestones), stretched to the budget."""


ONE_PASS_SHARE = STAGE_ONE["prompt_warmup_steps"] / STAGE_ONE["max_steps"]


def train_command(run_dir: Path, steps: int, every: float, minutes: float, overrides: list[str],
                  one_pass_share: float = ONE_PASS_SHARE) -> list[str]:
    """``sam_engine.train`` for ``steps`` steps (the default schedule's proportions, or ``one_pass_share`` of
    them in the one-pass warm-up), stopped at ``minutes``."""
    scale = steps / STAGE_ONE["max_steps"]
    milestones = ",".join(str(round(m * scale)) for m in STAGE_ONE["milestones"])
    warmup = round(one_pass_share * steps)
    schedule = [f"stage.max_steps={steps}", f"stage.prompt_warmup_steps={warmup}", f"stage.milestones=[{milestones}]"]
    limit = f"+trainer.max_time=00:00:{int(minutes):02d}:{round(60 * (minutes % 1)):02d}"
    return [sys.executable, "-m", "sam_engine.train", "stage=1", f"run_dir={run_dir}", *schedule,
            f"snapshot_every_minutes={every}", "validate_before_training=false", f"data.steps_per_epoch={steps}",
            "+trainer.enable_progress_bar=false", limit, *overrides]  # (one epoch: no validation costs minutes)


def measure_steps_per_minute(run_dir: Path, overrides: list[str], one_pass: bool, minutes: float) -> float:
    """Steps per minute on this machine of one-pass steps (the warm-up's) or of 11-pass ones (the schedule's
    end, about six times as long on a 2-core CPU), from a run of ``minutes`` without validation."""
    command = train_command(run_dir, 100_000, minutes / 4, minutes, overrides, 1.0 if one_pass else 0.0)
    subprocess.run(command, check=True, capture_output=True)
    infos = [json.loads(p.read_text()) for p in (run_dir / "snapshots").glob(f"*/{SNAPSHOT_INFO}")]
    latest = max(infos, key=lambda info: info["minutes"])
    return latest["step"] / latest["minutes"]


def planned_steps(minutes: float, one_pass_rate: float, eleven_pass_rate: float) -> int:
    """Steps of the stretched schedule that fill ``minutes``: its one-pass share at the first rate, the rest
    at the second (steps per minute)."""
    minutes_per_step = ONE_PASS_SHARE / one_pass_rate + (1 - ONE_PASS_SHARE) / eleven_pass_rate
    return max(STAGE_ONE["max_steps"], round(minutes / minutes_per_step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget")
    parser.add_argument("--every", type=float, default=2.0, help="snapshot interval in minutes")
    parser.add_argument("--steps-per-minute", type=float, nargs=2, metavar=("ONE_PASS", "ELEVEN_PASS"),
                        help="skip the timing runs")
    parser.add_argument("--out", default="outputs/learning_curve", help="run directory")
    parser.add_argument("--images", type=int, default=16, help="unseen scenes per snapshot")
    parser.add_argument("--max-clicks", type=int, default=10, help="NoC cap")
    parser.add_argument("--seed", type=int, default=1000, help="scene seed of the evaluation")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))

    one_pass, eleven_pass = args.steps_per_minute or (
        measure_steps_per_minute(out / "timing", args.overrides, one_pass=True, minutes=1.0),
        measure_steps_per_minute(out / "timing_11", args.overrides, one_pass=False, minutes=1.0))
    steps = planned_steps(args.minutes, one_pass, eleven_pass)
    started = time.monotonic()
    subprocess.run(train_command(out / "train", steps, args.every, args.minutes, args.overrides), check=True)
    print(f"trained {time.monotonic() - started:.0f} s (budget {args.minutes:g} min, {steps} steps planned at "
          f"{one_pass:.1f} one-pass / {eleven_pass:.1f} 11-pass steps per minute)", flush=True)

    snapshots = [(json.loads((d / SNAPSHOT_INFO).read_text()), d) for d in (out / "train" / "snapshots").iterdir()
                 if (d / SNAPSHOT_INFO).is_file()]
    final = json.loads((out / "train" / "metrics.json").read_text())  # the run's end: its export
    points = {info["step"]: (info, export) for info, export in snapshots}
    points[final["steps"]] = ({"minutes": args.minutes, "step": final["steps"]}, out / "train" / "export")
    rows = []
    for _, (info, export) in sorted(points.items()):
        row = {**info, **evaluate(str(export), args.images, args.seed, args.max_clicks)}
        rows.append(row)
        print(f"{row['minutes']:6.1f} min  step {row['step']:5d} | 1-click {row['miou_1pt']:.3f} +- "
              f"{row['miou_1pt_ci95']:.3f} | box {row['miou_box']:.3f} +- {row['miou_box_ci95']:.3f} | 5-click "
              f"{row['miou_5pt']:.3f} +- {row['miou_5pt_ci95']:.3f} | NoC90 {row['noc90']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
