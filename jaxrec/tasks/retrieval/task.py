"""The retrieval task (two-tower models: pinnerformer): temporal split, sampled softmax, temporal evaluation.

Split: a global cut-off keeps the last `retrieval.test_fraction` of interactions (in time) for test;
of the events before it, the last `retrieval.valid_fraction` validate. Training examples come from
the events before the validation cut-off only; validation picks the best checkpoint by
`eval.select_metric` (a valid/recall@K of `retrieval.ks`); the test evaluates that checkpoint with every
event before the test cut-off as history.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxrec import config as config_lib
from jaxrec.data.events import FEATURE_COLUMNS, EventDataset, load_events
from jaxrec.data.types import DataError
from jaxrec.engine.checkpoint import RunCheckpoints
from jaxrec.engine.state import init_state, make_optimizer
from jaxrec.engine.task import TaskRun
from jaxrec.models import build_model
from jaxrec.models.pinnerformer import EVENT_FEATURES
from jaxrec.tasks.retrieval.batches import RetrievalBatches
from jaxrec.tasks.retrieval.loss import init_frequency, init_params, make_loss, update_frequency
from jaxrec.tasks.retrieval.temporal import TemporalEvalConfig, evaluate, temporal_split, user_embedder
from jaxrec.tasks.shared import NEXT_ITEM_ONLY_KEYS

log = logging.getLogger("jaxrec")


def _eval_config(cfg: config_lib.Config) -> TemporalEvalConfig:
    r = cfg.retrieval
    return TemporalEvalConfig(
        mode=r.eval_mode,
        window_unit=r.eval_window_unit,
        window_size=r.eval_window,
        ks=r.ks,
        batch_size=cfg.eval.batch_size,
    )


def _item_embeddings(model, params, num_items: int, item_features):
    ids = jnp.arange(num_items + 1)
    features = None if item_features is None else jnp.asarray(item_features, jnp.float32)
    return model.apply({"params": params["model"]}, ids, features, method="encode_items")


def _evaluate(model, params, split, cfg, prefix: str, item_features) -> dict[str, float]:
    items = _item_embeddings(model, params, split.data.num_items, item_features)
    result = evaluate(user_embedder(model, params["model"]), items, split, _eval_config(cfg), cfg.model.max_len)
    return {f"{prefix}/{k}": float(v) for k, v in result.items()}


def check_event_features(events: EventDataset, cfg: config_lib.Config) -> None:
    """Refuses a `model.event_features` entry the data lacks (or whose ids overflow its embedding table)
    with an error naming it, instead of a KeyError in the first step; logs which features the data has
    (its optional columns become features silently: `FEATURE_COLUMNS`) and which the model uses."""
    wanted, found = cfg.model.event_features, events.features
    unknown = [f for f in wanted if f not in EVENT_FEATURES]
    if unknown:
        raise config_lib.ConfigError(f"model.event_features: unknown {unknown}; known: {', '.join(EVENT_FEATURES)}")
    source = cfg.data.path or cfg.data.name
    column = dict(FEATURE_COLUMNS, action="action") if cfg.data.name == "synthetic" else FEATURE_COLUMNS
    missing = [f for f in wanted if f not in found]
    if missing:
        named = ", ".join(f"{f!r} (from a {column[f]!r} column)" for f in missing)
        raise DataError(
            f"model.event_features has {named}, which the data ({source}) lacks (it has {', '.join(found)}); "
            f"leave it out: --set model.event_features={','.join(f for f in wanted if f in found)}"
        )
    for feature, rows in (("action", events.action_vocab), ("surface", events.surface_vocab)):
        key = f"num_{feature}s"  # the embedding's rows: ids 1..n and padding 0
        if feature in wanted and rows > getattr(cfg.model, key):
            raise config_lib.ConfigError(
                f"model.{key}={getattr(cfg.model, key)} is too small for the {rows - 1} {feature} values of the "
                f"data ({source}); set model.{key}={rows} or leave {feature!r} out of model.event_features"
            )
    log.info(
        "event features: the data (%s) has %s; the model uses %s (model.event_features)",
        source,
        ", ".join(f"{f} (column {column[f]!r})" if f in column else f for f in found),
        ", ".join(wanted) or "none",
    )


def _prepare(cfg: config_lib.Config):
    """(events, test split, validation split, training batches, training counts, item features) of `cfg`."""
    r = cfg.retrieval
    events = load_events(cfg.data)
    test_split = temporal_split(events, r.test_fraction, r.unseen_users_only)
    valid_split = temporal_split(test_split.train, r.valid_fraction)
    if test_split.test_users.size == 0 or valid_split.test_users.size == 0:
        raise ValueError("the temporal split left no test or no validation user; change retrieval.*_fraction")
    train_events = valid_split.train
    counts = np.bincount(np.concatenate(train_events.items), minlength=events.num_items + 1)
    item_features = events.item_categories if cfg.model.item_tower == "mlp" else None
    plan = RetrievalBatches(
        events,
        valid_split.train_length,
        r.objective,
        cfg.model.max_len,
        cfg.train.batch_size,
        cfg.train.seed,
        r.window_events,
        r.all_action_positives,
        r.dense_positions,
    )
    return events, test_split, valid_split, plan, counts, item_features


class RetrievalTask:
    name = "retrieval"
    section = "retrieval"
    unused_keys = NEXT_ITEM_ONLY_KEYS  # examples per user or per row, temporal or AUC evaluation
    multi_process = False
    one_cpu_device = False

    def select_metrics(self, cfg) -> list[str]:
        return [f"valid/recall@{k}" for k in cfg.retrieval.ks]

    def setup(self, cfg, mesh=None) -> TaskRun:
        events, test_split, valid_split, plan, counts, item_features = _prepare(cfg)
        check_event_features(events, cfg)
        model = build_model(cfg.model, events.num_items)
        log.info(
            "events %s: %d users, %d items, %d events; %d train users, %d valid users, %d test users; %d steps/epoch",
            events.name,
            events.num_users,
            events.num_items,
            events.num_events,
            plan.users.size,
            valid_split.test_users.size,
            test_split.test_users.size,
            plan.steps_per_epoch,
        )
        splits = {"valid": valid_split, "test": test_split}
        return TaskRun(
            model=model,
            batches=plan,
            example_batches=[plan(0)],
            init_variables=init_params(model, cfg, plan(0)),
            loss=make_loss(model, cfg, events.num_items, counts, item_features),
            evaluate=lambda state, which: _evaluate(model, state.params, splits[which], cfg, which, item_features),
            init_task_state=lambda: init_frequency(cfg),
            update_task_state=update_frequency(cfg),
            entry_extras=lambda metrics: {"train/temperature": float(metrics["temperature"])},
        )


RETRIEVAL = RetrievalTask()


def evaluate_checkpoint(workdir, overrides: list[str] = (), which: str = "best") -> dict[str, float]:
    """Test metrics of a finished run's checkpoint under another evaluation setting.

    `overrides` may change `retrieval.eval_*` (e.g. "retrieval.eval_mode=realtime") and `eval.batch_size`;
    the data, model and split come from the run's config.json.
    """
    workdir = Path(workdir)
    cfg = config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    changed = config_lib.apply_overrides(cfg, list(overrides))
    config_lib.validate(changed)
    events, test_split, _, plan, _, item_features = _prepare(cfg)  # the data, read once
    model = build_model(cfg.model, events.num_items)
    # The state's structure only (restore overwrites its values): the same init as the run's (`build_state`).
    init_variables, tx = init_params(model, cfg, plan(0)), make_optimizer(cfg.train)
    state = init_state(init_variables, tx, cfg.train.seed, init_task_state=lambda: init_frequency(cfg))
    checkpoints = RunCheckpoints(workdir)
    try:
        state, _ = checkpoints.restore(which, state)
    finally:
        checkpoints.close()
    return _evaluate(model, state.params, test_split, changed, "test", item_features)
