import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.losses import bce_sampled, gbce, softmax_ce_chunked, softmax_ce_full

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
    for a, b in zip(grad_full, grad_chunked):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
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
