"""Runs a task: mesh, sharded init, optimizer, compiled step, then the loop (`jaxrec.engine.loop.fit`).

The host never waits on a step to dispatch the next one: losses stay on device and are read once per
epoch (and at progress updates), and every batch shape's step is compiled ahead of the loop.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jaxrec.engine import mesh as mesh_lib
from jaxrec.engine import run_dir
from jaxrec.engine.checkpoint import RunCheckpoints
from jaxrec.engine.compile import compile_steps, log_memory
from jaxrec.engine.feed import train_iterator
from jaxrec.engine.loop import fit, restore_latest
from jaxrec.engine.state import init_state, make_optimizer
from jaxrec.engine.step import make_train_step
from jaxrec.engine.task import Task, TaskRun

log = logging.getLogger("jaxrec")


def build_state(task_run: TaskRun, cfg, mesh):
    """(optimizer, initial state sharded over `mesh`) of a prepared run."""
    tx = make_optimizer(cfg.train)
    state = init_state(
        task_run.init_variables, tx, cfg.train.seed, mesh, cfg.mesh.fsdp, init_task_state=task_run.init_task_state
    )
    return tx, state


def run(task: Task, cfg, workdir: str | Path, resume: bool = False, interrupt_after_epoch: int | None = None):
    """Trains `cfg` (validated) with `task` in `workdir`; returns the final metrics (also in metrics.json).

    `interrupt_after_epoch` simulates a crash after that epoch's checkpoint (for tests).
    """
    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.model)
    mesh_lib.check_batch_sizes(cfg, mesh, single_process="" if task.multi_process else f"the {task.name} task")
    workdir = Path(workdir)
    resumed = run_dir.check_workdir(workdir, cfg, resume)  # reads only: nothing is written before the inputs pass

    task_run = task.setup(cfg, mesh)
    tx, state = build_state(task_run, cfg, mesh)
    step_fn = make_train_step(
        task_run.loss, tx, cfg.train.micro_batch, task_run.loss_divisor, task_run.update_task_state
    )
    train_step, compiled, compile_seconds = compile_steps(step_fn, state, task_run.example_batches, mesh)
    run_dir.write_config(workdir, cfg, resumed)  # the first write: the inputs are good and the model compiled
    checkpoints = RunCheckpoints(workdir)
    state, record = restore_latest(checkpoints, state, workdir, resume)  # same shapes and shardings
    log.info(
        "compiled %d train step shape(s) in %.1f s on a %s mesh",
        len(compiled),
        compile_seconds,
        "x".join(f"{name}={size}" for name, size in mesh.shape.items()),
    )
    log_memory(state, list(compiled.values())[-1])
    batches = task_run.batches
    rows = mesh_lib.process_rows(cfg.train.batch_size, mesh) if task.multi_process else None
    total_steps = cfg.train.num_epochs * batches.steps_per_epoch
    return fit(
        cfg,
        workdir,
        checkpoints,
        state,
        record,
        train_step,
        train_iterator(batches, int(state.step), total_steps, rows=rows),
        batches.steps_per_epoch,
        task_run.evaluate,
        cfg.eval.select_metric,  # NaN (a GAUC with no user of both labels) never wins
        compile_seconds,
        interrupt_after_epoch,
        entry_extras=task_run.entry_extras,
    )
