#!/usr/bin/env bash
# Regenerate the sweeps behind docs/results/ and their reports (the commands docs/results/README.md quotes).
# usage: scripts/results.sh [digits|cifar|all]   (env: LUCIR, default .venv/bin/lucir; RUNS, default runs/exp)
set -euo pipefail
cd "$(dirname "$0")/.."
L="${LUCIR:-.venv/bin/lucir}"
R="${RUNS:-runs/exp}"
what="${1:-digits}"
t() { local s=$SECONDS; "$@"; echo "[$(( SECONDS - s )) s] $*" | tee -a "$R/timings.txt"; }
mkdir -p "$R"
if [[ "$what" == digits || "$what" == all ]]; then
  t $L ablate --presets finetune,baseline,cn,cn_lf,lucir,lucir_cbf,joint --seeds 6 --out "$R/ablate-digits-6seeds" --num-cpus 2
  t $L report "$R/ablate-digits-6seeds" --out docs/results/digits-ablation --no-mlflow
  t $L search --trials 12 --out "$R/search-digits-stream" --num-cpus 2
  t $L report "$R/search-digits-stream" --out docs/results/digits-search --no-mlflow
  t $L search --protocol first-task --trials 12 --out "$R/search-digits-first-task" --num-cpus 2
  t $L search --protocol transfer --trials 12 --out "$R/search-digits-transfer" --num-cpus 2
  t $L report --compare "$R/search-digits-stream" "$R/search-digits-first-task" "$R/search-digits-transfer" \
      --out docs/results/protocols
fi
if [[ "$what" == cifar || "$what" == all ]]; then
  t $L ablate --dataset cifar100 --data-root ../shared/data --presets baseline,lucir --seeds 2 --epochs 1 \
      --cpus-per-trial 1 --max-concurrent 2 --num-cpus 2 --out "$R/ablate-cifar100-e1"
  t $L report "$R/ablate-cifar100-e1" --out docs/results/cifar100-ablation-e1 --no-mlflow
fi
