#!/usr/bin/env bash
# Fused trial arrays on a GPU (issue 11): `lucir bench --sections fused` on CIFAR-100 shapes (ResNet-32,
# batch 128, synthetic images), N = 1..32 members per array.  Per N it measures images/s per trial of
#   fused N          one train_fused_phase over an N-member FusedNet on one shared batch stream
#                    (phase 1: one shared frozen base model),
#   fused N stacked  phase 1 only: an N x L index matrix and a FusedNet frozen model (nothing shared:
#                    what the grouped convolutions cost by themselves),
#   N separate       the same N members trained one after another with lucir.learner.train_phase,
# in interleaved rounds, with the paired median ratios fused / separate, stacked / separate, fused / stacked.
# Runs: fp32 channels_last (the Runtime default), fp32 NCHW, bf16 channels_last.  torch.compile is not
# measured: train_fused_phase does not compile.  One JSON + one text report per run under $1.
#
# usage: scripts/bench_fused_gpu.sh [OUT_DIR]    (default runs/bench-gpu)
#   env: PYTHON (default .venv/bin/python, else python), STEPS (default 5), ROUNDS (default 3),
#        SIZES (default 1,2,4,8,16,32)
set -euo pipefail

out="${1:-runs/bench-gpu}"
py="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
steps="${STEPS:-5}"
rounds="${ROUNDS:-3}"
sizes="${SIZES:-1,2,4,8,16,32}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" || true

bench() {  # NAME FLAGS...: one run of both fused sections
    local name="$1"; shift
    "$py" -m lucir.cli bench --device cuda --dataset cifar100 --sections fused --fuse-sizes "$sizes" \
        --steps "$steps" --rounds "$rounds" --json "$out/fused-$name.json" "$@" 2> "$out/fused-$name.log" \
        | tee "$out/fused-$name.txt"
}

bench fp32-cl                               # fp32, channels_last (default)
bench fp32-nchw --fuse-channels-last off    # fp32, NCHW
bench bf16-cl --fuse-bf16                   # bf16 autocast, channels_last
echo "results in $out"
