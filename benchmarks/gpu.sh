#!/usr/bin/env bash
# The GPU check, for the few minutes a GPU is lent: bash benchmarks/gpu.sh [OUT_DIR]
#
# On a bare machine with only the repository: it installs what it needs (make install: .venv from the
# package registry) and prints, each part under its own time limit so that the whole stays within
# 8 minutes on one H100/H200:
#   1. the device (nvidia-smi) and torch's view of it;
#   2. a bf16 training step with SAM's 11 simulated passes, 64 masks on one image, for vit_b and vit_h
#      (seconds per step and images/s; benchmarks/train_step.py);
#   3. what one GPU shows of DDP: trainer=ddp on the NCCL backend, one rank, bf16, a short tiny-model
#      training on the embedded synthetic data (it starts, steps, checkpoints and exports);
#   4. automatic masks at vit_b and vit_h against the official generator on the same weights
#      (images/s, masks/s, and whether the mask sets are identical; benchmarks/amg.py).
# Without a GPU it says so and exits 0 having measured nothing. Everything it prints is also written
# to OUT_DIR (default outputs/gpu_check)/gpu_check.txt, the JSON of parts 4 beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.txt") 2>&1

part() {  # part SECONDS TITLE COMMAND...: run one part under its limit; a failed part does not stop the rest
    local limit=$1 title=$2
    shift 2
    echo
    echo "== $title (limit ${limit} s)"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "-- $title: exit $rc after $((SECONDS - start)) s"
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "no GPU on this machine: nothing measured (run benchmarks/gpu.sh where one is lent)"
    exit 0
fi
echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
make install PYTHON="${PYTHON:-python3}" >/dev/null || { echo "make install failed"; exit 1; }
PY=.venv/bin/python
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

part 120 "bf16 training step, 11 passes, 64 masks on one image" \
    $PY benchmarks/train_step.py --variants vit_b vit_h --device cuda --precision bf16 --images 1 --masks 64 --runs 3

part 100 "DDP on one GPU: trainer=ddp (NCCL, bf16), tiny model, 60 steps" \
    env SAM_ENGINE_DATA="$OUT/data" $PY -m sam_engine.train trainer=ddp trainer.devices=1 \
    stage.max_steps=60 prompt_warmup_steps=30 "stage.milestones=[50]" data.num_workers=4 \
    data.steps_per_epoch=60 checkpoint_every_n_steps=30 run_dir="$OUT/ddp" +trainer.enable_progress_bar=false

part 200 "automatic masks, ours vs official, same weights" \
    $PY benchmarks/amg.py --cases vit_b vit_h --device cuda --runs 3 --work-dir "$OUT/amg" --json "$OUT/amg.json"

echo
echo "== done in $SECONDS s; the log: $OUT/gpu_check.txt"
if [ -f "$OUT/ddp/metrics.json" ]; then
    $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print('ddp run:', m['steps'], 'steps,', \
{k: round(v, 3) for k, v in m['final'].items()})" "$OUT/ddp/metrics.json"
fi
