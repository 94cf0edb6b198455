#!/usr/bin/env bash
# Re-make the trained checkpoint and exported SLM pattern shipped for configs/sim-rig.yaml, with
# the project's own training and export (a fresh clone then runs the sim rig without training):
#
#   scripts/make-sim-assets.sh            # ≈ 10–30 min on 2 CPU cores (device: cpu in the config)
#
# Writes configs/assets/sim-rig.pt (best validation checkpoint) and
# configs/assets/sim-rig-pattern/{pattern.npy,pattern.png,pattern.json}; configs/sim-rig.yaml
# names both (`checkpoint:`, `pattern:`). Training output (metrics, figures) stays in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/train-sim-rig}"

dmicro train --config configs/train-sim-rig.yaml --out "$OUT" --overwrite
mkdir -p configs/assets
cp "$OUT/best.pt" configs/assets/sim-rig.pt
rm -rf configs/assets/sim-rig-pattern
dmicro export configs/assets/sim-rig.pt --config configs/sim-rig.yaml \
    --out configs/assets/sim-rig-pattern
cp "$OUT/summary.json" configs/assets/sim-rig-train-summary.json
echo "assets written to configs/assets/ (checkpoint, pattern, training summary)"
