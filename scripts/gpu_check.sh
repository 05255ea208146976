#!/usr/bin/env bash
# The GPU check of issue 20 (docs/gpu/README.md): every GPU figure of lucir in one command that stops by
# itself within 9 minutes, everything under OUT (default runs/gpu-check): summary.md + 7 JSON files.
#
# usage: scripts/gpu_check.sh [OUT] [--dry-run] [--timeout SECTION=SECONDS] [--data-root DIR] [--budget S]
#   env: PYTHON (default .venv/bin/python where it exists, else python3: the device machines' torch)
# No installation needed: the repository root goes on PYTHONPATH.
set -euo pipefail
out="runs/gpu-check"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then out="$(realpath -m "$1")"; shift; fi
cd "$(dirname "$0")/.."
py="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec env PYTHONUNBUFFERED=1 "$py" scripts/gpu_check.py --out "$out" "$@"
