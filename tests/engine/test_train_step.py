import jax
import numpy as np
import optax
import pytest

from jaxrec.engine.state import make_optimizer
from jaxrec.models import build_model
from jaxrec.tasks.next_item.task import init_state, make_train_step
from tests.conftest import assert_close, replace


def _batch(batch_size, length, num_items, seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        k: rng.integers(1, num_items + 1, (batch_size, length)).astype(np.int32)
        for k in ("inputs_BxL", "positives_BxL", "negatives_BxL")
    }
    for key in batch:
        batch[key][: batch_size // 2, : length // 3] = 0  # left padding in half the rows
    batch["positives_BxL"][-3:] = 0  # padding rows of a partial batch
    batch["inputs_BxL"][-3:] = 0
    return batch


def test_micro_batched_step_equals_whole_batch_step(tiny_config):
    cfg = replace(tiny_config, model=dict(dropout=0.0))
    model = build_model(cfg.model, 120)
    # Plain SGD: parameter changes are the gradients. (Adam would turn float round-off in
    # near-zero gradients into full-size steps of either sign.)
    tx = optax.sgd(0.1)
    batch = _batch(cfg.train.batch_size, cfg.model.max_len, 120)
    results = {}
    for micro in (0, 8):
        c = replace(cfg, train=dict(micro_batch=micro))
        state = init_state(model, tx, c)
        step = jax.jit(make_train_step(model, tx, c), donate_argnums=0)
        for _ in range(2):
            state, metrics = step(state, batch)
        results[micro] = (state, metrics)
    (s0, m0), (s8, m8) = results[0], results[8]
    np.testing.assert_allclose(m0["loss"], m8["loss"], rtol=1e-5)
    assert m0["positions"] == m8["positions"] == (batch["positives_BxL"] > 0).sum()
    # Parameters up to 1 after two steps: each step rounds them (eps / 2 of the largest), and the gradients, summed
    # over 1,536 positions in another grouping, differ by ~1e-6 of themselves (times lr): a few ulps, 2e-6 = 17 eps.
    assert_close(s8.params, s0.params, rtol=2e-6)


def test_state_is_donated_and_step_counts(tiny_config):
    model = build_model(tiny_config.model, 120)
    tx = make_optimizer(tiny_config.train)
    state = init_state(model, tx, tiny_config)
    step = jax.jit(make_train_step(model, tx, tiny_config), donate_argnums=0)
    old_table = state.params["item_embedding"]
    new_state, metrics = step(state, _batch(tiny_config.train.batch_size, tiny_config.model.max_len, 120))
    assert old_table.is_deleted()
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_every_loss_trains_and_chunked_ce_steps_like_full_ce(tiny_config):
    batch = _batch(tiny_config.train.batch_size, tiny_config.model.max_len, 120)
    results = {}
    for loss in ("bce", "ce", "ce_chunked", "gbce"):
        cfg = replace(tiny_config, model=dict(dropout=0.0, loss=loss, ce_chunk=48, num_negatives=16))
        model = build_model(cfg.model, 120)
        tx = optax.sgd(0.5)
        state = init_state(model, tx, cfg)
        step = jax.jit(make_train_step(model, tx, cfg), donate_argnums=0)
        losses = []
        for _ in range(5):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], (loss, losses)
        results[loss] = (losses, state.params)
    np.testing.assert_allclose(results["ce_chunked"][0], results["ce"][0], rtol=1e-5)
    # Five steps whose logsumexps sum 121 rows in chunks of 48 instead of at once: ~1e-6 of each gradient per step,
    # and the rounding of parameters up to 1; 1e-5 of the largest parameter bounds it.
    assert_close(results["ce_chunked"][1], results["ce"][1], rtol=1e-5)


def test_micro_batches_are_strided_rows():
    from jaxrec.engine.step import split_micro_batches

    x = np.arange(12 * 2).reshape(12, 2)
    micro = np.asarray(split_micro_batches(x, 3))
    assert micro.shape == (3, 4, 2)
    np.testing.assert_array_equal(micro[1][:, 0] // 2, [1, 4, 7, 10])  # rows j, j + 3, ...
    np.testing.assert_array_equal(np.sort(micro.reshape(12, 2), axis=0), x)  # every row once


def test_epoch_normaliser_scales_the_gradient_by_positions(tiny_config):
    """loss_normalizer=epoch: gradient = batch-mean gradient x (batch positions / mean positions)."""
    cfg = replace(tiny_config, model=dict(dropout=0.0))
    model = build_model(cfg.model, 120)
    tx = optax.sgd(1.0)
    batch = _batch(cfg.train.batch_size, cfg.model.max_len, 120)
    positions = float((batch["positives_BxL"] > 0).sum())
    updates = {}
    for normalizer, mean in (("batch", None), ("epoch", 2.5 * positions)):
        c = replace(cfg, train=dict(loss_normalizer=normalizer))
        state = init_state(model, tx, c)
        before = state.params["item_embedding"].copy()
        new_state, metrics = jax.jit(make_train_step(model, tx, c, mean_positions_per_batch=mean))(state, batch)
        updates[normalizer] = np.asarray(new_state.params["item_embedding"] - before)
        updates[normalizer + "_loss"] = float(metrics["loss"])
    # Each change is (before - g) - before in float32: off by up to half an ulp of the parameter (entries ~0.5), ~5e-6
    # of the largest change here (x 2.5 for the epoch one); 1e-4 of it bounds that.
    assert_close(updates["epoch"] * 2.5, updates["batch"], rtol=1e-4)
    assert updates["epoch_loss"] == updates["batch_loss"]  # the reported loss is the batch mean either way
    with pytest.raises(ValueError, match="mean positions per batch"):
        make_train_step(model, tx, replace(cfg, train=dict(loss_normalizer="epoch")))
