"""Negative samplers and item-frequency estimators for sampled softmax (`losses.sampled_softmax_loss`).

Every sampler is jit-able with static shapes and returns `(ids_M int32, log_q_M float32)`. `log_q` is the log of
the *expected number of times* item x appears among the M candidates, E[count_x] = M q(x) for M draws from q: the
correction sampled softmax subtracts from each logit (Jean et al. 2015; TF's `sampled_softmax_loss`), so that
sum_candidates exp(s_x - log_q_x) is an unbiased estimate of the catalogue's sum_x exp(s_x). Duplicates are kept as
separate candidates, which is what makes the expected count (and not the inclusion probability) the right Q.

Frequency estimators: exact counts (`item_log_probs`, numpy), a count-min sketch (`cms_*`) and the streaming
estimator of Yi et al. 2019 (`youtube_*`); both streaming ones are NamedTuples of arrays, so they live in a
TrainState, pass through jit and are checkpointed by orbax like any other pytree.

Legend: N batch (query, positive) pairs, M candidates, V item-table rows, R hash rows (depth), W buckets (width).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PRIME = 2**31 - 1  # Mersenne prime: x mod p is a mask, a shift and one subtraction, all in uint32

LogFreq = jax.Array | np.ndarray | Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------- samplers


def in_batch(positive_ids_N, log_freq: LogFreq, *, axis_name: str | None = None):
    """The batch's own positives as candidates (shared by every query of the batch).

    Q(x) is the expected count of x among the batch's n real positives, n p(x), where p(x) is the probability that
    one training example's positive is x: `log_q = log n + log p(x)`. It is not clipped at 1: a popular item that
    appears k times in the batch is k candidates, and n p(x) is the expectation of that k.

    Args:
      positive_ids_N: int ids of the batch's positives; 0 is padding (kept as a candidate id 0, which the loss masks).
      log_freq: log p per item, a (V,) array (e.g. `item_log_probs(counts)`) or a callable ids -> log p
        (e.g. `lambda ids: cms_log_prob(sketch, ids)`).
      axis_name: when the batch is sharded over a data axis (inside shard_map, or a vmap with an axis name), the
        positives are all-gathered over it, so each shard's queries see the global batch's positives as
        candidates; look their embeddings up as `table[ids]` (or all-gather the positive embeddings the same way).
    Returns:
      (ids_M, log_q_M) with M = N (times the axis size when gathered).
    """
    ids_M = positive_ids_N.reshape(-1).astype(jnp.int32)
    if axis_name is not None:
        ids_M = jax.lax.all_gather(ids_M, axis_name, tiled=True)
    real_M = ids_M > 0
    n = jnp.maximum(real_M.sum(), 1).astype(jnp.float32)  # real positives only: padding rows are not draws
    log_p_M = log_freq(ids_M) if callable(log_freq) else jnp.asarray(log_freq)[ids_M]
    log_q_M = jnp.where(real_M, jnp.log(n) + log_p_M.astype(jnp.float32), 0.0)
    return ids_M, log_q_M


def uniform(key, num: int, num_items: int):
    """`num` ids drawn uniformly (with replacement) from 1..num_items.

    Each item's expected count among the draws is num / num_items, so `log_q = log(num / num_items)` for every
    candidate: a constant, which cancels in the softmax unless other candidates carry a different Q (`mixed`).
    """
    ids_M = jax.random.randint(key, (num,), 1, num_items + 1, dtype=jnp.int32)
    return ids_M, jnp.full((num,), math.log(num / num_items), jnp.float32)


def popularity(key, num: int, log_probs_V):
    """`num` ids drawn (with replacement) proportionally to exp(log_probs_V), which need not be normalised.

    Set log_probs_V[0] (padding) and any vocabulary-padding rows to -inf: they are then never drawn.
    `log_q = log num + log_softmax(log_probs_V)[id]`, the expected count of the id among the draws.
    """
    log_probs_V = jnp.asarray(log_probs_V, jnp.float32)
    ids_M = jax.random.categorical(key, log_probs_V, shape=(num,)).astype(jnp.int32)
    log_q_M = math.log(num) + jax.nn.log_softmax(log_probs_V)[ids_M]
    return ids_M, log_q_M


def mixed(key, positive_ids_N, log_freq: LogFreq, num_uniform: int, num_items: int, *, axis_name=None):
    """In-batch candidates followed by `num_uniform` uniform ones (mixed negative sampling, Yang et al. 2020;
    PinnerFormer's best setting), each part with its own Q.

    Each part's `sum exp(s - log_q)` estimates the catalogue's sum on its own, so the union over-counts the
    negatives by about 2x relative to the positive; that is the published recipe, kept as is. (The exact
    mixture correction would be log(Q_in_batch(x) + Q_uniform(x)) for every candidate.)
    """
    ids_a, log_q_a = in_batch(positive_ids_N, log_freq, axis_name=axis_name)
    ids_b, log_q_b = uniform(key, num_uniform, num_items)
    return jnp.concatenate([ids_a, ids_b]), jnp.concatenate([log_q_a, log_q_b])


# ---------------------------------------------------------------- exact frequencies


def item_log_probs(counts_V, smoothing: float = 0.0) -> np.ndarray:
    """log p(x) from exact counts over the training positives (index = item id; index 0 is padding).

    `smoothing` is added to every real item's count (add-k); with 0, unseen items get -inf, which is right for
    `popularity` (never drawn) but must not reach the loss as a positive's Q. Row 0 is always -inf.
    """
    counts = np.asarray(counts_V, np.float64).copy()
    counts[1:] += smoothing
    counts[0] = 0.0
    with np.errstate(divide="ignore"):
        return (np.log(counts) - np.log(max(counts.sum(), 1e-30))).astype(np.float32)


# ---------------------------------------------------------------- hashing


def _mod_p(v):
    """v mod p for uint32 v < 2**32 (2**31 = 1 mod p)."""
    r = (v & PRIME) + (v >> 31)
    return jnp.where(r >= PRIME, r - PRIME, r)


# jit: eagerly, its dozen uint32 ops would each be dispatched (and compiled) on their own.
@functools.partial(jax.jit, static_argnames="width")
def hash_buckets(a_R, b_R, ids, width: int):
    """((a x + b) mod p) mod width for each hash row: the Carter-Wegman universal family, p = 2**31 - 1.

    Pr[h(x) = h(y)] <= ~1/width for x != y over the random (a, b). Everything stays in uint32 (jax's default has no
    64-bit integers): a x is split into 16-bit halves and reduced with 2**31 = 1 (mod p). Returns int32 R x N.
    """
    x = _mod_p(ids.reshape(-1).astype(jnp.uint32))[None]
    a, b = a_R.astype(jnp.uint32)[:, None], b_R.astype(jnp.uint32)[:, None]
    ah, al, xh, xl = a >> 16, a & 0xFFFF, x >> 16, x & 0xFFFF  # ah, xh < 2**15
    # a x = ah xh 2**32 + (ah xl + al xh) 2**16 + al xl, with 2**32 = 2 and 2**31 = 1 (mod p).
    mid = ah * xl + al * xh  # < 2**32
    s = _mod_p(2 * (ah * xh) + (mid >> 15))
    s = _mod_p(s + ((mid & 0x7FFF) << 16))
    s = _mod_p(s + _mod_p(al * xl))
    s = _mod_p(s + b)
    return (s % width).astype(jnp.int32)


def _hash_params(depth: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, depth, dtype=np.uint32)
    b = rng.integers(0, PRIME, depth, dtype=np.uint32)
    return jnp.asarray(a), jnp.asarray(b)


def _rows(buckets_RxN):
    return jnp.broadcast_to(jnp.arange(buckets_RxN.shape[0])[:, None], buckets_RxN.shape)


# ---------------------------------------------------------------- count-min sketch


class CountMinSketch(NamedTuple):
    counts_RxW: jax.Array  # float32 (weighted) counts per hash row and bucket
    a_R: jax.Array  # uint32 hash multipliers in [1, p)
    b_R: jax.Array  # uint32 hash offsets in [0, p)
    total: jax.Array  # float32 scalar: total weight added (padding excluded)


def cms_dims(epsilon: float, delta: float) -> tuple[int, int]:
    """(depth, width) for an overestimate <= epsilon * total with probability >= 1 - delta per query."""
    return math.ceil(math.log(1.0 / delta)), math.ceil(math.e / epsilon)


def cms_init(depth: int, width: int, seed: int = 0) -> CountMinSketch:
    """An empty sketch (Cormode & Muthukrishnan 2005).

    For every item, the estimate is >= its true count (never under), and <= true + epsilon * total with
    probability >= 1 - delta, where epsilon = e / width and delta = exp(-depth). Memory: depth x width float32.
    """
    a_R, b_R = _hash_params(depth, seed)
    return CountMinSketch(jnp.zeros((depth, width), jnp.float32), a_R, b_R, jnp.zeros((), jnp.float32))


def cms_update(sketch: CountMinSketch, ids, weights=None) -> CountMinSketch:
    """Adds each id's weight (default 1) to its bucket in every hash row; id 0 (padding) adds nothing."""
    ids = ids.reshape(-1)
    w_N = jnp.ones(ids.shape, jnp.float32) if weights is None else weights.reshape(-1).astype(jnp.float32)
    w_N = jnp.where(ids > 0, w_N, 0.0)
    buckets_RxN = hash_buckets(sketch.a_R, sketch.b_R, ids, sketch.counts_RxW.shape[1])
    counts = sketch.counts_RxW.at[_rows(buckets_RxN), buckets_RxN].add(jnp.broadcast_to(w_N, buckets_RxN.shape))
    return sketch._replace(counts_RxW=counts, total=sketch.total + w_N.sum())


def cms_query(sketch: CountMinSketch, ids):
    """Estimated count of each id (min over hash rows), float32, shaped like ids."""
    buckets_RxN = hash_buckets(sketch.a_R, sketch.b_R, ids, sketch.counts_RxW.shape[1])
    return sketch.counts_RxW[_rows(buckets_RxN), buckets_RxN].min(axis=0).reshape(ids.shape)


def cms_log_prob(sketch: CountMinSketch, ids):
    """log p(x) = log(count / total), an unseen item counted once (so never -inf): `log_freq` for `in_batch`."""
    return jnp.log(jnp.maximum(cms_query(sketch, ids), 1.0)) - jnp.log(jnp.maximum(sketch.total, 1.0))


# ---------------------------------------------------------------- streaming estimator (Yi et al. 2019)


class StreamingFrequency(NamedTuple):
    last_step_RxW: jax.Array  # float32 A: the step at which the bucket was last seen (0: never)
    interval_RxW: jax.Array  # float32 B: moving average of the steps between two sightings
    a_R: jax.Array  # uint32 hash multipliers
    b_R: jax.Array  # uint32 hash offsets


def youtube_init(depth: int, width: int, seed: int = 0) -> StreamingFrequency:
    """Yi et al. 2019 ("Sampling-bias-corrected neural modeling", algorithm 2) with `depth` hash rows."""
    a_R, b_R = _hash_params(depth, seed)
    # Two arrays, not one twice: a train step that donates its state may not donate a buffer twice.
    return StreamingFrequency(jnp.zeros((depth, width), jnp.float32), jnp.zeros((depth, width), jnp.float32), a_R, b_R)


def youtube_update(est: StreamingFrequency, ids, step, alpha: float = 0.01) -> StreamingFrequency:
    """For each bucket hit by this step's ids: B <- (1 - alpha) B + alpha (step - A), A <- step.

    `step` counts from 1 and must increase by one per batch (pass the global batch's ids when sharded). An item
    seen twice in the batch updates its bucket once: every duplicate writes the same value.
    """
    ids = ids.reshape(-1)
    width = est.last_step_RxW.shape[1]
    buckets_RxN = hash_buckets(est.a_R, est.b_R, ids, width)
    buckets_RxN = jnp.where(ids[None] > 0, buckets_RxN, width)  # padding: out of bounds, dropped
    rows_RxN = _rows(buckets_RxN)
    step = jnp.asarray(step, jnp.float32)
    last = est.last_step_RxW.at[rows_RxN, buckets_RxN].get(mode="fill", fill_value=0.0)
    interval = est.interval_RxW.at[rows_RxN, buckets_RxN].get(mode="fill", fill_value=0.0)
    interval = (1.0 - alpha) * interval + alpha * (step - last)
    return est._replace(
        last_step_RxW=est.last_step_RxW.at[rows_RxN, buckets_RxN].set(
            jnp.broadcast_to(step, rows_RxN.shape), mode="drop"
        ),
        interval_RxW=est.interval_RxW.at[rows_RxN, buckets_RxN].set(interval, mode="drop"),
    )


def youtube_log_q(est: StreamingFrequency, ids):
    """log of the estimated probability that the item appears in a step's batch, 1 / B.

    Collisions only shorten a bucket's interval, so the largest B over the hash rows is the least biased. B < 1
    (e.g. never seen, B = 0) is read as 1: log_q <= 0. For `in_batch`, whose Q is n p(x), pass
    `log_freq = lambda ids: youtube_log_q(est, ids) - log(global_batch)` (1/B ~ n p(x) while n p(x) << 1).
    """
    buckets_RxN = hash_buckets(est.a_R, est.b_R, ids, est.interval_RxW.shape[1])
    interval_N = est.interval_RxW[_rows(buckets_RxN), buckets_RxN].max(axis=0)
    return -jnp.log(jnp.maximum(interval_N, 1.0)).reshape(ids.shape)
