#!/usr/bin/env bash
# SASRec on ML-1M with the paper's settings (configs/sasrec_ml1m.py), trained to the end, resumable.
# Writes benchmarks/results/sasrec_ml1m/{config.json,metrics.jsonl,metrics.json,train.log}.
#   bash benchmarks/quality_ml1m.sh [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${WORKDIR:-runs/quality_ml1m}
OUT=benchmarks/results/sasrec_ml1m
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
$PY train.py --config configs/sasrec_ml1m.py --workdir "$WORKDIR" --resume --set eval.every_epochs=10 "$@" \
  2>&1 | grep --line-buffered -v -E "Warning|warn\(|libtpu" | tee -a "$OUT/train.log"
cp "$WORKDIR"/config.json "$WORKDIR"/metrics.jsonl "$WORKDIR"/metrics.json "$OUT"/
