"""Two-tower training at catalogue scale: one real train step over a synthetic 10^6-item catalogue.

  python benchmarks/retrieval_scale.py [--items 1000000] [--users 1024] [--negatives 8192] [--out FILE]
  python benchmarks/retrieval_scale.py --smoke      # tiny sizes, seconds (the tests run it)

The step is jaxrec's own (`jaxrec.tasks.retrieval.loss`): PinnerFormer user tower over the last `--max-len`
events, mixed negatives (the batch's positives plus `--negatives` uniform ones, shared by the batch),
count-min sketch frequencies updated in the step, sampled softmax with logQ, Adam on every
parameter (the 10^6 x D item table included). Histories and positives are Zipf-distributed ids.
The loss builds a users x candidates logit matrix, never users x catalogue. One JSON line per figure:
compile seconds, median step time (after a warm-up step) and steps/s, the compiled step's
`memory_analysis()` and, on CPU, the process's peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxrec.config import Config, RetrievalConfig, TrainConfig, model_config  # noqa: E402
from jaxrec.engine.compile import compiler_options  # noqa: E402
from jaxrec.engine.state import init_state, make_optimizer  # noqa: E402
from jaxrec.engine.step import make_train_step  # noqa: E402
from jaxrec.models import build_model  # noqa: E402
from jaxrec.tasks.retrieval.loss import init_frequency, init_params, make_loss, update_frequency  # noqa: E402


def synthetic_batch(rng, users: int, max_len: int, num_items: int) -> dict[str, np.ndarray]:
    """Zipf-popular histories with increasing timestamps; each row's positive is its next item."""
    ids = np.minimum(rng.zipf(1.2, size=(users, max_len + 1)), num_items).astype(np.int32)
    gaps = rng.exponential(3600.0, size=(users, max_len)).astype(np.int64) + 1
    times = (1_600_000_000 + np.cumsum(gaps, axis=1)).astype(np.int32)
    return {
        "item_ids_BxL": ids[:, :-1],
        "timestamps_BxL": times,
        "action_BxL": rng.integers(1, 6, size=(users, max_len)).astype(np.int32),
        "query_time_B": times[:, -1],
        "positions_BxP": np.full((users, 1), max_len - 1, np.int32),
        "positives_BxP": ids[:, -1:],
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1024, help="users (queries) per batch")
    parser.add_argument("--negatives", type=int, default=8192, help="uniform negatives shared by the batch")
    parser.add_argument("--max-len", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
    parser.add_argument("--out", default="")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.users, args.negatives, args.max_len, args.hidden, args.steps = 5000, 64, 256, 8, 16, 2

    cfg = Config(
        model=model_config(
            "pinnerformer",
            max_len=args.max_len,
            hidden=args.hidden,
            num_blocks=2,
            num_heads=2,
            dropout=0.1,
            event_features=("action", "time", "gap", "age"),
        ),
        train=TrainConfig(batch_size=args.users, learning_rate=1e-3),
        retrieval=RetrievalConfig(negatives="mixed", num_sampled=args.negatives, frequency="count_min"),
    )
    cfg = dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, objective="next"))
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(rng, args.users, args.max_len, args.items) for _ in range(args.steps + 1)]
    model = build_model(cfg.model, args.items)
    tx = make_optimizer(cfg.train)
    state = init_state(
        init_params(model, cfg, batches[0]), tx, cfg.train.seed, init_task_state=lambda: init_frequency(cfg)
    )
    counts = np.ones(args.items + 1, np.int64)  # unused by count_min; the exact path needs the shape only
    step_fn = make_train_step(make_loss(model, cfg, args.items, counts), tx, update_task_state=update_frequency(cfg))
    start = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, batches[0]).compile(compiler_options=compiler_options())
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    state, metrics = compiled(state, batches[0])  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    common = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "items": args.items,
        "users": args.users,
        "negatives": args.negatives,
        "max_len": args.max_len,
        "hidden": args.hidden,
    }
    figures = {
        "compile_seconds": (compile_s, "s"),
        "step_ms": (1000 * step_s, "ms"),
        "steps_per_s": (1.0 / step_s, "steps/s"),
        "final_loss": (float(metrics["loss"]), "nats"),
        "param_bytes": (param_bytes, "bytes"),
    }
    if memory is not None:
        figures["xla_temp_bytes"] = (memory.temp_size_in_bytes, "bytes")
        figures["xla_peak_bytes"] = (
            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes,
            "bytes",
        )
    if jax.default_backend() == "cpu":
        figures["process_peak_rss_bytes"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "bytes")
    records = []
    for name, (value, unit) in figures.items():
        record = {"figure": name, "value": round(float(value), 4), "unit": unit, **common}
        if name == "step_ms":
            record["note"] = f"median of {len(times)} steps after a warm-up"
        records.append(record)
        line = json.dumps(record, sort_keys=True)
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return records


if __name__ == "__main__":
    main()
