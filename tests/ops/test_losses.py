import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import model_config
from jaxrec.ops.losses import (
    bce_sampled,
    compact_targets,
    gbce,
    softmax_ce_chunked,
    softmax_ce_full,
    sparse_target_ce,
    target_capacity,
)
from jaxrec.tasks.next_item.loss import training_loss
from tests.conftest import assert_close

NUM_ITEMS = 45  # rows 46..63 of a 64-row table are vocabulary padding


def _inputs(seed=0, n=37, rows=64, dim=8):
    keys = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(keys[0], (n, dim))
    table = jax.random.normal(keys[1], (rows, dim))
    targets = jax.random.randint(keys[2], (n,), 1, NUM_ITEMS + 1)
    targets = targets.at[:5].set(0)  # padding positions
    return h, table, targets


def _numpy_ce(h, table, targets):
    logits = np.asarray(h, np.float64) @ np.asarray(table, np.float64).T
    logits[:, 0] = -np.inf
    logits[:, NUM_ITEMS + 1 :] = -np.inf
    peak = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(-1)) + peak[:, 0]
    t = np.asarray(targets)
    per_row = lse - logits[np.arange(len(t)), t]
    return per_row[t > 0].mean()


@pytest.mark.parametrize("chunk", [7, 16, 64, 100])
def test_chunked_ce_matches_full_values_and_gradients(chunk):
    h, table, targets = _inputs()
    full = softmax_ce_full(h, table, targets, NUM_ITEMS)
    chunked = softmax_ce_chunked(h, table, targets, NUM_ITEMS, chunk=chunk)
    np.testing.assert_allclose(full[0], _numpy_ce(h, table, targets), rtol=1e-5)
    np.testing.assert_allclose(chunked[0], full[0], rtol=1e-5)
    assert full[1] == chunked[1] == 32

    grad_full = jax.grad(lambda h, t: softmax_ce_full(h, t, targets, NUM_ITEMS)[0], argnums=(0, 1))(h, table)
    grad_chunked = jax.jit(
        jax.grad(lambda h, t: softmax_ce_chunked(h, t, targets, NUM_ITEMS, chunk=chunk)[0], argnums=(0, 1))
    )(h, table)
    for name, a, b in zip(("h", "table"), grad_full, grad_chunked):
        assert_close(b, a, rtol=1e-5, err_msg=name)  # float32 sums over 64 rows, 37 positions: N eps <= 8e-6
    # Padding rows of the table never receive probability, so never receive gradient.
    assert not np.any(np.asarray(grad_chunked[1][0]))
    assert not np.any(np.asarray(grad_chunked[1][NUM_ITEMS + 1 :]))


def test_chunked_ce_never_builds_the_full_logits():
    h, table, targets = _inputs(n=512, rows=4096, dim=16)
    hlo = jax.jit(jax.grad(lambda h, t: softmax_ce_chunked(h, t, targets, 4000, chunk=256)[0], argnums=(0, 1)))
    text = hlo.lower(h, table).compile().as_text()
    assert "f32[512,4096]" not in text and "f32[4096,512]" not in text
    assert "f32[512,256]" in text


def test_gbce_with_beta_one_is_bce():
    h, table, _ = _inputs()
    rng = np.random.default_rng(0)
    h3 = jnp.asarray(h[None])  # 1 x N x D
    positives = jnp.asarray(rng.integers(0, NUM_ITEMS + 1, (1, h.shape[0])))
    negatives = jnp.asarray(rng.integers(1, NUM_ITEMS + 1, (1, h.shape[0], 1)))
    ours = gbce(h3, table, positives, negatives, NUM_ITEMS, calibration=0.0)
    reference = bce_sampled(h3, table, positives, negatives[..., 0])
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
    calibrated = gbce(h3, table, positives, negatives, NUM_ITEMS, calibration=0.75)
    assert calibrated[0] < ours[0]  # beta < 1 shrinks the positive term


def _numpy_gbce(h_BxLxD, table, positives_BxL, negatives_BxLxK, beta):
    """gSASRec's loss written out position by position (float64): beta * softplus(-s+) + sum softplus(s-)."""
    h, table = np.asarray(h_BxLxD, np.float64), np.asarray(table, np.float64)
    total, count = 0.0, 0
    for b, t in np.ndindex(*positives_BxL.shape):
        if positives_BxL[b, t] == 0:
            continue
        pos = h[b, t] @ table[positives_BxL[b, t]]
        negs = table[negatives_BxLxK[b, t]] @ h[b, t]
        total += beta * np.logaddexp(0.0, -pos) + np.logaddexp(0.0, negs).sum()
        count += 1
    return total / count


def test_gbce_per_position_negatives_match_a_written_out_reference():
    h, table, targets = _inputs(n=24)
    h_BxLxD, positives_BxL = h.reshape(2, 12, -1), np.asarray(targets).reshape(2, 12)
    negatives = np.random.default_rng(1).integers(1, NUM_ITEMS + 1, (2, 12, 6))
    alpha = 6 / (NUM_ITEMS - 1)
    beta = alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
    loss, count = gbce(h_BxLxD, table, jnp.asarray(positives_BxL), jnp.asarray(negatives), NUM_ITEMS, 0.75)
    assert int(count) == (positives_BxL > 0).sum()
    np.testing.assert_allclose(loss, _numpy_gbce(h_BxLxD, table, positives_BxL, negatives, beta), rtol=1e-5)
    # Shared negatives (K,) are the per-position case with the same K ids at every position.
    shared = gbce(h_BxLxD, table, jnp.asarray(positives_BxL), jnp.asarray(negatives[0, 0]), NUM_ITEMS, 0.75)[0]
    np.testing.assert_allclose(
        shared,
        _numpy_gbce(h_BxLxD, table, positives_BxL, np.broadcast_to(negatives[0, 0], negatives.shape), beta),
        rtol=1e-5,
    )


@pytest.mark.parametrize("mode", ["batch", "position"])
def test_training_loss_draws_gbce_negatives_as_configured(mode):
    h, table, targets = _inputs(n=24)
    cfg = model_config("sasrec", loss="gbce", num_negatives=5, gbce_t=0.5, gbce_negatives=mode)
    batch = {"positives_BxL": targets.reshape(2, 12)}
    key = jax.random.key(3)
    loss, _ = training_loss(cfg, NUM_ITEMS, h.reshape(2, 12, -1), table, batch, key)
    shape = (5,) if mode == "batch" else (2, 12, 5)
    negatives = jax.random.randint(key, shape, 1, NUM_ITEMS + 1)
    np.testing.assert_allclose(
        loss, gbce(h.reshape(2, 12, -1), table, batch["positives_BxL"], negatives, NUM_ITEMS, 0.5)[0], rtol=1e-6
    )
    if mode == "position":  # distinct draws per position, within the real items
        assert len({tuple(row) for row in np.asarray(negatives).reshape(-1, 5)}) > 20
        assert 1 <= int(negatives.min()) and int(negatives.max()) <= NUM_ITEMS


def test_target_capacity_covers_the_binomial_tail():
    assert target_capacity(3200, 0.2) == 736  # 640 + 4 * 22.6, rounded up to a multiple of 8
    assert target_capacity(10, 0.9) == 10  # never more rows than there are
    rng = np.random.default_rng(0)
    draws = rng.binomial(3200, 0.2, size=100_000)
    assert (draws > target_capacity(3200, 0.2)).mean() < 1e-3


def test_compact_targets_keeps_target_rows_in_order():
    h = jnp.arange(10.0)[:, None] * jnp.ones((1, 3))
    targets = jnp.array([0, 7, 0, 0, 3, 0, 9, 0, 0, 0])
    h_c, t_c = compact_targets(h, targets, 5)
    np.testing.assert_array_equal(t_c, [7, 3, 9, 0, 0])
    np.testing.assert_array_equal(h_c[:3, 0], [1.0, 4.0, 6.0])


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dense", [False, True])
def test_sparse_target_ce_equals_ce_on_every_row(groups, dense):
    """Few targets: the compacted rows; more than the capacity (dense): lax.cond's every-row branch."""
    h, table, targets = _inputs(n=200)
    if not dense:  # about a fifth of the rows keep their target, as BERT4Rec's mask_prob 0.2
        keep = jax.random.bernoulli(jax.random.key(5), 0.2, targets.shape)
        targets = jnp.where(keep, targets, 0)

    def reference(h, t):
        return softmax_ce_full(h, t, targets, NUM_ITEMS)

    rows_scored = []  # at run time, by the branch lax.cond takes

    def ce_fn(h_, t_):
        jax.debug.callback(lambda: rows_scored.append(h_.shape[0]))
        return softmax_ce_chunked(h_, table, t_, NUM_ITEMS, chunk=16)

    def sparse(h, t):
        return sparse_target_ce(
            lambda h_, t_: softmax_ce_chunked(h_, t, t_, NUM_ITEMS, chunk=16), h, targets, 0.2, groups
        )

    jax.block_until_ready(jax.jit(lambda h: sparse_target_ce(ce_fn, h, targets, 0.2, groups))(h))
    assert rows_scored == [200 if dense else groups * target_capacity(200 // groups, 0.2)]
    value, count = jax.jit(sparse)(h, table)
    np.testing.assert_allclose(value, reference(h, table)[0], rtol=1e-5)
    assert count == (targets > 0).sum()
    grads = jax.jit(jax.grad(lambda h, t: sparse(h, t)[0], argnums=(0, 1)))(h, table)
    for name, a, b in zip(("h", "table"), jax.grad(lambda h, t: reference(h, t)[0], argnums=(0, 1))(h, table), grads):
        assert_close(b, a, rtol=1e-5, err_msg=name)  # float32 sums over 64 rows in 16-row chunks, <= 200 positions
