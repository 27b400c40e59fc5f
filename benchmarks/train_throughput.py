"""Training and evaluation throughput of a config, against a straightforward Flax port, in one run.

  python benchmarks/train_throughput.py [--config configs/sasrec_ml1m.py] [--epochs 3] [--out FILE]
  python benchmarks/train_throughput.py --smoke      # tiny synthetic shapes, seconds (the tests run it)

One JSON line per figure (stdout, and appended to --out): device kind, jax version, the figure,
its value and unit, and how it was measured. Times are medians of repeated runs after a warm-up,
with compile time reported apart. Figures:
  train/epoch_seconds     one epoch (every user's sequence once), through the real grain pipeline
  train/sequences_per_s   users per epoch / epoch seconds
  train/tokens_per_s      real (non-padding) target positions per epoch / epoch seconds
  train/step_ms[L]        median step time per length bucket
  eval/seconds            validation + test, sampled + full ranking, every user
  baseline/*              the same step without jaxrec's speed work (naive port; jaxrec variants)
  speedup/*               ratios of the above, measured in this run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.naive_sasrec import NaiveSASRec, make_naive_step  # noqa: E402
from jaxrec.config import Config, DataConfig, TrainConfig, apply_overrides, model_config  # noqa: E402
from jaxrec.data import load_dataset  # noqa: E402
from jaxrec.engine import mesh as mesh_lib  # noqa: E402
from jaxrec.engine.compile import compile_steps  # noqa: E402
from jaxrec.engine.dispatch import DispatchWindow  # noqa: E402
from jaxrec.engine.feed import train_iterator  # noqa: E402
from jaxrec.engine.state import make_optimizer  # noqa: E402
from jaxrec.models import build_model  # noqa: E402
from jaxrec.tasks.next_item.batches import TrainBatches, parse_buckets  # noqa: E402
from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator, draw_eval_negatives  # noqa: E402
from jaxrec.tasks.next_item.split import leave_one_out  # noqa: E402
from jaxrec.tasks.next_item.task import example_batches, init_state, make_train_step  # noqa: E402


def emit(records, out, name, value, unit, **extra):
    record = {
        "figure": name,
        "value": round(float(value), 4),
        "unit": unit,
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        **extra,
    }
    records.append(record)
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), float(np.max(times))


def time_epochs(cfg, split, epochs, options=None):
    """Median seconds of an epoch through the grain pipeline; also per-bucket step medians.

    The step runs as train.py runs it: on the config's mesh (on CPU, data parallel over the host's
    devices, see mesh.configure_cpu_devices), batches placed by mesh.put_batch.
    """
    buckets = parse_buckets(cfg.train.length_buckets, cfg.model.max_len)
    plan = TrainBatches(split.train, split.num_items, cfg.model.max_len, cfg.train.batch_size, buckets, 0)
    model = build_model(cfg.model, split.num_items)
    tx = make_optimizer(cfg.train)
    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.model)
    state = init_state(model, tx, cfg, mesh)
    train_step = make_train_step(model, tx, cfg, mesh, plan.mean_positions_per_batch)
    step, _, compile_seconds = compile_steps(train_step, state, example_batches(plan), mesh, options)
    batches = train_iterator(plan, 0, (epochs + 1) * plan.steps_per_epoch)
    epoch_times, per_bucket = [], {length: [] for length in buckets}
    window = DispatchWindow()  # as the trainer: at most a few steps in flight (XLA:CPU deadlocks at 32)
    for epoch in range(epochs + 1):  # epoch 0 warms up the pipeline and caches
        start = time.perf_counter()
        for _ in range(plan.steps_per_epoch):
            batch = next(batches)
            length = batch["inputs_BxL"].shape[1]
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            window.push(metrics["loss"])
            if epoch == epochs:  # last epoch: synchronise per step to time each bucket
                jax.block_until_ready(metrics)
                per_bucket[length].append(time.perf_counter() - t0)
        jax.block_until_ready(state)
        if epoch > 0 and epoch < epochs:
            epoch_times.append(time.perf_counter() - start)
        if epochs == 1 and epoch == 1:
            epoch_times.append(time.perf_counter() - start)
    tokens = sum(min(len(split.train[u]) - 1, cfg.model.max_len) for u in plan.users)
    return dict(
        epoch=float(np.median(epoch_times)),
        compile=compile_seconds,
        plan=plan,
        tokens=tokens,
        per_bucket={k: float(np.median(v)) for k, v in per_bucket.items() if v},
        state=state,
        model=model,
        mesh=mesh,
    )


def time_naive_step(cfg, num_items, batch_size, repeats):
    """The straightforward port's step at max_len (it pads every batch there), real padding pattern."""
    m = cfg.model
    model = NaiveSASRec(num_items, m.max_len, m.hidden, m.num_blocks, m.dropout)
    tx = optax.adam(cfg.train.learning_rate, b1=cfg.train.adam_b1, b2=cfg.train.adam_b2)
    params = model.init({"params": jax.random.key(0)}, jnp.ones((1, m.max_len), jnp.int32), deterministic=True)
    carry = (params["params"], tx.init(params["params"]), jax.random.key(1))
    rng = np.random.default_rng(0)
    batch = {
        k: rng.integers(1, num_items + 1, (batch_size, m.max_len)).astype(np.int32)
        for k in ("inputs_BxL", "positives_BxL", "negatives_BxL")
    }
    step = jax.jit(make_naive_step(model, tx), donate_argnums=0)
    start = time.perf_counter()
    carry, loss = step(carry, batch)
    jax.block_until_ready(loss)
    compile_seconds = time.perf_counter() - start
    state = {"carry": carry}

    def one():
        state["carry"], loss = step(state["carry"], batch)
        jax.block_until_ready(loss)

    one()
    return median_time(one, repeats), compile_seconds


def run_torch_peer(args, cfg, records, out) -> float:
    """Runs benchmarks/torch_peer_sasrec.py now, in this run; returns its epoch seconds."""
    import subprocess

    from jaxrec.data import default_data_dir

    data = args.torch_data or str(Path(default_data_dir("") or ".") / "sasrec-format" / "ml-1m.txt")
    proc = subprocess.run(
        [
            args.torch_python,
            str(REPO / "benchmarks" / "torch_peer_sasrec.py"),
            "--data",
            data,
            "--batch-size",
            str(cfg.train.batch_size),
            "--max-len",
            str(cfg.model.max_len),
            "--hidden",
            str(cfg.model.hidden),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    epoch = None
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        emit(records, out, record.pop("figure"), record.pop("value"), record.pop("unit"), **record)
        if records[-1]["figure"] == "peer/torch_epoch_seconds":
            epoch = records[-1]["value"]
    return epoch


def quarter_buckets(max_len: int) -> str:
    """The earlier `auto` rule (quarters of max_len, multiples of 8), for the ablation of six buckets."""
    return ",".join(str(min(max_len, -(-(max_len * q // 4) // 8) * 8)) for q in (1, 2, 3, 4))


def load_config(path, overrides):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return apply_overrides(module.get_config(), overrides)


def smoke_config() -> Config:
    return Config(
        data=DataConfig(name="synthetic", synthetic_users=300, synthetic_items=100, synthetic_mean_length=15),
        model=model_config("sasrec", max_len=16, hidden=16, num_blocks=1),
        train=TrainConfig(batch_size=32, micro_batch=8, length_buckets="8"),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/sasrec_ml1m.py"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of evaluation and baseline steps")
    parser.add_argument("--no-ablations", action="store_true", help="skip the jaxrec variants without speed work")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic shapes (seconds)")
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    parser.add_argument("--torch-python", default="", help="a Python with torch: also time the PyTorch peer")
    parser.add_argument("--torch-data", default="", help="ml-1m.txt for the peer (default: the local copy)")
    args = parser.parse_args(argv)
    if args.smoke:
        cfg, args.epochs, args.repeats, args.no_ablations = smoke_config(), 1, 2, True
    else:
        cfg = load_config(args.config, args.set)
    mesh_lib.configure_cpu_devices(cfg)  # as train.py does, before any JAX op
    records, out = [], args.out
    split = leave_one_out(load_dataset(cfg.data))
    common = dict(
        config=Path(args.config).name if not args.smoke else "smoke",
        users=split.num_users,
        batch_size=cfg.train.batch_size,
        max_len=cfg.model.max_len,
        hidden=cfg.model.hidden,
        devices=len(jax.devices()),
    )

    result = time_epochs(cfg, split, args.epochs)
    plan = result["plan"]
    emit(records, out, "train/compile_seconds", result["compile"], "s", buckets=list(plan.buckets), **common)
    emit(
        records,
        out,
        "train/epoch_seconds",
        result["epoch"],
        "s",
        steps=plan.steps_per_epoch,
        padding_fraction=round(plan.padding_fraction, 3),
        **common,
    )
    emit(records, out, "train/sequences_per_s", len(plan.users) / result["epoch"], "seq/s", **common)
    emit(
        records,
        out,
        "train/tokens_per_s",
        result["tokens"] / result["epoch"],
        "tok/s",
        note="real (non-padding) target positions",
        **common,
    )
    for length, seconds in result["per_bucket"].items():
        emit(records, out, f"train/step_ms[{length}]", 1000 * seconds, "ms", **common)

    negatives = draw_eval_negatives(split, cfg)
    evaluator = LeaveOneOutEvaluator(split, negatives, result["model"], cfg, plan.buckets, mesh=result["mesh"])
    params = result["state"].params
    start = time.perf_counter()
    evaluator.evaluate(params, "valid")
    evaluator.evaluate(params, "test")
    emit(records, out, "eval/compile_and_first_seconds", time.perf_counter() - start, "s", **common)
    (med, low, high) = median_time(
        lambda: (evaluator.evaluate(params, "valid"), evaluator.evaluate(params, "test")), args.repeats
    )
    emit(
        records,
        out,
        "eval/seconds",
        med,
        "s",
        min=round(low, 3),
        max=round(high, 3),
        note="valid+test, sampled and full ranking, all users",
        **common,
    )

    (naive_step, low, high), naive_compile = time_naive_step(cfg, split.num_items, cfg.train.batch_size, args.repeats)
    naive_steps = -(-len(plan.users) // cfg.train.batch_size)
    emit(
        records,
        out,
        "baseline/naive_flax_step_ms",
        1000 * naive_step,
        "ms",
        min=round(1000 * low, 1),
        max=round(1000 * high, 1),
        compile_seconds=round(naive_compile, 1),
        **common,
    )
    emit(
        records,
        out,
        "baseline/naive_flax_epoch_seconds",
        naive_step * naive_steps,
        "s",
        steps=naive_steps,
        note="median step x steps per epoch (every batch padded to max_len)",
        **common,
    )
    emit(records, out, "speedup/epoch_vs_naive_flax", naive_step * naive_steps / result["epoch"], "x", **common)

    if args.torch_python:
        peer_epoch = run_torch_peer(args, cfg, records, out)
        emit(records, out, "speedup/epoch_vs_torch_peer", peer_epoch / result["epoch"], "x", **common)

    if not args.no_ablations:
        variants = {
            "no_buckets": dict(train=dict(length_buckets="none")),
            "no_micro_batch": dict(train=dict(micro_batch=0)),
            "four_buckets": dict(train=dict(length_buckets=quarter_buckets(cfg.model.max_len))),
        }
        if len(jax.devices()) > 1:  # the CPU split over cores (mesh.configure_cpu_devices) undone
            variants["one_device"] = dict(mesh=dict(data=1))
        for name, changes in variants.items():
            variant = dataclasses.replace(
                cfg, **{s: dataclasses.replace(getattr(cfg, s), **f) for s, f in changes.items()}
            )
            r = time_epochs(variant, split, max(1, args.epochs - 1))
            emit(records, out, f"baseline/jaxrec_{name}_epoch_seconds", r["epoch"], "s", **common)
        r = time_epochs(cfg, split, max(1, args.epochs - 1), options={})
        emit(records, out, "baseline/jaxrec_ynn_fusions_on_epoch_seconds", r["epoch"], "s", **common)
    return records


if __name__ == "__main__":
    main()
