"""GRU4Rec, MF and YoutubeDNN: padding, causality, examples per user, the sampled and BPR losses,
per-user inputs through the pipeline, and short runs of the leave-one-out trainer."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.config import Config, DataConfig, EvalConfig, TrainConfig, model_config
from jaxrec.data import generate_interactions, load_dataset
from jaxrec.data.datasets import ML1M_USER_FEATURE_ROWS, user_inputs
from jaxrec.models import build_model
from jaxrec.models.protocols import last_positions_only
from jaxrec.models.youtube_dnn import window_mean
from jaxrec.ops.losses import bpr, sampled_candidates, sampled_ce, softmax_ce_full
from jaxrec.tasks.next_item.baselines import popularity_metrics
from jaxrec.tasks.next_item.batches import TrainBatches, eval_batches
from jaxrec.tasks.next_item.loss import training_loss
from jaxrec.tasks.next_item.split import leave_one_out, sample_eval_negatives
from tests.conftest import assert_close

NUM_ITEMS, NUM_USERS, L = 40, 6, 12
# Each model's own fields (its config class has no others); every model: max_len L, hidden 8.
FIELDS = {
    "gru4rec": dict(num_blocks=2, dropout=0.2),
    "mf": {},
    "youtube_dnn": dict(dropout=0.2, tower_layers=2, tower_width=16, history_window=4),
}


def _cfg(name, **fields):
    return model_config(name, max_len=L, hidden=8, **{**FIELDS[name], **fields})


CFG = _cfg("youtube_dnn")


def _init(name, **fields):
    model = build_model(_cfg(name, **fields), NUM_ITEMS, num_users=NUM_USERS, user_feature_rows=ML1M_USER_FEATURE_ROWS)
    # jit: eager mode would compile every op of the model one by one.
    init = jax.jit(lambda key: model.init({"params": key}, jnp.ones((1, L), jnp.int32), method=model.encode))
    return model, nn.unbox(init(jax.random.key(0))["params"])  # plain arrays (init boxes the tables' axes)


def _histories(length=L, seed=0):
    """Three rows of distinct ids: full, left padded by half, all padding."""
    ids = np.stack([np.random.default_rng(seed + r).permutation(NUM_ITEMS)[:length] + 1 for r in range(3)])
    ids[1, : length // 2] = 0
    ids[2] = 0
    return jnp.asarray(ids, jnp.int32)


def _users(batch=3):
    return jnp.asarray(np.c_[np.arange(1, batch + 1), np.ones((batch, 3))], jnp.int32)


def _apply(model, params, ids, name, last_only=False):
    extra = {"user_BxF": _users(ids.shape[0])} if name in ("mf", "youtube_dnn") else {}
    return _jitted_apply(model, last_only)({"params": params}, ids, **extra)


@functools.cache
def _jitted_apply(model, last_only):
    return jax.jit(functools.partial(model.apply, deterministic=True, last_only=last_only))


@pytest.mark.parametrize("name", ["gru4rec", "mf", "youtube_dnn"])
def test_padding_buckets_and_last_only(name):
    """Left padding changes nothing: a shorter bucket computes the same states, padding rows are zero,
    and `last_only` equals the last row of the full pass."""
    model, params = _init(name, **({"user_features": True} if name == "youtube_dnn" else {}))
    ids = _histories()
    h, table = _apply(model, params, ids, name)
    assert h.shape == (3, L, CFG.hidden) and table.shape[1] == CFG.hidden and np.all(np.isfinite(h))
    assert not np.any(np.asarray(h[2])) and not np.any(np.asarray(h[1, : L // 2]))
    # The same histories (the last L/2 items) padded to L and in a bucket of L/2.
    padded = _apply(model, params, ids.at[:, : L // 2].set(0), name)[0]
    short = _apply(model, params, ids[:, L // 2 :], name)[0]
    # Float32 sums of 8-16 terms per step over <= 12 steps, maybe in another order: 1e-5 of the largest state.
    assert_close(short, padded[:, L // 2 :], rtol=1e-5)
    assert not np.any(np.asarray(padded[:, : L // 2]))
    last = _apply(model, params, ids, name, last_only=True)[0]
    assert last.shape == (3, 1, CFG.hidden)
    assert_close(last[:, 0], h[:, -1], rtol=1e-5)


@pytest.mark.parametrize("name", ["gru4rec", "youtube_dnn"])
def test_causal_by_perturbation(name):
    """Replacing the item at s changes no output before s and the outputs from s on (in the window)."""
    model, params = _init(name, dropout=0.0)
    ids = _histories()[:1]
    base = np.asarray(_apply(model, params, ids, name)[0][0])
    unused = next(i for i in range(1, NUM_ITEMS + 1) if i not in np.asarray(ids[0]))
    for s in (3, 7, L - 1):
        changed = np.asarray(_apply(model, params, ids.at[0, s].set(unused), name)[0][0])
        np.testing.assert_array_equal(changed[:s], base[:s])
        assert np.abs(changed[s] - base[s]).max() > 1e-6


def test_youtube_dnn_position_t_reads_exactly_the_window_up_to_t():
    """d output[t] / d item embedding: zero for items after t and before the window, nonzero inside."""
    model, params = _init("youtube_dnn")
    ids = _histories()[:1]
    rows = np.asarray(ids[0])
    window = CFG.history_window
    for t in (1, 6, L - 1):

        def at_t(table, t=t):
            h, _ = model.apply(
                {"params": {**params, "item_embedding": table}},
                ids,
                deterministic=False,
                rngs={"dropout": jax.random.key(3)},
            )
            return jnp.dot(h[0, t], jnp.linspace(-1.0, 2.0, CFG.hidden))

        grad = np.abs(np.asarray(jax.jit(jax.grad(at_t))(params["item_embedding"]))).sum(-1)
        start = max(0, t - window + 1)
        assert np.all(grad[rows[t + 1 :]] == 0), "position t reads a later item"
        assert np.all(grad[rows[:start]] == 0), "position t reads an item before its window"
        assert np.all(grad[rows[start : t + 1]] > 0)


def test_window_mean_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 9, 3)).astype(np.float32)
    valid = np.ones((2, 9), bool)
    valid[1, :4] = False
    got = np.asarray(window_mean(jnp.asarray(x), jnp.asarray(valid), 3))
    want = np.zeros_like(x)
    for b in range(2):
        for t in range(9):
            keep = [s for s in range(max(0, t - 2), t + 1) if valid[b, s]]
            if keep:
                want[b, t] = x[b, keep].mean(0)
    # Differences of float32 prefix sums over <= 9 positions: N eps of the prefix sums, ~2e-6 of the largest value.
    assert_close(got, want, rtol=1e-5)


def test_examples_per_user_keeps_the_last_k_positions():
    positives = np.arange(1, 25, dtype=np.int32).reshape(3, 8)
    positives[1, :6] = 0  # a short sequence: 2 positions
    batch = {"positives_BxL": jnp.asarray(positives), "negatives_BxL": jnp.ones((3, 8), jnp.int32)}
    capped = last_positions_only(batch, 3)["positives_BxL"]
    np.testing.assert_array_equal(capped[:, :5], 0)
    np.testing.assert_array_equal(capped[:, 5:], positives[:, 5:])
    assert last_positions_only(batch, 0) is batch
    cfg = _cfg("gru4rec", examples_per_user=3, loss="bce")
    model = build_model(cfg, NUM_ITEMS)
    out = type(model).training_batch(batch, None, cfg, NUM_ITEMS)
    h = jnp.ones((3, 8, CFG.hidden))
    _, count = training_loss(cfg, NUM_ITEMS, h, jnp.ones((64, CFG.hidden)), out, None)
    assert count == 3 + 2 + 3


def test_youtube_dnn_drops_the_columns_no_example_reads():
    """With K examples per user the step keeps the last K + window - 1 columns: the same loss."""
    cfg = _cfg("youtube_dnn", examples_per_user=3, loss="ce")
    model, params = _init("youtube_dnn", examples_per_user=3, loss="ce")
    ids = _histories()
    batch = {"inputs_BxL": ids, "positives_BxL": ids.at[:, :-1].set(ids[:, 1:]), "user_BxF": _users()}
    cropped = type(model).training_batch(batch, None, cfg, NUM_ITEMS)
    assert cropped["inputs_BxL"].shape == (3, 3 + CFG.history_window - 1)
    assert cropped["user_BxF"].shape == (3, 4)
    losses = []
    for b in (cropped, last_positions_only(batch, 3)):
        h, table = _apply(model, params, b["inputs_BxL"], "youtube_dnn")
        losses.append(training_loss(cfg, NUM_ITEMS, h, table, b, None))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def _loss_inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(keys[0], (4, 5, 8))
    table = jax.random.normal(keys[1], (64, 8))
    positives = jax.random.randint(keys[2], (4, 5), 1, NUM_ITEMS + 1).at[0, :2].set(0)
    return h, table, positives


def test_sampled_loss_equals_full_ce_when_every_item_is_a_candidate():
    h, table, positives = _loss_inputs()
    every_item = jnp.arange(1, NUM_ITEMS + 1, dtype=jnp.int32)
    log_q = jnp.full((64,), -1.3)  # a constant Q cancels
    sampled = jax.jit(jax.value_and_grad(lambda h: sampled_ce(h, table, positives, every_item, log_q)[0]))(h)
    flat = positives.reshape(-1)
    full = jax.jit(jax.value_and_grad(lambda h: softmax_ce_full(h.reshape(-1, 8), table, flat, NUM_ITEMS)[0]))(h)
    np.testing.assert_allclose(sampled[0], full[0], rtol=1e-5)
    assert_close(sampled[1], full[1], rtol=1e-5)  # float32 sums over 40-64 rows in another order: N eps <= 8e-6


@pytest.mark.parametrize("negatives", ["uniform", "in_batch"])
def test_sampled_loss_is_finite_and_decreases(negatives):
    h, table, positives = _loss_inputs(1)
    cfg = dataclasses.replace(CFG, loss="sampled", num_negatives=16, sampled_negatives=negatives)
    candidates = jax.jit(sampled_candidates, static_argnums=(2, 3, 4, 5))
    ids, log_q = candidates(jax.random.key(0), positives, 16, NUM_ITEMS, 64, negatives)
    assert ids.shape == (16,) and np.all((ids >= 1) & (ids <= NUM_ITEMS))
    if negatives == "in_batch":  # log Q(x) = log(M c(x) / n), c(x) = count among the n real positives
        real = np.asarray(positives)[np.asarray(positives) > 0]
        assert set(np.asarray(ids).tolist()) <= set(real.tolist())
        # Logs of count ratios near 1 are near 0: the float32 log errs by ~eps absolute, so bound it by the largest.
        assert_close(log_q[ids], np.log(16 * (real[:, None] == ids).sum(0) / real.size), rtol=1e-5)

    @jax.jit
    @jax.value_and_grad
    def loss(h, step):
        return training_loss(cfg, NUM_ITEMS, h, table, {"positives_BxL": positives}, jax.random.key(step))[0]

    losses = []
    for step in range(20):
        value, grad = loss(h, step)
        losses.append(float(value))
        h = h - 0.5 * grad
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def test_bpr_is_log_sigmoid_of_the_score_difference():
    h, table, positives = _loss_inputs(2)
    negatives = (positives % NUM_ITEMS) + 1
    got, count = bpr(h, table, positives, negatives)
    diff = np.einsum("bld,bld->bl", h, table[positives] - table[negatives])
    mask = np.asarray(positives) > 0
    np.testing.assert_allclose(got, np.log1p(np.exp(-diff))[mask].mean(), rtol=1e-5)
    assert count == mask.sum()


def test_mf_scores_with_the_users_own_vector():
    model, params = _init("mf")
    assert model.uses_user_inputs and not model.uses_user_features
    assert not build_model(_cfg("gru4rec"), NUM_ITEMS).uses_user_inputs
    youtube = build_model(_cfg("youtube_dnn", user_features=True), NUM_ITEMS, user_feature_rows=ML1M_USER_FEATURE_ROWS)
    assert youtube.uses_user_inputs and youtube.uses_user_features
    h, table = _apply(model, params, _histories(), "mf")
    user_table = np.asarray(params["user_embedding"])
    np.testing.assert_array_equal(h[0], np.broadcast_to(user_table[1], (L, CFG.hidden)))
    np.testing.assert_array_equal(h[1, -1], user_table[2])
    np.testing.assert_array_equal(table, params["item_embedding"])
    with pytest.raises(ValueError, match="num_users"):
        build_model(_cfg("mf"), NUM_ITEMS).init(
            {"params": jax.random.key(0)}, jnp.ones((1, L), jnp.int32), method="encode"
        )


def test_pipeline_adds_the_users_rows_to_train_and_eval_batches():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(NUM_ITEMS)[: rng.integers(3, 15)].astype(np.int32) + 1 for _ in range(20)]
    table = np.c_[np.arange(1, 21), rng.integers(0, 5, (20, 3))].astype(np.int32)
    plan = TrainBatches(seqs, NUM_ITEMS, L, 8, (L,), 0, user_table=table)
    for step in range(plan.steps_per_epoch):
        _, users = plan.epoch_plan(0)[step]
        batch = plan(step)
        np.testing.assert_array_equal(batch["user_BxF"][: len(users)], table[users])
        assert not batch["user_BxF"][len(users) :].any()  # padding rows: user 0
    targets = np.array([s[-1] for s in seqs], np.int32)
    negatives = {"sampled": rng.integers(1, NUM_ITEMS + 1, (20, 5))}
    for batch in eval_batches(seqs, targets, negatives, seqs, L, 8, (L,), table):
        users = batch["user_BxF"][:, 0] - 1
        np.testing.assert_array_equal(batch["user_BxF"], table[users])
        np.testing.assert_array_equal(batch["targets_B"], targets[users])
    assert "user_BxF" not in TrainBatches(seqs, NUM_ITEMS, L, 8, (L,), 0)(0)


def _ml1m_files(tmp_path, num_users=400, num_items=150):
    """Synthetic interactions written as ML-1M ratings.dat, with a users.dat beside it."""
    inter, _ = generate_interactions(num_users, num_items, 12, seed=0)
    lines = [f"{u}::{i}::5::{t}" for u, i, t in zip(inter.user, inter.item, inter.timestamp)]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    users = [
        f"{u}::{'FM'[u % 2]}::{(1, 18, 25, 35, 45, 50, 56)[u % 7]}::{rng.integers(21)}::00000"
        for u in range(1, num_users)  # the last user is missing: unknown features
    ]
    (tmp_path / "users.dat").write_text("\n".join(users) + "\n")
    return DataConfig(name="ml-1m", path=str(tmp_path / "ratings.dat"), data_dir=str(tmp_path))


def test_user_inputs_reads_users_dat(tmp_path):
    cfg = _ml1m_files(tmp_path, num_users=30)
    dataset = load_dataset(cfg)
    table = user_inputs(dataset, cfg, features=True)
    raw = np.asarray(dataset.user_raw_ids)
    np.testing.assert_array_equal(table[:, 0], np.arange(1, len(raw) + 1))
    known = raw < 30
    np.testing.assert_array_equal(table[known, 1], 1 + raw[known] % 2)  # F = 1, M = 2
    np.testing.assert_array_equal(table[known, 2], 1 + raw[known] % 7)  # the age group's index + 1
    assert np.all((table[known, 3] >= 1) & (table[known, 3] <= 21)) and not table[~known, 1:].any()
    assert not user_inputs(dataset, cfg).any(axis=0)[1:].any()


def _run_config(name, data, **model):
    return Config(
        data=data,
        model=model_config(name, max_len=16, hidden=16, num_negatives=32, **model),
        train=TrainConfig(num_epochs=12, batch_size=64, learning_rate=0.02, length_buckets="none"),
        eval=EvalConfig(every_epochs=6, batch_size=256, num_negatives=20, popularity_negatives=False),
    )


@pytest.mark.parametrize(
    "name, model",
    [
        ("gru4rec", dict(loss="ce", num_blocks=1, dropout=0.0)),
        ("mf", dict(loss="bpr")),
        (
            "youtube_dnn",
            dict(loss="sampled", history_window=2, user_features=True, dropout=0.0, tower_layers=2, tower_width=32),
        ),
    ],
)
def test_trainer_run_beats_popularity(name, model, tmp_path):
    """A short run of the leave-one-out trainer; YoutubeDNN with users.dat features (ML-1M format files)."""
    if name == "youtube_dnn":
        data = _ml1m_files(tmp_path)
    else:
        data = DataConfig(name="synthetic", synthetic_users=600, synthetic_items=200, synthetic_mean_length=16)
    cfg = _run_config(name, data, **model)
    metrics = experiment.run(cfg, tmp_path / "run")
    split = leave_one_out(load_dataset(cfg.data))
    popularity = popularity_metrics(split, sample_eval_negatives(split, 20, cfg.data.seed), cfg.eval.ks)
    assert metrics.pop("ended_by") == "epochs" and all(np.isfinite(v) for v in metrics.values())
    for key in ("test/ndcg@10_full", "test/hr@10_full"):
        assert metrics[key] > popularity[key] + 0.02, (key, metrics[key], popularity[key])
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[1] < losses[0]
