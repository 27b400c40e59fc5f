"""The next-item task: leave-one-out split, length-bucketed batches, the `model.loss` of the next item at every
position, and ranking metrics of each user's held-out item (sampled and full-catalogue protocols).

Models: sasrec, bert4rec, gru4rec, mf, youtube_dnn (`jaxrec.models.protocols.NextItemModel`).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxrec.data import load_dataset
from jaxrec.data.datasets import ML1M_USER_FEATURE_ROWS, user_inputs
from jaxrec.engine import state as state_lib
from jaxrec.engine import step as step_lib
from jaxrec.engine.task import TaskRun
from jaxrec.models import build_model
from jaxrec.tasks.next_item.batches import TrainBatches, parse_buckets
from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator, draw_eval_negatives
from jaxrec.tasks.next_item.loss import training_loss
from jaxrec.tasks.next_item.split import leave_one_out

log = logging.getLogger("jaxrec")

BATCH_KEYS = ("inputs_BxL", "positives_BxL", "negatives_BxL")


def make_loss(model, cfg, num_items: int, mesh=None):
    """The task's loss (`jaxrec.engine.step`): `model.loss` of the next item (or the model's own targets)."""
    target_fraction = model.target_fraction(cfg.model)  # a sparse share of positions with targets (the cloze)

    def loss(params, model_state, task_state, batch, key):
        user_inputs = {"user_BxF": batch["user_BxF"]} if "user_BxF" in batch else {}  # per-user inputs (MF)
        batch = model.training_batch(batch, jax.random.fold_in(key, 1 << 29), cfg.model, num_items)
        h_BxLxD, table_VxD = model.apply(
            {"params": params}, batch["inputs_BxL"], deterministic=False, rngs={"dropout": key}, **user_inputs
        )
        loss_key = jax.random.fold_in(key, 1 << 30)  # gbce's negatives; independent of dropout
        mean, count = training_loss(
            cfg.model, num_items, h_BxLxD, table_VxD, batch, loss_key, mesh, target_fraction=target_fraction
        )
        return mean * count, (count, model_state, {})

    return loss


def init_variables(model, max_len: int):
    """init(key) -> the model's variables, from a dummy history of `max_len` items."""
    return lambda key: model.init({"params": key}, np.ones((1, max_len), np.int32), method=model.encode)


def init_state(model, tx, cfg, mesh=None) -> state_lib.TrainState:
    """The engine's initial state for `model` (sharded over `mesh` when given)."""
    return state_lib.init_state(init_variables(model, cfg.model.max_len), tx, cfg.train.seed, mesh, cfg.mesh.fsdp)


def make_train_step(model, tx, cfg, mesh=None, mean_positions_per_batch: float | None = None):
    """The engine's step with this task's loss; `mean_positions_per_batch` (TrainBatches') is the gradient's
    divisor when train.loss_normalizer is "epoch" (the reported loss is the batch's mean either way)."""
    divisor = loss_divisor(cfg, mean_positions_per_batch)
    return step_lib.make_train_step(make_loss(model, cfg, model.num_items, mesh), tx, cfg.train.micro_batch, divisor)


def loss_divisor(cfg, mean_positions_per_batch: float | None) -> float | None:
    """The gradient's divisor `train.loss_normalizer` asks for: the data's mean positions per batch ("epoch"),
    or None, the batch's own count ("batch")."""
    if cfg.train.loss_normalizer != "epoch":
        return None
    if not mean_positions_per_batch:
        raise ValueError("train.loss_normalizer=epoch needs the mean positions per batch of the data")
    return mean_positions_per_batch


def example_batches(plan: TrainBatches) -> list[dict[str, np.ndarray]]:
    """One zero batch per bucket length (the shapes the step is compiled for)."""
    batches = []
    for length in plan.buckets:
        batch = {k: np.zeros((plan.batch_size, length), np.int32) for k in BATCH_KEYS}
        if plan.user_table is not None:  # per-user model inputs (MF's user ids, YoutubeDNN's user features)
            batch["user_BxF"] = np.zeros((plan.batch_size, plan.user_table.shape[1]), np.int32)
        batches.append(batch)
    return batches


class NextItemTask:
    name = "next_item"
    section = ""
    unused_keys = ()
    multi_process = True
    one_cpu_device = False

    def select_metrics(self, cfg) -> list[str]:
        protocols = ("sampled", "full") if cfg.eval.full_ranking else ("sampled",)
        if cfg.eval.popularity_negatives:
            protocols += ("popsampled",)
        known = [f"valid/mrr_{p}" for p in protocols]
        return known + [f"valid/{m}@{k}_{p}" for p in protocols for m in ("hr", "ndcg") for k in cfg.eval.ks]

    def setup(self, cfg, mesh) -> TaskRun:
        dataset = load_dataset(cfg.data)
        split = leave_one_out(dataset, cfg.data.validation_users, cfg.data.seed)
        buckets = parse_buckets(cfg.train.length_buckets, cfg.model.max_len)
        model = build_model(
            cfg.model, split.num_items, num_users=split.num_users, user_feature_rows=ML1M_USER_FEATURE_ROWS
        )
        # Models with per-user inputs (MF's user ids, YoutubeDNN's user features) get them in every batch.
        users = user_inputs(dataset, cfg.data, model.uses_user_features) if model.uses_user_inputs else None
        plan = TrainBatches(
            split.train,
            split.num_items,
            cfg.model.max_len,
            cfg.train.batch_size,
            buckets,
            cfg.train.seed,
            users,
            whole_sequence=model.trains_on_whole_sequence,
        )
        evaluator = LeaveOneOutEvaluator(split, draw_eval_negatives(split, cfg), model, cfg, buckets, users, mesh)
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
        return TaskRun(
            model=model,
            batches=plan,
            example_batches=example_batches(plan),
            init_variables=init_variables(model, cfg.model.max_len),
            loss=make_loss(model, cfg, split.num_items, mesh),
            evaluate=lambda state, which: evaluator.evaluate(state.params, which),
            loss_divisor=loss_divisor(cfg, plan.mean_positions_per_batch),
        )


NEXT_ITEM = NextItemTask()
