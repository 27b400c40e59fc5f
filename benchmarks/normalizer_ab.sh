#!/usr/bin/env bash
# A/B of train.loss_normalizer (batch: mean over the batch's positions; epoch: summed over a random
# batch's mean positions) for SASRec on ML-1M with length buckets, 40 epochs each, one after the other.
# Writes benchmarks/results/sasrec_ml1m_normalizer/{batch,epoch}.{metrics.jsonl,metrics.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/sasrec_ml1m_normalizer
mkdir -p "$OUT"
for norm in batch epoch; do
  $PY train.py --config configs/sasrec_ml1m.py --workdir "runs/ab_$norm" --set train.num_epochs=40 \
    --set eval.every_epochs=10 --set eval.popularity_negatives=false --set train.loss_normalizer=$norm
  cp "runs/ab_$norm/metrics.jsonl" "$OUT/$norm.metrics.jsonl"
  cp "runs/ab_$norm/metrics.json" "$OUT/$norm.metrics.json"
done
