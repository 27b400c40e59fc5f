#!/usr/bin/env bash
# Per-epoch training seconds of configs/sasrec_ml1m.py (ML-1M, 3 epochs, default devices) at a commit before
# the dispatch window and at HEAD, alternating, two rounds; the same test metric shows the results are equal.
# usage: bash benchmarks/dispatch_window_cost.sh [BEFORE_COMMIT=3ff90da] >> benchmarks/results/reliability/dispatch_window_cost.txt
set -uo pipefail
cd "$(dirname "$0")/.."
here=$(pwd); before=$(mktemp -d)/before
git worktree add -q --detach "$before" "${1:-3ff90da}"
export JAXREC_DATA=${JAXREC_DATA:-$(realpath ../shared/data)}
for round in 1 2; do
  for repo in "$before" "$here"; do
    workdir=$(mktemp -d)/run
    (cd "$repo" && PYTHONPATH="$repo" "$here/.venv/bin/python" train.py --config configs/sasrec_ml1m.py \
      --workdir "$workdir" --set train.num_epochs=3 --set eval.every_epochs=3 > "$workdir.log" 2>&1)
    echo "$(cd "$repo" && git rev-parse --short HEAD) round $round: $("$here/.venv/bin/python" -c "import json; m = json.load(open('$workdir/metrics.json')); print('train_seconds_3_epochs', round(m['train/seconds'], 2), 'per_epoch', round(m['train/seconds'] / 3, 2), 'test_ndcg10_full', m['test/ndcg@10_full'])")"
  done
done
git worktree remove --force "$before"
