#!/usr/bin/env bash
# The run that used to abort in an XLA:CPU rendezvous deadlock (31,000 synthetic users, default devices),
# repeated: one line per run with its exit code and seconds.
# usage: bash benchmarks/repeat_default_run.sh RUNS LABEL [--set key=value ...] >> benchmarks/results/reliability/default_run_repeats.txt
set -uo pipefail
cd "$(dirname "$0")/.."
runs=$1; label=$2; shift 2
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
for i in $(seq 1 "$runs"); do
  workdir=$(mktemp -d)/run
  start=$(date +%s)
  .venv/bin/python train.py --config configs/sasrec_ml1m.py --workdir "$workdir" \
    --set data.name=synthetic --set data.synthetic_users=31000 --set data.synthetic_items=23700 \
    --set data.synthetic_mean_length=9 --set model.max_len=50 --set model.dropout=0.5 --set train.num_epochs=2 \
    "$@" > "$workdir.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) $(git rev-parse --short HEAD) $label run $i: exit $rc, $(( $(date +%s) - start )) s, $(grep -m1 -o 'data=[0-9]*xmodel=[0-9]*' "$workdir.log") mesh, $cpu, $(nproc) cores, extra: $*"
  rm -rf "$(dirname "$workdir")"
done
