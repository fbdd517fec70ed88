#!/usr/bin/env bash
# Times stage 1 + stage 2 (SLTnet sequential) of the synthetic "small" setup end to end, evaluation
# included, into output/timed/. Needs the synth_small_train/val splits (see README, "Results").
#   bash benchmarks/train_small.sh            # prints stage1_seconds=... stage2_seconds=... total_seconds=...
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
.venv/bin/sltnet-train --config-file configs/synthetic/small_baseline.yaml --no-progress \
    OUTPUT_DIR output/timed/small_baseline
mid=$(date +%s)
.venv/bin/sltnet-train --config-file configs/synthetic/small_sltnet_sequential.yaml --no-progress \
    MODEL.WEIGHTS output/timed/small_baseline/model_final.pt OUTPUT_DIR output/timed/small_sltnet_sequential
end=$(date +%s)
echo "stage1_seconds=$((mid - start)) stage2_seconds=$((end - mid)) total_seconds=$((end - start))"
