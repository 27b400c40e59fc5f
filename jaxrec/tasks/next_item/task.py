"""The training loop: data, compile, train, validate, checkpoint, test the best checkpoint.

The host never waits on a step to dispatch the next one: losses stay on device and are read
once per epoch (and at progress updates), and every bucket's step is compiled ahead of the loop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np

from jaxrec import config as config_lib
from jaxrec.data import load_dataset
from jaxrec.data.datasets import user_inputs
from jaxrec.data.pipeline import TrainBatches, parse_buckets, train_iterator
from jaxrec.engine import mesh as mesh_lib
from jaxrec.engine import run_dir
from jaxrec.engine.checkpoint import RunCheckpoints
from jaxrec.engine.loop import TrainingDiverged, fit, restore_latest  # noqa: F401  (TrainingDiverged: re-exported)
from jaxrec.engine.step import compiler_options, init_state, make_optimizer, make_train_step
from jaxrec.models import build_model, trains_on_whole_sequence, uses_user_inputs
from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator, draw_eval_negatives
from jaxrec.tasks.next_item.split import leave_one_out

log = logging.getLogger("jaxrec")


def compile_train_steps(train_step, state, plan: TrainBatches, options: dict | None = None, mesh=None):
    """AOT-compiles the step once per bucket length; returns ({length: compiled}, seconds).

    `options`: XLA compiler options (default: `compiler_options()` for this backend). With a `mesh`
    the step takes and returns the state in its sharding (donated) and batches split over `data`.
    """
    options = compiler_options() if options is None else options
    jitted = jax.jit(train_step, donate_argnums=0) if mesh is None else mesh_lib.jit_step(train_step, state, mesh)
    start = time.perf_counter()
    compiled = {}
    for length in plan.buckets:
        shape = jax.ShapeDtypeStruct((plan.batch_size, length), np.int32)
        batch = {k: shape for k in ("inputs_BxL", "positives_BxL", "negatives_BxL")}
        if plan.user_table is not None:  # per-user model inputs (MF's user ids, YoutubeDNN's user features)
            batch["user_BxF"] = jax.ShapeDtypeStruct((plan.batch_size, plan.user_table.shape[1]), np.int32)
        compiled[length] = jitted.lower(state, batch).compile(compiler_options=options)
    return compiled, time.perf_counter() - start


def log_memory(state, compiled) -> dict[str, float]:
    """Logs (and returns) bytes per device of the state and of the largest bucket's compiled step."""
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


def run(
    cfg: config_lib.Config, workdir: str | Path, resume: bool = False, interrupt_after_epoch: int | None = None
) -> dict[str, float]:
    """Trains `cfg` in `workdir` and returns the final metrics (also written to metrics.json).

    `interrupt_after_epoch` simulates a crash after that epoch's checkpoint (for tests).
    """
    if cfg.model.name == "pinnerformer":  # two-tower retrieval: temporal split, its own loop
        from jaxrec.tasks.retrieval import task as retrieval_trainer

        return retrieval_trainer.run(cfg, workdir, resume, interrupt_after_epoch)
    if cfg.model.name in config_lib.CTR_MODELS:  # CTR ranking: time-split examples, AUC/GAUC, its own loop
        from jaxrec.tasks.ctr import task as ctr_trainer

        return ctr_trainer.run(cfg, workdir, resume, interrupt_after_epoch)
    config_lib.validate(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.model)
    mesh_lib.check_batch_sizes(cfg, mesh)
    workdir = Path(workdir)
    resumed = run_dir.check_workdir(workdir, cfg, resume)  # reads only: nothing is written before the inputs pass

    dataset = load_dataset(cfg.data)
    split = leave_one_out(dataset, cfg.data.validation_users, cfg.data.seed)
    buckets = parse_buckets(cfg.train.length_buckets, cfg.model.max_len)
    model = build_model(cfg.model, split.num_items, num_users=split.num_users)
    # Models with per-user inputs (MF's user ids, YoutubeDNN's user features) get them in every batch.
    users = user_inputs(dataset, cfg.data, cfg.model.user_features) if uses_user_inputs(model) else None
    plan = TrainBatches(
        split.train,
        split.num_items,
        cfg.model.max_len,
        cfg.train.batch_size,
        buckets,
        cfg.train.seed,
        users,
        whole_sequence=trains_on_whole_sequence(model),
    )
    negatives = draw_eval_negatives(split, cfg)
    evaluator = LeaveOneOutEvaluator(split, negatives, model, cfg, buckets, users, mesh)
    log.info(
        "data %s: %d users, %d items, %d interactions; %d steps/epoch, buckets %s, %.0f%% padding",
        dataset.name,
        dataset.num_users,
        split.num_items,
        dataset.num_interactions,
        plan.steps_per_epoch,
        buckets,
        100 * plan.padding_fraction,
    )

    tx = make_optimizer(cfg)
    state = init_state(model, tx, cfg, mesh)
    steps, compile_seconds = compile_train_steps(
        make_train_step(model, tx, cfg, mesh, plan.mean_positions_per_batch), state, plan, mesh=mesh
    )
    run_dir.write_config(workdir, cfg, resumed)  # the first write: the model compiled; process 0 writes run files
    checkpoints = RunCheckpoints(workdir)
    state, record = restore_latest(checkpoints, state, workdir, resume)  # same shapes and shardings
    log.info(
        "compiled %d train step shapes in %.1f s on a %s mesh",
        len(steps),
        compile_seconds,
        "x".join(f"{name}={size}" for name, size in mesh.shape.items()),
    )
    log_memory(state, steps[max(steps)])
    rows = mesh_lib.process_rows(cfg.train.batch_size, mesh)
    return fit(
        cfg,
        workdir,
        checkpoints,
        state,
        record,
        # The batch's bucket; this process's rows become one global array split over `data`.
        lambda state, batch: steps[batch["inputs_BxL"].shape[1]](state, mesh_lib.put_batch(batch, mesh)),
        train_iterator(plan, int(state.step), cfg.train.num_epochs * plan.steps_per_epoch, rows=rows),
        plan.steps_per_epoch,
        lambda state, which: evaluator.evaluate(state.params, which),
        cfg.eval.select_metric,
        compile_seconds,
        interrupt_after_epoch,
    )
