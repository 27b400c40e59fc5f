"""The CTR training loop (model.name = wdl | wdl_seq | din | bst): time-split examples, train, validate, test.

Examples and the split come from `jaxrec.tasks.ctr.data` (global time quantiles: no validation or test
example is earlier than a training one). An epoch is one pass over the training examples; validation
computes AUC, GAUC and log loss (`jaxrec.ops.auc`) and keeps the checkpoint best on
`eval.select_metric` (valid/auc or valid/gauc); the test evaluates that checkpoint. Outputs follow the
leave-one-out trainer's contract: config.json, metrics.jsonl (one line per validation), metrics.json
(valid/ and test/ auc, gauc, logloss of the best checkpoint, train/seconds, ...), checkpoints/{latest,best}
and --resume (same data order and random streams as an uninterrupted run).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np

from jaxrec import config as config_lib
from jaxrec.data.pipeline import train_iterator
from jaxrec.engine import mesh as mesh_lib
from jaxrec.engine import run_dir
from jaxrec.engine.checkpoint import RunCheckpoints
from jaxrec.engine.dispatch import DispatchWindow
from jaxrec.engine.loop import TrainingDiverged, fit, restore_latest
from jaxrec.engine.step import compiler_options, make_optimizer
from jaxrec.models.rankers import build_ranker
from jaxrec.ops.auc import ctr_metrics
from jaxrec.tasks.ctr.data import CTRBatches, build_ctr_data, eval_batches
from jaxrec.tasks.ctr.loss import init_state, make_predict, make_train_step

log = logging.getLogger("jaxrec")


def evaluate(predict, state, batches: list[dict[str, np.ndarray]], prefix: str) -> dict[str, float]:
    """AUC, GAUC and log loss of `state` on `batches` (padding rows, weight 0, left out)."""
    window, logits = DispatchWindow(), []
    for batch in batches:  # dispatched ahead, in a bounded window
        logits.append(predict(state.params, state.batch_stats, batch))
        window.push(logits[-1])
    logits_N = np.concatenate([np.asarray(x)[b["weight_B"] > 0] for x, b in zip(jax.device_get(logits), batches)])
    labels_N = np.concatenate([b["label_B"][b["weight_B"] > 0] for b in batches])
    users_N = np.concatenate([b["user_B"][b["weight_B"] > 0] for b in batches])
    if not np.all(np.isfinite(logits_N)):
        raise TrainingDiverged(f"{prefix}: the model's logits are not finite; lower train.learning_rate")
    return ctr_metrics(labels_N, logits_N, users_N, prefix)


def run(cfg: config_lib.Config, workdir, resume: bool = False, interrupt_after_epoch: int | None = None):
    """Trains and evaluates a CTR ranker as `cfg` says; returns the final metrics (also in metrics.json)."""
    config_lib.validate(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.model)
    mesh_lib.check_batch_sizes(cfg, mesh, single_process="the CTR trainer")
    workdir = Path(workdir)
    resumed = run_dir.check_workdir(workdir, cfg, resume)  # reads only: nothing is written before the inputs pass
    max_len = cfg.model.max_len

    data = build_ctr_data(cfg)
    plan = CTRBatches(data, max_len, cfg.train.batch_size, cfg.train.seed)
    valid_batches = eval_batches(data, "valid", max_len, cfg.eval.batch_size)
    test_batches = eval_batches(data, "test", max_len, cfg.eval.batch_size)
    if cfg.ctr.l2_reg > 0:
        item_counts, genre_counts = data.row_counts(max_len)
    else:
        item_counts, genre_counts = np.zeros(data.num_items + 1), np.zeros(data.num_categories)
    model = build_ranker(cfg, data.num_items, data.num_categories, data.user_vocab, data.action_vocab)
    log.info(
        "ctr %s (%s labels): %d items, %d genres, %d user-field ids; examples train %d, valid %d, test %d "
        "(positive rate %.3f); %d steps/epoch",
        data.name,
        cfg.ctr.labels,
        data.num_items,
        data.num_categories,
        data.user_vocab,
        *(len(data.splits[s]) for s in ("train", "valid", "test")),
        float(data.label_N[data.splits["train"]].mean()),
        plan.steps_per_epoch,
    )

    tx = make_optimizer(cfg)
    # Item tables (embedding and wide bias) split over `model`, batch rows over `data`.
    state = mesh_lib.shard_state(init_state(model, tx, cfg, plan(0), data.categories_VxC), mesh, cfg.mesh.fsdp)
    compile_start = time.perf_counter()
    step_fn = make_train_step(model, tx, cfg, data.categories_VxC, item_counts, genre_counts)
    train_step = mesh_lib.compile_step(step_fn, state, plan(0), mesh, compiler_options())
    predict = jax.jit(make_predict(model, data.categories_VxC))
    compile_seconds = time.perf_counter() - compile_start
    log.info("compiled the train step in %.1f s", compile_seconds)

    run_dir.write_config(workdir, cfg, resumed)  # the first write: the inputs are good and the model compiled
    checkpoints = RunCheckpoints(workdir)
    state, record = restore_latest(checkpoints, state, workdir, resume)  # same shapes and shardings

    return fit(
        cfg,
        workdir,
        checkpoints,
        state,
        record,
        train_step,
        train_iterator(plan, int(state.step), cfg.train.num_epochs * plan.steps_per_epoch),
        plan.steps_per_epoch,
        lambda state, which: evaluate(predict, state, valid_batches if which == "valid" else test_batches, which),
        cfg.eval.select_metric,  # GAUC can be NaN (no user with both labels): NaN never wins
        compile_seconds,
        interrupt_after_epoch,
    )
