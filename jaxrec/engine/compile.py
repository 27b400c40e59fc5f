"""Ahead-of-time compilation of the train step, once per batch shape, and what the result costs in memory."""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from jaxrec.engine import mesh as mesh_lib

log = logging.getLogger("jaxrec")


def compiler_options() -> dict[str, str]:
    """XLA options for our executables on the current backend.

    CPU: with YNNPACK fusions of the small matmuls in these models (d = 50) an ML-1M epoch took
    14.2 s instead of 10.3 s on a 2-core AMD EPYC (benchmarks/results/cpu/train_throughput.jsonl),
    so they are off.
    """
    if jax.default_backend() == "cpu":
        return {"xla_cpu_experimental_ynn_fusion_type": ""}
    return {}


def shape_key(batch: dict) -> tuple:
    """What tells a batch's compiled step: the shapes of its arrays, by key."""
    return tuple((path, np.shape(x)) for path, x in jax.tree_util.tree_leaves_with_path(batch))


def compile_steps(step_fn, state, example_batches: list[dict], mesh, options: dict | None = None):
    """`step_fn` compiled for each example batch's shapes (global shapes: the whole batch, every process's rows),
    the state in and out in its sharding (donated), batches split over `data`.

    Returns (step(state, host_batch) -> (state, metrics), {shape key: compiled}, seconds); `step` takes this
    process's rows of a batch and picks the executable by the batch's shapes.
    """
    options = compiler_options() if options is None else options
    jitted = mesh_lib.jit_step(step_fn, state, mesh)
    start = time.perf_counter()
    compiled = {}
    for batch in example_batches:
        lowered = jitted.lower(state, mesh_lib.abstract_batch(batch, mesh))
        compiled[shape_key(batch)] = lowered.compile(compiler_options=options)
    seconds = time.perf_counter() - start
    if len(compiled) == 1:  # one shape: no lookup per step
        (only,) = compiled.values()

        def step(state, batch):
            return only(state, mesh_lib.put_batch(batch, mesh))

    else:
        # Keys are of the global batch; a process's rows differ in the row count only.
        by_rest = {key_without_rows(key): executable for key, executable in compiled.items()}

        def step(state, batch):
            return by_rest[key_without_rows(shape_key(batch))](state, mesh_lib.put_batch(batch, mesh))

    return step, compiled, seconds


def key_without_rows(key: tuple) -> tuple:
    return tuple((path, shape[1:]) for path, shape in key)


def log_memory(state, compiled) -> dict[str, float]:
    """Logs (and returns) bytes per device of the state and of a compiled step."""
    report = mesh_lib.memory_report(state, compiled)
    log.info(
        "memory per device: params %.3g MB (of %.3g MB), state %.3g MB; step temporaries %.3g MB",
        report["params_bytes_per_device"] / 1e6,
        report["params_bytes_total"] / 1e6,
        report["state_bytes_per_device"] / 1e6,
        report.get("step_temp_bytes", float("nan")) / 1e6,
    )
    for name, shape, size in mesh_lib.largest_hlo_values(compiled.as_text()):
        log.info("  largest step value: %s %s %.1f MB", name, shape, size / 1e6)
    return report
