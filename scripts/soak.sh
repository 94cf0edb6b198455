#!/usr/bin/env bash
# Soak the simulated rig (not in CI; CI runs ~20 s of it in tests/e2e/test_soak.py):
#   scripts/soak.sh              # 10 min, 5 s runs with random faults, summary in runs/soak.json
#   SECONDS_TOTAL=3600 scripts/soak.sh
# Exit 1 when a delivered frame was lost, a store is damaged, or memory/threads grew.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
# glibc gives every new thread (3 per session) its own malloc arena; without a cap, sessions in
# one process fragment memory (≈ 15 MiB RSS per run measured here) although nothing leaks
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec python scripts/soak.py --seconds "${SECONDS_TOTAL:-600}" --run-seconds "${RUN_SECONDS:-5}" \
    --json runs/soak.json "$@"
