"""The CTR task (rankers wdl, wdl_seq, din, bst): time-split examples, BCE, AUC/GAUC/log loss.

Examples and the split come from `jaxrec.tasks.ctr.data` (global time quantiles: no validation or test
example is earlier than a training one). An epoch is one pass over the training examples; validation
computes AUC, GAUC and log loss (`jaxrec.ops.auc`) and keeps the checkpoint best on
`eval.select_metric` (valid/auc or valid/gauc); the test evaluates that checkpoint.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxrec.engine.dispatch import DispatchWindow
from jaxrec.engine.loop import TrainingDiverged
from jaxrec.engine.task import TaskRun
from jaxrec.models.rankers import build_ranker
from jaxrec.ops.auc import ctr_metrics
from jaxrec.tasks.ctr.data import CTRBatches, build_ctr_data, eval_batches
from jaxrec.tasks.ctr.loss import init_variables, make_loss, make_predict
from jaxrec.tasks.shared import NEXT_ITEM_ONLY_KEYS

log = logging.getLogger("jaxrec")


def evaluate(predict, state, batches: list[dict[str, np.ndarray]], prefix: str) -> dict[str, float]:
    """AUC, GAUC and log loss of `state` on `batches` (padding rows, weight 0, left out)."""
    window, logits = DispatchWindow(), []
    for batch in batches:  # dispatched ahead, in a bounded window
        logits.append(predict(state.params, state.model_state, batch))
        window.push(logits[-1])
    logits_N = np.concatenate([np.asarray(x)[b["weight_B"] > 0] for x, b in zip(jax.device_get(logits), batches)])
    labels_N = np.concatenate([b["label_B"][b["weight_B"] > 0] for b in batches])
    users_N = np.concatenate([b["user_B"][b["weight_B"] > 0] for b in batches])
    if not np.all(np.isfinite(logits_N)):
        raise TrainingDiverged(f"{prefix}: the model's logits are not finite; lower train.learning_rate")
    return ctr_metrics(labels_N, logits_N, users_N, prefix)


class CTRTask:
    name = "ctr"
    section = "ctr"
    unused_keys = NEXT_ITEM_ONLY_KEYS  # examples per user or per row, temporal or AUC evaluation
    multi_process = False
    # The split into CPU devices exists for attention's batched matmuls, which XLA:CPU runs on one core; the
    # rankers are mostly MLP and embedding GEMMs, which XLA:CPU already spreads over cores.
    one_cpu_device = True

    def select_metrics(self, cfg) -> list[str]:
        return ["valid/auc", "valid/gauc"]

    def setup(self, cfg, mesh=None) -> TaskRun:
        max_len = cfg.model.max_len
        data = build_ctr_data(cfg)
        plan = CTRBatches(data, max_len, cfg.train.batch_size, cfg.train.seed)
        eval_sets = {which: eval_batches(data, which, max_len, cfg.eval.batch_size) for which in ("valid", "test")}
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
        predict = jax.jit(make_predict(model, data.categories_VxC))
        return TaskRun(
            model=model,
            batches=plan,
            example_batches=[plan(0)],
            init_variables=init_variables(model, plan(0), data.categories_VxC),
            loss=make_loss(model, cfg, data.categories_VxC, item_counts, genre_counts),
            evaluate=lambda state, which: evaluate(predict, state, eval_sets[which], which),
        )


CTR = CTRTask()
