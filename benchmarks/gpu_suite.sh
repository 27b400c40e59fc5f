#!/usr/bin/env bash
# Kernel benchmarks on one NVIDIA GPU (sized for an H200): 46 cases in under 8 minutes.
#
#   bash benchmarks/gpu_suite.sh            # PYTHON=... to choose the interpreter (default python3)
#
# Needs jax with CUDA, flax and optax; not grain (no script here imports it). Writes under
# benchmarks/results/<device>/ (e.g. nvidia-h200/): attention_bench.{jsonl,md}, step_bench.{jsonl,md},
# loss_bench.jsonl. Cases:
#   attention  40: bfloat16 forward+backward, causal with left padding, 8 heads x head dim 64 and 128,
#              xla vs cudnn (cuDNN's own padding+causal mask) vs pallas_flash (JAX's Pallas Triton
#              kernel) vs padded (jaxrec.kernels.padded_attention); uniform (full) rows at
#              L = 512, 2048, 8192 and ML-1M history lengths at L = 2048, 8192; B = 32768 tokens / L
#   step        2: SASRec ML-1M train step (its bce, and full-catalogue ce)
#   loss        4: chunked CE and sampled softmax (8,192 negatives) at 1e5 and 1e6 items
# Each invocation has its own time limit, so one slow part cannot eat the others' time; records are
# appended line by line, so a timed-out part keeps the cases it finished (the tables are rebuilt last).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "gpu_suite.sh: jax sees no GPU (backend $("$PY" -c 'import jax; print(jax.default_backend())'))" >&2
  exit 1
fi
DEVICE=$("$PY" benchmarks/bench_common.py)
OUT=benchmarks/results/$DEVICE
mkdir -p "$OUT"
echo "gpu_suite.sh: writing to $OUT"
status=0

# 24 uniform cases (3 lengths) + 16 ML-1M cases (2 lengths), 4 implementations each.
timeout 240 "$PY" benchmarks/attention_bench.py \
  --seq-lens 512,2048,8192 --heads 8x64c,8x128c --dtypes bfloat16 --passes fwd_bwd \
  --dists uniform,ml1m --impls xla,cudnn_padded,pallas_flash,padded \
  --cases '*-uniform-*,L2048-*,L8192-*' --repeats 10 --budget-s 1.5 || status=$?

timeout 110 "$PY" benchmarks/step_bench.py --cases 'sasrec_ml1m,sasrec_ml1m:ce' --steps 20 --budget-s 5 || status=$?

timeout 100 "$PY" benchmarks/loss_bench.py --sizes 1e5,1e6 --impls chunked,sampled --negatives 8192 \
  --out "$OUT/loss_bench.jsonl" || status=$?

# Tables from whatever was recorded (also after a timeout).
"$PY" benchmarks/attention_bench.py --md-only --plot >/dev/null || status=$?
"$PY" benchmarks/step_bench.py --md-only >/dev/null || status=$?
echo "gpu_suite.sh: done (exit status $status); see $OUT/*.md"
exit "$status"
