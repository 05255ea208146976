#!/usr/bin/env bash
# Fused trial arrays on a GPU (issue 11): `lucir bench --sections fused` on CIFAR-100 shapes (ResNet-32,
# batch 128, synthetic images), N = 1..32 members per array.  Per N it measures images/s per trial of
#   fused N          one train_fused_phase over an N-member FusedNet on one shared batch stream
#                    (phase 1: one shared frozen base model),
#   fused N stacked  phase 1 only: an N x L index matrix and a FusedNet frozen model (nothing shared:
#                    what the grouped convolutions cost by themselves),
#   N separate       the same N members trained one after another with lucir.learner.train_phase,
# in interleaved rounds, with the paired median ratios fused / separate, stacked / separate, fused / stacked.
# Runs: fp32 channels_last (the Runtime default), fp32 NCHW, bf16 channels_last (the fused sections have
# no compiled variant).  One JSON + one text report per run under $1.
# Then the issue's second baseline, 8 trials packed on the GPU as separate processes (what
# --gpus-per-trial 0.125 does): 8 concurrent `lucir bench --sections train_inc` processes, their images/s
# summed (packed-8.txt), to set against 8 x the per-trial images/s of "fused 8".
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

bench fp32-cl                               # fp32, channels_last (default), grouped convolutions
bench fp32-cl-loop --fuse-backend loop      # the members' backbones one after another
bench fp32-nchw --fuse-channels-last off    # fp32, NCHW
bench bf16-cl --fuse-bf16                   # bf16 autocast, channels_last
# 8 trials as 8 processes sharing the GPU (fractional GPUs): incremental step, the default variant
pids=()
for i in $(seq 1 8); do
    "$py" -m lucir.cli bench --device cuda --dataset cifar100 --sections train_inc --only "tensor channels_last" \
        --steps "$((steps * 4))" --rounds "$rounds" --json "$out/packed-$i.json" > "$out/packed-$i.txt" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
"$py" - "$out" <<'PY' | tee "$out/packed-8.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rates = []
for f in sorted(out.glob("packed-*.json")):
    sec = json.loads(f.read_text())["sections"]["train_inc"]
    rates += [v["images_per_s"] for v in sec["variants"] if v["name"] == "tensor channels_last"]
print(f"8 packed processes, incremental step: {sum(rates):.1f} images/s in all ({len(rates)} processes)")
PY
echo "results in $out"
