import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.ops import sampling


def _zipf_stream(num_items, length, exponent, seed):
    p = 1.0 / np.arange(1, num_items + 1) ** exponent
    p /= p.sum()
    return np.random.default_rng(seed).choice(np.arange(1, num_items + 1), size=length, p=p).astype(np.int32), p


def test_hash_is_the_carter_wegman_family():
    ids = np.array([0, 1, 2, 77, 12345, 2**20 + 3, 2**31 - 2], np.int64)
    a = np.array([1, 2**31 - 2, 987654321], np.int64)
    b = np.array([0, 2**31 - 2, 123456789], np.int64)
    expected = ((a[:, None] * ids[None] + b[:, None]) % sampling.PRIME) % 1000  # python ints: exact
    got = sampling.hash_buckets(
        jnp.asarray(a, jnp.uint32), jnp.asarray(b, jnp.uint32), jnp.asarray(ids, jnp.int32), 1000
    )
    np.testing.assert_array_equal(got, expected)


def test_count_min_sketch_bounds_on_a_zipf_stream():
    """Never under; over by at most epsilon * total for >= 1 - delta of the items (eps = 0.01, delta = 0.05)."""
    num_items, chunk = 3000, 5000
    stream, _ = _zipf_stream(num_items, 8 * chunk, exponent=1.1, seed=0)
    depth, width = sampling.cms_dims(epsilon=0.01, delta=0.05)
    assert (depth, width) == (3, 272)
    sketch = sampling.cms_init(depth, width, seed=0)
    update = jax.jit(sampling.cms_update)
    for ids in stream.reshape(-1, chunk):
        sketch = update(sketch, jnp.asarray(ids))
    exact = np.bincount(stream, minlength=num_items + 1)[1:]
    estimate = np.asarray(jax.jit(sampling.cms_query)(sketch, jnp.arange(1, num_items + 1)))
    assert float(sketch.total) == len(stream)
    assert np.all(estimate >= exact)
    within = estimate - exact <= math.e / width * len(stream)
    assert within.mean() >= 1 - math.exp(-depth)
    # The heads dominate their buckets: within 10% (5-7% over seeds 0-4); the median overestimate is ~30.
    assert np.all((estimate - exact)[:10] <= 0.1 * exact[:10])


def test_count_min_sketch_padding_weights_and_pytree_round_trip():
    update, query = jax.jit(sampling.cms_update), jax.jit(sampling.cms_query)
    sketch = sampling.cms_init(depth=4, width=64, seed=3)
    sketch = update(sketch, jnp.asarray([[5, 0, 5], [9, 0, 0]]), jnp.asarray([[1.0, 7.0, 2.0], [0.5, 1, 1]]))
    np.testing.assert_array_equal(query(sketch, jnp.asarray([5, 9])), [3.0, 0.5])  # 1 + 2 and 0.5: exact in float32
    assert float(sketch.total) == 3.5  # the padding's weight is not counted
    np.testing.assert_allclose(sampling.cms_log_prob(sketch, jnp.asarray([5])), [math.log(3.0 / 3.5)], rtol=1e-6)
    leaves, treedef = jax.tree.flatten(sketch)
    assert len(leaves) == 4
    restored = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    assert isinstance(restored, sampling.CountMinSketch)
    np.testing.assert_array_equal(query(restored, jnp.asarray([5, 9])), [3.0, 0.5])


def test_youtube_estimator_converges_on_a_stationary_stream():
    """Batches of 16 from Zipf(1) over 50 items for 5000 steps, alpha = 0.01: the estimated per-step occurrence
    probability 1/B of every item with true probability q = 1 - (1 - p)^16 >= 0.1 is within 25% of q (the moving
    average's own relative noise is ~7%), and the mean relative error over them is under 8% (seeds 0-4: max
    0.12-0.17, mean ~0.05)."""
    num_items, n, steps = 50, 16, 5000
    p = 1.0 / np.arange(1, num_items + 1)
    p /= p.sum()
    batches_TxN = np.random.default_rng(0).choice(np.arange(1, num_items + 1), size=(steps, n), p=p)
    est = sampling.youtube_init(depth=2, width=1024, seed=0)

    def step(est, xs):
        t, ids = xs
        return sampling.youtube_update(est, ids, t), None

    scan = jax.jit(lambda e, ids: jax.lax.scan(step, e, (jnp.arange(1, steps + 1), ids))[0])
    est = scan(est, jnp.asarray(batches_TxN, jnp.int32))
    q = 1.0 - (1.0 - p) ** n
    estimate = np.exp(np.asarray(sampling.youtube_log_q(est, jnp.arange(1, num_items + 1))))
    rel = np.abs(estimate / q - 1.0)[q >= 0.1]
    assert len(rel) == 33
    assert rel.max() < 0.25 and rel.mean() < 0.08, rel
    assert float(sampling.youtube_log_q(sampling.youtube_init(2, 64), jnp.asarray([3]))[0]) == 0.0  # unseen: q = 1


@pytest.mark.parametrize("name", ["in_batch", "uniform", "popularity", "mixed"])
def test_samplers_static_shapes_ranges_and_jit(name):
    num_items, n = 30, 12
    counts = np.arange(num_items + 1) % 7
    log_p = sampling.item_log_probs(counts, smoothing=1.0)
    positives = jnp.asarray(np.random.default_rng(0).integers(1, num_items + 1, n), jnp.int32).at[3].set(0)
    make = {
        "in_batch": lambda key: sampling.in_batch(positives, log_p),
        "uniform": lambda key: sampling.uniform(key, 40, num_items),
        "popularity": lambda key: sampling.popularity(key, 40, log_p),
        "mixed": lambda key: sampling.mixed(key, positives, log_p, 40, num_items),
    }[name]
    ids, log_q = jax.jit(make)(jax.random.key(1))
    expected_m = {"in_batch": n, "uniform": 40, "popularity": 40, "mixed": n + 40}[name]
    assert ids.shape == log_q.shape == (expected_m,)
    assert ids.dtype == jnp.int32 and log_q.dtype == jnp.float32
    real = np.asarray(ids) > 0
    assert np.all(np.asarray(ids) <= num_items) and np.all(np.isfinite(np.asarray(log_q)))
    assert real.sum() == expected_m - (name in ("in_batch", "mixed"))  # only the padding positive is id 0


def test_sampler_q_is_the_expected_count():
    num_items = 10
    ids, log_q = sampling.uniform(jax.random.key(0), 40, num_items)
    np.testing.assert_allclose(log_q, math.log(4.0), rtol=1e-6)  # a float32 log: a few ulps
    log_p = sampling.item_log_probs(np.array([0, 5, 1, 1, 1, 1, 1, 0, 0, 0, 0]))
    assert log_p[0] == -np.inf and log_p[7] == -np.inf
    ids, log_q = jax.jit(sampling.popularity, static_argnums=1)(
        jax.random.key(0), 20000, log_p + 3.0
    )  # unnormalised is fine
    freq = np.bincount(np.asarray(ids), minlength=num_items + 1) / 20000
    # Each frequency of 20000 draws is off by about its binomial standard deviation sqrt(p (1 - p) / n), 3.5e-3 at
    # most: allow 4 of them (the largest here is 2.4); an impossible item never occurs.
    p = np.exp(np.asarray(log_p, np.float64))
    np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / 20000) + 1e-12)
    np.testing.assert_allclose(log_q, np.log(20000) + log_p[np.asarray(ids)], rtol=1e-5)
    # In-batch: 3 real positives, so Q = 3 p.
    ids, log_q = sampling.in_batch(jnp.asarray([1, 2, 0, 1]), log_p)
    np.testing.assert_allclose(log_q, [math.log(3 * 0.5), math.log(3 * 0.1), 0.0, math.log(3 * 0.5)], rtol=1e-5)


def test_in_batch_gathers_over_the_data_axis():
    log_p = jnp.log(jnp.full((9,), 1 / 8)).at[0].set(-jnp.inf)
    shards_SxN = jnp.asarray([[1, 2], [3, 0], [5, 6]], jnp.int32)
    ids, log_q = jax.vmap(lambda x: sampling.in_batch(x, log_p, axis_name="data"), axis_name="data")(shards_SxN)
    assert ids.shape == (3, 6)
    np.testing.assert_array_equal(ids[1], [1, 2, 3, 0, 5, 6])  # every shard sees the global batch
    np.testing.assert_allclose(log_q[0, 0], math.log(5 / 8), rtol=1e-6)  # 5 real positives globally
