#!/bin/bash
# Submit the data engine's stage chain to SLURM, to run unattended: every job waits for the one before it
# to succeed (--dependency=afterok), and a failure cancels the rest (--kill-on-invalid-dep=yes).
#
#   train1  train stage 1 (slurm/train.sbatch, STAGE=1)            -> ENGINE_DIR/stage1/train/export
#   label2  label POOL with stage 1's export (slurm/label_array.sbatch, an array) -> ENGINE_DIR/stage2/shards
#   train2  train stage 2: seed data + ENGINE_DIR/stage{1,2}/shards, from stage 1's export
#   label3  label POOL with stage 2's export                       -> ENGINE_DIR/stage3/shards
#   train3  train stage 3: ENGINE_DIR/stage3/shards only, from stage 2's export
#
# Each stage finds its inputs under ENGINE_DIR (conf/stage/*.yaml: `collected` shards, `init` export), so
# the labelling arrays write where the next training reads and no path is passed between jobs.
#
#   POOL=/data/pool ARRAY=0-99%20 ENGINE_DIR=/shared/engine \
#   TRAIN_ARGS="--nodes=2" TRAIN_OVERRIDES="model=vit_b data.train=/data/seed data.val=/data/val" \
#   LABEL_OVERRIDES="amg.points_per_side=32" slurm/engine.sh
#   DRY_RUN=1 POOL=/data/pool slurm/engine.sh      # print the sbatch commands, submit nothing
#
# Environment:
#   POOL             (required) the images to label: a shard directory, pattern or image folder
#   ENGINE_DIR       outputs/engine; on a filesystem every node sees (relative: to this directory)
#   ARRAY            the labelling arrays' --array (0-9): 1,000 pool shards with ARRAY=0-99%20 gives
#                    100 tasks of 10 shards, 20 at a time
#   TRAIN_ARGS       extra sbatch options of the training jobs (--nodes=4, --time=..., --partition=...)
#   LABEL_ARGS       extra sbatch options of the labelling arrays
#   TRAIN_OVERRIDES  Hydra overrides of every training stage (model=..., data.train=<seed shards>, ...)
#   TRAIN1_OVERRIDES, TRAIN2_OVERRIDES, TRAIN3_OVERRIDES: of one stage, after TRAIN_OVERRIDES
#                    (e.g. TRAIN1_OVERRIDES="init=sam_vit_b_01ec64.pth": stage 1 from Meta's weights)
#   LABEL_OVERRIDES  Hydra overrides of `python -m sam_engine.label` (the arrays' EXTRA)
#   PYTHON           the interpreter the jobs run (python); TRAINER, as slurm/train.sbatch reads it
#   FROM             the first step to submit (train1): after a failure, fix its cause and submit again
#                    from the failed step, e.g. FROM=label3 (the steps before it are not submitted)
#   DRY_RUN=1        print "<step>: <command>" instead of submitting (a job id shown as its step's name)
#
# Prints one line per step, "<step> <job id>"; logs are slurm-sam-<train|label>-<N>-<job id>.out in this
# directory (an array task's: ...-<array job id>_<index>.out).
# A labelling array that ended with failed tasks can also be completed by hand, see label_array.sbatch.
set -euo pipefail

: "${POOL:?set POOL to the shard directory (or image folder) to label}"
ENGINE_DIR=${ENGINE_DIR:-outputs/engine}
ARRAY=${ARRAY:-0-9}
FROM=${FROM:-train1}
DRY_RUN=${DRY_RUN:-0}
SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a TRAIN_SBATCH <<< "${TRAIN_ARGS:-}"
read -r -a LABEL_SBATCH <<< "${LABEL_ARGS:-}"
read -r -a TRAIN_HYDRA <<< "${TRAIN_OVERRIDES:-}"
STEPS=(train1 label2 train2 label3 train3)
case " ${STEPS[*]} " in
    *" $FROM "*) ;;
    *) echo "error: FROM=$FROM is not one of: ${STEPS[*]}" >&2; exit 2 ;;
esac
PASS_ENV=(ENGINE_DIR="$ENGINE_DIR")
[ -z "${PYTHON:-}" ] || PASS_ENV+=(PYTHON="$PYTHON")
[ "$DRY_RUN" = 1 ] && echo "# DRY_RUN=1: nothing is submitted; a job id is shown as its step's name"

previous=""   # the job id the next step waits for
started=0
# submit STEP VAR=VALUE... -- SBATCH_ARGUMENTS...: submit (or print) one step after the previous one
submit() {
    local step=$1 job
    shift
    if [ "$step" = "$FROM" ]; then started=1; fi
    if [ "$started" = 0 ]; then return; fi
    local command=(env "${PASS_ENV[@]}")
    while [ "$1" != "--" ]; do command+=("$1"); shift; done
    shift
    command+=(sbatch --parsable)
    [ -z "$previous" ] || command+=("--dependency=afterok:$previous" --kill-on-invalid-dep=yes)
    command+=("$@")
    if [ "$DRY_RUN" = 1 ]; then
        local line
        line=$(printf '%q ' "${command[@]}")
        echo "$step: ${line% }"
        job=$step
    else
        job=$("${command[@]}")
        job=${job%%;*}   # --parsable: "id" or "id;cluster"
        echo "$step $job"
    fi
    previous=$job
}

train() {  # train STAGE
    local name="TRAIN$1_OVERRIDES" stage_hydra
    read -r -a stage_hydra <<< "${!name:-}"
    submit "train$1" STAGE="$1" -- --job-name="sam-train-$1" "${TRAIN_SBATCH[@]}" \
        "$SLURM_DIR/train.sbatch" "${TRAIN_HYDRA[@]}" "${stage_hydra[@]}"
}

label() {  # label STAGE: the pool, with the previous stage's export, into the shards STAGE trains on
    submit "label$1" STAGE="$1" INPUT="$POOL" OUTPUT="$ENGINE_DIR/stage$1/shards" \
        CHECKPOINT="$ENGINE_DIR/stage$(($1 - 1))/train/export" EXTRA="${LABEL_OVERRIDES:-}" -- \
        --job-name="sam-label-$1" --array="$ARRAY" "${LABEL_SBATCH[@]}" "$SLURM_DIR/label_array.sbatch"
}

train 1
label 2
train 2
label 3
train 3
