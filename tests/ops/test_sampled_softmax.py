import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.ops import sampling
from jaxrec.ops.losses import sampled_softmax_loss, softmax_ce_full, temperature, temperature_param
from tests.conftest import assert_close

NUM_ITEMS = 45  # rows 46..63 of a 64-row table are vocabulary padding

# jit: eagerly, each of the loss's ops would be compiled on its own, which is most of these tests' time.
loss_jit = jax.jit(sampled_softmax_loss, static_argnames=("logq_correction", "remove_accidental_hits"))


def _inputs(seed=0, n=37, rows=64, dim=8):
    keys = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(keys[0], (n, dim))
    table = jax.random.normal(keys[1], (rows, dim))
    targets = jax.random.randint(keys[2], (n,), 1, NUM_ITEMS + 1)
    return h, table, targets.at[:5].set(0)  # padding positions


def _numpy_loss(q, pos, pos_ids, pos_lq, cand, cand_ids, cand_lq, tau, correction=True, remove_hits=True):
    """Brute force, one row at a time, float64: per-example losses (nan for padding rows)."""
    q, pos, cand = (np.asarray(x, np.float64) for x in (q, pos, cand))
    out = []
    for i in range(q.shape[0]):
        if pos_ids[i] == 0:
            out.append(np.nan)
            continue
        logits = [q[i] @ pos[i] / tau - (pos_lq[i] if correction else 0.0)]
        for j in range(cand.shape[0]):
            if cand_ids[j] == 0 or (remove_hits and cand_ids[j] == pos_ids[i]):
                continue
            logits.append(q[i] @ cand[j] / tau - (cand_lq[j] if correction else 0.0))
        logits = np.array(logits)
        out.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0])
    return np.array(out)


def _random_case(seed=0, n=12, m=20, dim=6):
    rng = np.random.default_rng(seed)
    pos_ids = rng.integers(1, 10, n)
    pos_ids[[2, 7]] = 0
    cand_ids = rng.integers(1, 10, m)
    cand_ids[3] = 0
    f32 = np.float32
    return dict(
        query_NxD=jnp.asarray(rng.normal(size=(n, dim)), f32),
        positive_NxD=jnp.asarray(rng.normal(size=(n, dim)), f32),
        positive_ids_N=jnp.asarray(pos_ids, jnp.int32),
        positive_log_q_N=jnp.asarray(rng.normal(size=n), f32),
        candidate_MxD=jnp.asarray(rng.normal(size=(m, dim)), f32),
        candidate_ids_M=jnp.asarray(cand_ids, jnp.int32),
        candidate_log_q_M=jnp.asarray(rng.normal(size=m), f32),
    )


def test_whole_catalogue_with_uniform_q_is_full_softmax_values_and_gradients():
    h, table, targets = _inputs()
    ids_M = jnp.arange(1, NUM_ITEMS + 1, dtype=jnp.int32)
    log_q = math.log(3.0)  # any constant Q cancels

    def sampled(h, table):
        n, m = h.shape[0], ids_M.shape[0]
        return sampled_softmax_loss(
            h, table[targets], targets, jnp.full((n,), log_q), table[ids_M], ids_M, jnp.full((m,), log_q), 1.0
        )[0]

    def full(h, table):
        return softmax_ce_full(h, table, targets, NUM_ITEMS)[0]

    np.testing.assert_allclose(jax.jit(sampled)(h, table), jax.jit(full)(h, table), rtol=1e-5)
    grads_full = jax.jit(jax.grad(full, argnums=(0, 1)))(h, table)
    grads_sampled = jax.jit(jax.grad(sampled, argnums=(0, 1)))(h, table)
    for name, a, b in zip(("h", "table"), grads_full, grads_sampled):
        assert_close(b, a, rtol=1e-5, err_msg=name)  # float32 sums over 45-64 rows, 37 positions: N eps <= 8e-6
    assert np.abs(np.asarray(grads_sampled[1][1 : NUM_ITEMS + 1])).max() > 1e-3  # the table's gradient is not 0


@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize("remove_hits", [True, False])
def test_matches_brute_force(correction, remove_hits):
    case = _random_case()
    loss, aux = loss_jit(**case, temperature=0.7, logq_correction=correction, remove_accidental_hits=remove_hits)
    per_example = _numpy_loss(*(np.asarray(v) for v in case.values()), 0.7, correction, remove_hits)
    np.testing.assert_allclose(loss, np.nanmean(per_example), rtol=1e-5)
    assert aux["count"] == aux["normaliser"] == 10


def test_accidental_hits_are_masked():
    case = _random_case()
    ids = np.asarray(case["candidate_ids_M"])
    case["positive_ids_N"] = jnp.where(case["positive_ids_N"] > 0, int(ids[0]), 0)  # every real row's positive
    hit_rows = jnp.asarray((ids == ids[0]) | (ids == 0))  # hits for every query, and the padding candidate
    moved = case["candidate_MxD"] + 10.0 * hit_rows[:, None]
    other = case["candidate_MxD"].at[np.flatnonzero(~np.asarray(hit_rows))[0]].add(10.0)
    base, aux = loss_jit(**case, temperature=1.0)
    assert aux["accidental_hits"] == (ids == ids[0]).sum() >= 1
    # Masked logits are -inf: whatever their rows hold, they add exactly 0 to the same float32 sums.
    np.testing.assert_array_equal(loss_jit(**{**case, "candidate_MxD": moved}, temperature=1.0)[0], base)
    assert not np.isclose(loss_jit(**{**case, "candidate_MxD": other}, temperature=1.0)[0], base)
    kept = loss_jit(**{**case, "candidate_MxD": moved}, temperature=1.0, remove_accidental_hits=False)
    assert not np.isclose(kept[0], loss_jit(**case, temperature=1.0, remove_accidental_hits=False)[0])


def test_logq_correction_direction():
    case = _random_case()
    off = loss_jit(**case, temperature=1.0, logq_correction=False)[0]
    # Same Q everywhere: the correction shifts every logit equally and changes nothing.
    same = {**case, "positive_log_q_N": jnp.full((12,), 1.5), "candidate_log_q_M": jnp.full((20,), 1.5)}
    np.testing.assert_allclose(loss_jit(**same, temperature=1.0)[0], off, rtol=1e-6)
    # Popular candidates (Q > 1) are discounted and a rare positive is boosted: the loss must fall.
    skewed = {**case, "positive_log_q_N": jnp.full((12,), -2.0), "candidate_log_q_M": jnp.full((20,), 2.0)}
    assert loss_jit(**skewed, temperature=1.0)[0] < off - 1.0


def test_per_user_average_weights_users_equally():
    case = _random_case()
    users = jnp.asarray([5, 5, 5, 9, 9, 2, 7, 7, 7, 7, 3, 3], jnp.int32)  # rows 2 and 7 are padding
    weights = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, 12), jnp.float32)
    per_example = _numpy_loss(*(np.asarray(v) for v in case.values()), 1.0)
    expected = []
    for u in np.unique(np.asarray(users)):
        rows = (np.asarray(users) == u) & ~np.isnan(per_example)
        if rows.any():
            expected.append(np.average(per_example[rows], weights=np.asarray(weights)[rows]))
    loss, aux = loss_jit(**case, temperature=1.0, weight_N=weights, per_user_ids_N=users)
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
    assert aux["normaliser"] == len(expected) == 5
    assert not np.isclose(loss, np.nanmean(per_example))  # per-example averaging would differ


def test_temperature_floor_and_low_precision_inputs():
    assert float(temperature(-50.0)) == pytest.approx(0.01) and float(temperature(-5.0)) > np.float32(0.01)
    np.testing.assert_allclose(temperature(temperature_param(0.2)), 0.2, rtol=1e-6)
    with pytest.raises(ValueError, match="floor"):
        temperature_param(0.005)
    assert jax.grad(lambda p: temperature(p))(0.0) > 0  # learnable: gradient flows
    case = _random_case()
    loss32 = loss_jit(**case, temperature=temperature(temperature_param(0.5)))[0]
    low = {k: v.astype(jnp.bfloat16) if v.dtype == jnp.float32 else v for k, v in case.items()}
    loss16 = loss_jit(**low, temperature=0.5)[0]
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, loss32, rtol=3e-2)


def test_in_batch_logq_correction_brings_the_expected_gradient_closer_to_full_softmax():
    """A 50-item catalogue with Zipf(1) popularity; every row's query has fixed logits u and a positive drawn from
    the popularity. Item embeddings are one-hot, so the gradient w.r.t. the query is the gradient w.r.t. the
    logits; full softmax's expectation is softmax(u) - p. Averaged over 1000 in-batch batches of 32, the
    corrected gradient's relative error was 0.10-0.16 and the uncorrected one's 0.76-1.22 (seeds 0-3; 0.13 and
    0.77 for seed 0); we require a 3x gap. (Q clipped at 1 instead of n p gave ~0.29: see `sampling.in_batch`.)
    """
    num_items, n, trials = 50, 32, 1000
    p = 1.0 / np.arange(1, num_items + 1)
    p /= p.sum()
    log_p = jnp.asarray(np.concatenate([[-np.inf], np.log(p)]), jnp.float32)
    table = jnp.eye(num_items + 1)
    u = jnp.asarray(np.concatenate([[0.0], np.random.default_rng(0).normal(size=num_items)]), jnp.float32)
    full = jax.nn.softmax(jnp.where(jnp.arange(num_items + 1) > 0, u, -jnp.inf)) - jnp.concatenate([0.0 * p[:1], p])

    def mean_gradient(positives_N, correction):
        ids, log_q = sampling.in_batch(positives_N, log_p)
        q = jnp.broadcast_to(u, (n, num_items + 1))
        loss = lambda q: sampled_softmax_loss(  # noqa: E731
            q, table[ids], ids, log_q, table[ids], ids, log_q, 1.0, logq_correction=correction
        )[0]
        return jax.grad(loss)(q).sum(0)  # the loss is a mean over rows: this is the rows' mean gradient

    @jax.jit
    def errors(positives_TxN):
        return [
            jnp.linalg.norm(jax.vmap(mean_gradient, in_axes=(0, None))(positives_TxN, c).mean(0) - full)
            / jnp.linalg.norm(full)
            for c in (True, False)
        ]

    # numpy draws: jax.random.categorical would take longer to compile than the rest of the test.
    positives_TxN = np.random.default_rng(0).choice(np.arange(1, num_items + 1), size=(trials, n), p=p)
    error_on, error_off = (float(e) for e in errors(jnp.asarray(positives_TxN, jnp.int32)))
    assert error_on < error_off / 3, (error_on, error_off)
    assert error_on < 0.2
