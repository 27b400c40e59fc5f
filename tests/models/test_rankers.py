"""CTR rankers (WDL, WDL+Seq, DIN, BST): shapes, DIN's unnormalised attention, BST's time feature, mini-batch L2."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import Config, CTRConfig
from jaxrec.engine import state as state_lib
from jaxrec.engine.state import make_optimizer
from jaxrec.models import MODELS
from jaxrec.models.rankers import RankerConfig, build_ranker, time_buckets
from jaxrec.tasks.ctr.loss import init_variables, make_predict, minibatch_l2, model_inputs, present_rows, regularizer
from tests.conftest import assert_close

ITEMS, GENRES, USER_VOCAB, B, L = 30, 5, 12, 4, 6
ACTIONS = 6  # action_vocab: ids 1..5 (ratings) and padding 0


def _config(name: str, **ctr) -> Config:
    model = RankerConfig(name=name, max_len=L, hidden=8, num_blocks=1, num_heads=2, dropout=0.0)
    ctr_cfg = CTRConfig(mlp=(16, 8), attention_mlp=(8,), activation=ctr.pop("activation", "relu"), **ctr)
    return Config(model=model, ctr=ctr_cfg)


def _categories(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = (rng.random((ITEMS + 1, GENRES)) < 0.4).astype(np.float32)
    table[0] = 0
    return table


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    history = rng.integers(1, ITEMS + 1, (B, L)).astype(np.int32)
    history[0, :3] = 0  # left padding
    history[1, :] = 0  # no history at all
    times = np.sort(rng.integers(1_000_000, 2_000_000, (B, L)), axis=1).astype(np.int32)
    return {
        "history_BxL": history,
        "history_time_BxL": np.where(history > 0, times, 0).astype(np.int32),
        "candidate_B": rng.integers(1, ITEMS + 1, B).astype(np.int32),
        "time_B": np.full(B, 2_100_000, np.int32),
        "user_BxF": rng.integers(1, USER_VOCAB, (B, 3)).astype(np.int32),
        "history_action_BxL": np.where(history > 0, rng.integers(1, ACTIONS, (B, L)), 0).astype(np.int32),
        "label_B": rng.integers(0, 2, B).astype(np.float32),
        "weight_B": np.ones(B, np.float32),
        "user_B": np.arange(B, dtype=np.int32),
    }


def init_state(model, tx, cfg, batch, categories):
    """The engine's initial state of a ranker (one device)."""
    return state_lib.init_state(init_variables(model, batch, categories), tx, cfg.train.seed)


@functools.cache  # one init per model for the whole file: compiles dominate these tests on CPU
def _setup(name: str):
    cfg = _config(name, activation="dice" if name == "din" else "relu")
    model = build_ranker(cfg, ITEMS, GENRES, USER_VOCAB)
    state = init_state(model, make_optimizer(cfg.train), cfg, _batch(), _categories())
    return cfg, model, state


def _apply(model, state, batch):
    """Inference-mode (logits, aux), jitted: op-by-op dispatch of a Linen model is slow on a busy CPU."""
    fn = jax.jit(lambda variables, inputs: model.apply(variables, inputs))
    return fn({"params": state.params, **state.model_state}, model_inputs(batch, _categories()))


@pytest.mark.parametrize("name", ["wdl", "wdl_seq", "din", "bst"])
def test_shapes_and_finiteness_with_and_without_jit(name):
    _, model, state = _setup(name)
    assert name in MODELS
    logits = jax.jit(make_predict(model, _categories()))(state.params, state.model_state, _batch())
    assert logits.shape == (B,) and logits.dtype == jnp.float32 and np.isfinite(logits).all()
    if name == "wdl":  # eager once (op by op is slow on CPU): the same numbers as under jit
        eager = make_predict(model, _categories())(state.params, state.model_state, _batch())
        assert_close(eager, logits, rtol=1e-5)  # fused and unfused float32 sums of <= ~50 terms: N eps ~ 6e-6
    if name not in ("wdl", "din"):
        return
    # Without genres and user fields the models run on item ids and times alone.
    bare = dataclasses.replace(model, num_categories=0, user_vocab=0)
    inputs = {k: v for k, v in _batch().items() if k not in ("user_BxF", "label_B", "weight_B", "user_B")}
    variables = jax.jit(bare.init)(jax.random.key(0), inputs)
    assert "genre" not in variables["params"]["embed"] and "user" not in variables["params"]["embed"]
    assert np.isfinite(jax.jit(bare.apply)(variables, inputs)[0]).all()


def test_din_attention_is_unnormalised_and_depends_on_the_candidate():
    _, model, state = _setup("din")
    batch = _batch()
    _, aux = _apply(model, state, batch)
    weights = np.asarray(aux["attention_BxL"])
    mask = batch["history_BxL"] > 0
    assert np.all(weights[~mask] == 0.0)  # padding gets no weight
    sums = weights.sum(axis=1)[mask.any(axis=1)]
    assert np.all(np.abs(sums - 1.0) > 1e-3), sums  # not a softmax: weights do not sum to one
    assert np.any(weights[mask] < 0) or np.any(weights[mask] > 1)  # nor confined to [0, 1]
    other = dict(batch, candidate_B=(batch["candidate_B"] % ITEMS) + 1)
    _, aux_other = _apply(model, state, other)
    moved = np.abs(np.asarray(aux_other["attention_BxL"]) - weights)[mask]
    assert moved.max() > 1e-4  # a different candidate attends differently to the same history


def test_dice_uses_batch_statistics_in_training_and_moving_averages_at_inference():
    _, model, state = _setup("din")
    stats = state.model_state["batch_stats"]
    assert jax.tree.leaves(stats), "Dice keeps moving averages in batch_stats"
    variables = {"params": state.params, "batch_stats": stats}
    train_apply = jax.jit(lambda v, x: model.apply(v, x, deterministic=False, mutable=["batch_stats"]))
    _, updates = train_apply(variables, model_inputs(_batch(), _categories()))
    changed = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), stats, updates["batch_stats"])
    assert max(jax.tree.leaves(changed)) > 0
    same_a = _apply(model, state, _batch())[0]
    same_b = _apply(model, state, _batch())[0]
    np.testing.assert_array_equal(same_a, same_b)  # inference is deterministic


def test_bst_time_difference_embedding_changes_the_output_when_only_timestamps_change():
    _, model, state = _setup("bst")
    batch = _batch()
    base = np.asarray(_apply(model, state, batch)[0])
    earlier = dict(batch, history_time_BxL=np.where(batch["history_BxL"] > 0, batch["history_time_BxL"] - 500_000, 0))
    moved = np.asarray(_apply(model, state, earlier)[0])
    has_history = (batch["history_BxL"] > 0).any(axis=1)
    assert np.all(np.abs(moved - base)[has_history] > 1e-6)
    assert_close(moved[~has_history], base[~has_history], rtol=1e-6)  # nothing to move: the same row's sums
    # Same buckets, same output: the feature is the bucketed difference, not the raw seconds.
    same_bucket = dict(batch, time_B=batch["time_B"] + 1)
    seconds = batch["time_B"][:, None] - batch["history_time_BxL"]
    if np.array_equal(time_buckets(seconds, 32), time_buckets(seconds + 1, 32)):
        assert_close(_apply(model, state, same_bucket)[0], base, rtol=1e-6)  # the same inputs: a few ulps at most


@pytest.mark.parametrize("name", ["wdl_seq", "din", "bst"])
def test_history_actions_change_the_output_only_when_enabled(name):
    """ctr.history_actions: the same items with other ratings give another score; without it, the same."""
    batch = _batch()
    has_history = (batch["history_BxL"] > 0).any(axis=1)
    flipped = dict(
        batch, history_action_BxL=np.where(batch["history_BxL"] > 0, batch["history_action_BxL"] % (ACTIONS - 1) + 1, 0)
    )
    cfg = _config(name, history_actions=True)
    model = build_ranker(cfg, ITEMS, GENRES, USER_VOCAB, ACTIONS)
    state = init_state(model, make_optimizer(cfg.train), cfg, batch, _categories())
    assert state.params["embed"]["action"].shape == (ACTIONS + 1, cfg.model.hidden)  # + the candidate's row
    base, moved = (np.asarray(_apply(model, state, b)[0]) for b in (batch, flipped))
    assert np.all(np.abs(moved - base)[has_history] > 1e-6)
    assert_close(moved[~has_history], base[~has_history], rtol=1e-6)  # no history, nothing to read
    _, plain, plain_state = _setup(name)  # the flag off: actions are not an input
    assert "action" not in plain_state.params["embed"]
    np.testing.assert_array_equal(_apply(plain, plain_state, batch)[0], _apply(plain, plain_state, flipped)[0])


def test_history_actions_need_data_with_actions():
    with pytest.raises(ValueError, match="history_actions=false"):
        build_ranker(_config("din", history_actions=True), ITEMS, GENRES, USER_VOCAB, 0)
    wdl = build_ranker(_config("wdl", history_actions=True), ITEMS, GENRES, USER_VOCAB, 0)  # no history: no need
    assert wdl.action_vocab == 0


def test_time_buckets_are_log2_and_clipped():
    seconds = jnp.array([0, 1, 2, 3, 4, 1023, 1024, 2**31 - 2], jnp.int32)
    np.testing.assert_array_equal(time_buckets(seconds, 40), [1, 2, 2, 3, 3, 11, 11, 31])
    np.testing.assert_array_equal(time_buckets(seconds, 8), [1, 2, 2, 3, 3, 7, 7, 7])


def test_minibatch_l2_touches_only_rows_in_the_batch_scaled_by_inverse_frequency():
    _, _, state = _setup("wdl")
    batch = _batch()
    categories = _categories()
    counts_V = np.random.default_rng(1).integers(1, 50, ITEMS + 1).astype(np.float32)
    genre_counts = np.array([3.0, 5.0, 7.0, 11.0, 13.0], np.float32)
    grads = jax.jit(jax.grad(regularizer))(state.params, batch, categories, counts_V, genre_counts)
    item_grad = np.asarray(grads["embed"]["item"])
    table = np.asarray(state.params["embed"]["item"])
    present = np.zeros(table.shape[0], bool)
    present[np.concatenate([batch["history_BxL"].ravel(), batch["candidate_B"]])] = True
    present[0] = False  # padding
    assert np.all(item_grad[~present] == 0.0)
    rows = np.flatnonzero(present)
    np.testing.assert_allclose(item_grad[rows], 2 * table[rows] / counts_V[rows, None], rtol=1e-5)
    genre_present = categories[rows].any(axis=0)
    genre_grad = np.asarray(grads["embed"]["genre"])
    genre_table = np.asarray(state.params["embed"]["genre"])
    assert np.all(genre_grad[~genre_present] == 0.0)
    np.testing.assert_allclose(
        genre_grad[genre_present], 2 * genre_table[genre_present] / genre_counts[genre_present, None], rtol=1e-5
    )
    for name, grad in grads.items():  # nothing outside the embedding tables is regularised
        if name != "embed":
            assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad)), name
    # The value: each present row once, however often it occurs in the batch.
    value = minibatch_l2(jnp.asarray(table), present_rows(jnp.asarray(np.flatnonzero(present)), table.shape[0]), 2.0)
    np.testing.assert_allclose(value, (table[present] ** 2).sum() / 2.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["din", "bst"])
def test_wide_option_adds_wdls_wide_part(name):
    """ctr.wide gives DIN and BST WDL's wide parameters, and the item bias moves the logit one for one."""
    cfg = _config(name, wide=True)
    model = build_ranker(cfg, ITEMS, GENRES, USER_VOCAB)
    state = init_state(model, make_optimizer(cfg.train), cfg, _batch(), _categories())
    assert {"wide_item", "wide_genre", "wide_user", "wide_cross"} <= set(state.params)
    base, _ = _apply(model, state, _batch())
    candidate = _batch()["candidate_B"][0]
    bumped = state.replace(params={**state.params, "wide_item": state.params["wide_item"].at[candidate].add(1.0)})
    changed, _ = _apply(model, bumped, _batch())
    assert float(changed[0] - base[0]) == pytest.approx(1.0, rel=1e-5)  # logits ~1 apart: a few ulps of them
    assert "wide_item" not in _setup(name)[2].params  # off by default, as the papers


# Forward references in float64 numpy, written from the module docstring, not from the Linen code. The
# initialised parameters are perturbed first: biases, LayerNorm scales, Dice's alpha and statistics and the
# wide weights all start at 0 or 1, where a reference that left them out would still agree.
def _perturbed(state, seed: int = 0):
    keys = iter(jax.random.split(jax.random.key(seed), 64))

    def shift(x):
        return np.asarray(x, np.float64) + 0.2 * np.asarray(jax.random.normal(next(keys), x.shape))

    params, stats = jax.tree.map(shift, state.params), jax.tree.map(shift, state.model_state.get("batch_stats", {}))
    stats = jax.tree_util.tree_map_with_path(lambda p, x: np.abs(x) if p[-1].key == "var" else x, stats)
    return params, stats


def _np_inputs(p, batch, categories):
    """(history B x L x E, mask B x L, candidate B x E, user fields B x F D) as the module docstring says."""
    embed = p["embed"]

    def events(ids):
        genres = categories[ids]
        mean_genre = genres @ embed["genre"] / np.maximum(genres.sum(-1, keepdims=True), 1.0)
        return np.concatenate([embed["item"][ids], mean_genre], axis=-1)

    history = batch["history_BxL"]
    user = embed["user"][batch["user_BxF"]].reshape(len(history), -1)
    return events(history), history > 0, events(batch["candidate_B"]), user


def _np_mlp(p, x, act):
    for i in range(len([k for k in p if k.startswith("dense_")])):
        x = act(x @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"], i)
    return x


def _np_dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _np_relu(x, _):
    return np.maximum(x, 0.0)


def _np_layer_norm(p, x, eps=1e-6):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _np_wdl_seq(p, stats, batch, categories):
    hist, mask, cand, user = _np_inputs(p, batch, categories)
    pooled = (hist * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    deep = _np_dense(p["head"], _np_mlp(p["mlp"], np.concatenate([user, cand, pooled], -1), _np_relu))[:, 0]
    c, genres, u = batch["candidate_B"], categories[batch["candidate_B"]], batch["user_BxF"]
    wide = p["wide_item"][c] + genres @ p["wide_genre"] + p["wide_user"][u].sum(-1)
    wide += (p["wide_cross"][u] * genres[:, None, :]).sum((1, 2))
    return deep + wide


def _np_din(p, stats, batch, categories):
    hist, mask, cand, user = _np_inputs(p, batch, categories)

    def dice(mlp):  # inference: the moving averages, then p s + (1 - p) alpha s
        def act(x, i):
            s, alpha = stats[mlp][f"dice_{i}"], p[mlp][f"dice_{i}"]["alpha"]
            prob = 1 / (1 + np.exp(-(x - s["mean"]) / np.sqrt(s["var"] + 1e-8)))
            return prob * x + (1 - prob) * alpha * x

        return act

    cand_l = np.broadcast_to(cand[:, None], hist.shape)
    unit_in = np.concatenate([hist, cand_l, hist - cand_l, hist * cand_l], -1)
    hidden = _np_mlp(p["attention_mlp"], unit_in, dice("attention_mlp"))
    weights = np.where(mask, _np_dense(p["attention_out"], hidden)[..., 0], 0.0)  # unnormalised
    interest = (weights[..., None] * hist).sum(1)
    deep_in = np.concatenate([user, cand, interest], -1)
    return _np_dense(p["head"], _np_mlp(p["mlp"], deep_in, dice("mlp")))[:, 0]


def _np_bst(p, stats, batch, categories, num_heads=2, buckets=32):
    hist, mask, cand, user = _np_inputs(p, batch, categories)
    seconds = np.maximum(batch["time_B"][:, None].astype(np.int64) - batch["history_time_BxL"], 0)
    bucket = np.where(mask, np.clip(1 + np.floor(np.log2(1.0 + seconds)).astype(int), 1, buckets - 1), 0)
    bucket = np.concatenate([bucket, np.ones_like(bucket[:, :1])], 1)  # the candidate: 0 s, bucket 1
    valid = np.concatenate([mask, np.ones_like(mask[:, :1])], 1)
    x = np.concatenate([np.concatenate([hist, cand[:, None]], 1), p["time_embedding"][bucket]], -1)
    x = x * valid[..., None]
    blk = p["block_0"]
    b, s, t = x.shape
    q, k, v = (_np_dense(blk["attention"][n], x).reshape(b, s, num_heads, -1) for n in ("query", "key", "value"))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(t // num_heads)
    logits = np.where(valid[:, None, None, :], logits, -np.inf)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, s, t)
    x = _np_layer_norm(blk["attention_norm"], x + _np_dense(blk["attention_out"], heads))
    ffn_hidden = _np_dense(blk["ffn_in"], x)
    ffn_hidden = np.where(ffn_hidden > 0, ffn_hidden, 0.01 * ffn_hidden)  # leaky ReLU
    x = _np_layer_norm(blk["ffn_norm"], x + _np_dense(blk["ffn_out"], ffn_hidden)) * valid[..., None]
    deep_in = np.concatenate([user, x.reshape(b, s * t)], -1)
    return _np_dense(p["head"], _np_mlp(p["mlp"], deep_in, _np_relu))[:, 0]


@pytest.mark.parametrize("name, reference", [("wdl_seq", _np_wdl_seq), ("din", _np_din), ("bst", _np_bst)])
def test_forward_matches_a_numpy_reference(name, reference):
    """model.apply (inference, float32) against the float64 reference on the same parameters: sums of at most
    ~200 float32 terms, so a relative error of some 1e-6 of the largest logit."""
    _, model, state = _setup(name)
    params, stats = _perturbed(state)
    batch = _batch(1)
    expected = reference(params, stats, {k: np.asarray(v) for k, v in batch.items()}, _categories().astype(np.float64))
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), {"params": params, "batch_stats": stats})
    logits, _ = jax.jit(model.apply)(variables, model_inputs(batch, _categories()))
    assert np.abs(expected).max() > 0.1  # a non-degenerate check
    assert_close(logits, expected, rtol=1e-5)
