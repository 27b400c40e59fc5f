"""Training losses: pure functions, float32 accumulation.

Legend: B batch, L length, D hidden, V item-table rows.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxrec.ops import sampling


def bce_sampled(h_BxLxD, table_VxD, positives_BxL, negatives_BxL):
    """SASRec's binary cross-entropy: the positive against one sampled negative per position.

    Positions whose positive is 0 (padding) are excluded. Returns (mean loss, number of positions).
    """
    mask_BxL = (positives_BxL > 0).astype(jnp.float32)
    pos_logits = jnp.einsum("bld,bld->bl", h_BxLxD, table_VxD[positives_BxL]).astype(jnp.float32)
    neg_logits = jnp.einsum("bld,bld->bl", h_BxLxD, table_VxD[negatives_BxL]).astype(jnp.float32)
    per_position = -jax.nn.log_sigmoid(pos_logits) - jax.nn.log_sigmoid(-neg_logits)
    count = mask_BxL.sum()
    return (per_position * mask_BxL).sum() / jnp.maximum(count, 1.0), count


def bpr(h_BxLxD, table_VxD, positives_BxL, negatives_BxL):
    """BPR (Rendle et al. 2009): -log sigmoid(s(pos) - s(neg)), one sampled negative per position.

    Same inputs and masking as `bce_sampled`. Returns (mean loss, number of positions).
    """
    mask_BxL = (positives_BxL > 0).astype(jnp.float32)
    pos_logits = jnp.einsum("bld,bld->bl", h_BxLxD, table_VxD[positives_BxL]).astype(jnp.float32)
    neg_logits = jnp.einsum("bld,bld->bl", h_BxLxD, table_VxD[negatives_BxL]).astype(jnp.float32)
    per_position = -jax.nn.log_sigmoid(pos_logits - neg_logits)
    count = mask_BxL.sum()
    return (per_position * mask_BxL).sum() / jnp.maximum(count, 1.0), count


def real_item_rows(num_rows: int, num_items: int):
    """True for real item rows (1..num_items); False for padding id 0 and vocabulary padding."""
    ids = jnp.arange(num_rows)
    return (ids > 0) & (ids <= num_items)


def softmax_ce_full(h_NxD, table_VxD, targets_N, num_items: int):
    """Full-catalogue softmax cross-entropy, materialising N x V logits (the reference).

    Rows with target 0 are excluded. Returns (mean loss, number of rows).
    """
    logits_NxV = (h_NxD @ table_VxD.T).astype(jnp.float32)
    logits_NxV = jnp.where(real_item_rows(table_VxD.shape[0], num_items)[None], logits_NxV, -jnp.inf)
    lse_N = jax.nn.logsumexp(logits_NxV, axis=-1)
    target_N = jnp.take_along_axis(logits_NxV, targets_N[:, None], axis=-1)[:, 0]
    mask_N = targets_N > 0
    count = mask_N.sum().astype(jnp.float32)
    # where, not multiply: a padding row's "target" is the -inf logit of id 0.
    return jnp.where(mask_N, lse_N - target_N, 0.0).sum() / jnp.maximum(count, 1.0), count


def chunked_lse(h_NxD, table_CxKxD, valid_CxK):
    """Online logsumexp of h's logits over a table in C chunks of K rows: never holds more than N x K logits.

    Serves `softmax_ce_chunked` and, per "model" shard inside `jax.shard_map`, `vocab_parallel.sharded_softmax_ce`:
    the carries are made like h, so they keep h's varying mesh axes, as `lax.scan` requires there.

    Args:
      h_NxD: queries.
      table_CxKxD, valid_CxK: the table as `split_rows` gives it; rows where valid is False get no probability.
    Returns:
      lse_N float32; -inf for a query when no row is valid.
    """

    def body(carry, chunk):
        running_max, running_sum = carry
        table_KxD, valid_K = chunk
        logits_NxK = jnp.where(valid_K[None], (h_NxD @ table_KxD.T).astype(jnp.float32), -jnp.inf)
        new_max = jnp.maximum(running_max, logits_NxK.max(axis=-1))
        safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        running_sum = running_sum * jnp.exp(running_max - safe_max) + jnp.exp(logits_NxK - safe_max[:, None]).sum(-1)
        return (new_max, running_sum), None

    init = (jnp.full_like(h_NxD[:, 0], -jnp.inf, jnp.float32), jnp.zeros_like(h_NxD[:, 0], jnp.float32))
    (running_max, running_sum), _ = jax.lax.scan(body, init, (table_CxKxD, valid_CxK))
    return running_max + jnp.log(running_sum)


def split_rows(table_VxD, valid_V, chunk: int):
    """The table's rows and their validity in C = ceil(V / K) chunks of K = `chunk` rows (for `chunked_lse`).

    Returns (table_CxKxD, valid_CxK); the last chunk is padded with zero rows, invalid.
    """
    rows, dim = table_VxD.shape
    num_chunks = -(-rows // chunk)
    pad = num_chunks * chunk - rows
    table_CxKxD = jnp.pad(table_VxD, ((0, pad), (0, 0))).reshape(num_chunks, chunk, dim)
    return table_CxKxD, jnp.pad(valid_V, (0, pad)).reshape(num_chunks, chunk)


def softmax_ce_chunked(h_NxD, table_VxD, targets_N, num_items: int, chunk: int = 4096):
    """softmax_ce_full without the N x V logits: peak memory O(N x chunk) in both passes.

    The forward pass scans the catalogue in chunks with an online logsumexp; a custom VJP
    recomputes each chunk's logits in the backward pass instead of storing them.
    """
    return _chunked_ce(h_NxD, table_VxD, targets_N, num_items, chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_ce(h_NxD, table_VxD, targets_N, num_items, chunk):
    loss, count, _ = _chunked_ce_forward(h_NxD, table_VxD, targets_N, num_items, chunk)
    return loss, count


def _chunked_ce_forward(h_NxD, table_VxD, targets_N, num_items, chunk):
    table_CxKxD, valid_CxK = split_rows(table_VxD, real_item_rows(table_VxD.shape[0], num_items), chunk)
    lse_N = chunked_lse(h_NxD, table_CxKxD, valid_CxK)
    target_N = jnp.einsum("nd,nd->n", h_NxD, table_VxD[targets_N]).astype(jnp.float32)
    mask_N = (targets_N > 0).astype(jnp.float32)
    count = mask_N.sum()
    loss = ((lse_N - target_N) * mask_N).sum() / jnp.maximum(count, 1.0)
    return loss, count, lse_N


def _chunked_ce_fwd(h_NxD, table_VxD, targets_N, num_items, chunk):
    loss, count, lse_N = _chunked_ce_forward(h_NxD, table_VxD, targets_N, num_items, chunk)
    return (loss, count), (h_NxD, table_VxD, targets_N, lse_N, count)


def _chunked_ce_bwd(num_items, chunk, residuals, cotangents):
    h_NxD, table_VxD, targets_N, lse_N, count = residuals
    g_loss, _ = cotangents  # the count is not differentiable
    rows = table_VxD.shape[0]
    table_CxKxD, valid_CxK = split_rows(table_VxD, real_item_rows(rows, num_items), chunk)
    # d loss / d logit = (softmax - onehot) * mask / count, per row.
    scale_N = g_loss * (targets_N > 0).astype(jnp.float32) / jnp.maximum(count, 1.0)

    def body(grad_h, chunk_in):
        table_KxD, valid_K = chunk_in
        logits_NxK = jnp.where(valid_K[None], (h_NxD @ table_KxD.T).astype(jnp.float32), -jnp.inf)
        probs_NxK = jnp.exp(logits_NxK - lse_N[:, None]) * scale_N[:, None]
        grad_h = grad_h + (probs_NxK @ table_KxD.astype(jnp.float32))
        return grad_h, probs_NxK.T @ h_NxD.astype(jnp.float32)

    grad_h, grad_table_CxKxD = jax.lax.scan(body, jnp.zeros(h_NxD.shape, jnp.float32), (table_CxKxD, valid_CxK))
    grad_table = grad_table_CxKxD.reshape(-1, table_VxD.shape[1])[:rows]
    # The target term: -logit(target) contributes -table[target] to h and -h to table[target].
    grad_h = grad_h - scale_N[:, None] * table_VxD[targets_N].astype(jnp.float32)
    grad_table = grad_table.at[targets_N].add(-scale_N[:, None] * h_NxD.astype(jnp.float32))
    return grad_h.astype(h_NxD.dtype), grad_table.astype(table_VxD.dtype), None


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def gbce(h_BxLxD, table_VxD, positives_BxL, negatives, num_items: int, calibration: float):
    """gSASRec's generalised BCE (Petrov & Macdonald 2023) with K negatives per position.

    `negatives` is BxLxK (per position) or K (shared by every position of the batch: one
    BxLxK matmul instead of a BxLxKxD gather, which is what keeps K = 256 cheap).
    The positive's probability is raised to beta = alpha (t (1 - 1/alpha) + 1/alpha), with
    alpha = K / (num_items - 1) the negative sampling rate and t the calibration parameter;
    t = 0 gives beta = 1, plain BCE with K negatives. Returns (mean loss, positions).
    """
    alpha = negatives.shape[-1] / (num_items - 1)
    beta = alpha * (calibration * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    mask_BxL = (positives_BxL > 0).astype(jnp.float32)
    pos_BxL = jnp.einsum("bld,bld->bl", h_BxLxD, table_VxD[positives_BxL]).astype(jnp.float32)
    if negatives.ndim == 1:
        neg_BxLxK = jnp.einsum("bld,kd->blk", h_BxLxD, table_VxD[negatives]).astype(jnp.float32)
    else:
        neg_BxLxK = jnp.einsum("bld,blkd->blk", h_BxLxD, table_VxD[negatives]).astype(jnp.float32)
    per_position = -beta * jax.nn.log_sigmoid(pos_BxL) - jax.nn.log_sigmoid(-neg_BxLxK).sum(-1)
    count = mask_BxL.sum()
    return (per_position * mask_BxL).sum() / jnp.maximum(count, 1.0), count


def sampled_candidates(key, positives_BxL, num: int, num_items: int, rows: int, negatives: str = "uniform"):
    """`num` candidates shared by every position of a batch, and log Q for every table row.

    uniform   ids drawn uniformly from 1..num_items: log Q = log(num / num_items) for every item.
    in_batch  ids of `num` positions drawn uniformly from the batch's real positives, i.e. items in
              proportion to their count c(x) among the batch's n positives (a popularity sampler that
              needs no global counts): log Q(x) = log(num c(x) / n), exact given the batch.
    Returns (ids_M int32, log_q_V float32): Q is each item's expected count among the candidates.
    """
    if negatives == "uniform":
        ids_M, log_q_M = sampling.uniform(key, num, num_items)
        return ids_M, jnp.full((rows,), log_q_M[0], jnp.float32)
    if negatives == "in_batch":
        positives_N = positives_BxL.reshape(-1)
        real_N = positives_N > 0
        picks_M = jax.random.categorical(key, jnp.where(real_N, 0.0, -jnp.inf), shape=(num,))
        counts_V = jnp.zeros((rows,), jnp.float32).at[positives_N].add(real_N.astype(jnp.float32))
        n = jnp.maximum(real_N.sum(), 1).astype(jnp.float32)
        # Items absent from the batch are never drawn and never positives: their -inf is never read.
        return positives_N[picks_M].astype(jnp.int32), jnp.log(num * counts_V / n)
    raise ValueError(f"unknown model.sampled_negatives {negatives!r}; known: uniform, in_batch")


def sampled_ce(h_BxLxD, table_VxD, positives_BxL, candidate_ids_M, log_q_V):
    """Softmax over the positive and M shared candidates at every position, logits <h, x> - log Q(x).

    `sampled_softmax_loss` with temperature 1, logQ correction and accidental hits removed; with every
    real item as a candidate exactly once and a constant Q it is the full-catalogue softmax CE.
    Returns (mean loss over positions with a positive, number of them).
    """
    h_NxD = h_BxLxD.reshape(-1, h_BxLxD.shape[-1])
    positives_N = positives_BxL.reshape(-1)
    loss, aux = sampled_softmax_loss(
        h_NxD,
        table_VxD[positives_N],
        positives_N,
        log_q_V[positives_N],
        table_VxD[candidate_ids_M],
        candidate_ids_M,
        log_q_V[candidate_ids_M],
        1.0,
    )
    return loss, aux["count"]


def target_capacity(positions: int, fraction: float, sigmas: float = 4.0) -> int:
    """Room for the targets among `positions` when each is a target with probability `fraction`.

    The binomial mean plus `sigmas` standard deviations, rounded up to a multiple of 8: a group of
    positions holds more targets than this about once in 30,000 groups at 4 sigmas.
    """
    mean = positions * fraction
    room = mean + sigmas * math.sqrt(positions * fraction * (1.0 - fraction))
    return min(positions, 8 * math.ceil(room / 8))


def compact_targets(h_NxD, targets_N, capacity: int, count=None):
    """The rows with a target (id > 0), in order, as `capacity` rows; unused rows get target 0.

    Rows beyond `capacity` are dropped: callers check `(targets_N > 0).sum() <= capacity` first, and
    may pass that sum as `count`.
    """
    (rows_C,) = jnp.nonzero(targets_N > 0, size=capacity, fill_value=0)
    used_C = jnp.arange(capacity) < ((targets_N > 0).sum() if count is None else count)
    return h_NxD[rows_C], jnp.where(used_C, targets_N[rows_C], 0)


def sparse_target_ce(ce_fn, h_NxD, targets_N, target_fraction: float, groups: int = 1):
    """ce_fn(h, targets) on only the rows that have a target, when few rows do (BERT4Rec's cloze).

    Each of `groups` contiguous blocks of rows (the mesh's data shards, so that no rows cross devices)
    is compacted to `target_capacity` rows; the logits then cost O(capacity x V), not O(N x V). When
    some block holds more targets than its capacity (rare by construction), `lax.cond` runs ce_fn on
    every row instead, so the loss and its gradient equal ce_fn(h_NxD, targets_N) always.
    """
    n, dim = h_NxD.shape
    if n % groups:
        return ce_fn(h_NxD, targets_N)
    capacity = target_capacity(n // groups, target_fraction)
    if capacity >= n // groups:
        return ce_fn(h_NxD, targets_N)
    h_GxNxD = h_NxD.reshape(groups, n // groups, dim)
    targets_GxN = targets_N.reshape(groups, n // groups)

    count_G = (targets_GxN > 0).sum(axis=1)

    def compacted(h_GxNxD, targets_GxN):
        compact = jax.vmap(compact_targets, in_axes=(0, 0, None, 0))
        h_GxCxD, targets_GxC = compact(h_GxNxD, targets_GxN, capacity, count_G)
        return ce_fn(h_GxCxD.reshape(-1, dim), targets_GxC.reshape(-1))

    def every_row(h_GxNxD, targets_GxN):
        return ce_fn(h_GxNxD.reshape(-1, dim), targets_GxN.reshape(-1))

    return jax.lax.cond(count_G.max() <= capacity, compacted, every_row, h_GxNxD, targets_GxN)


def temperature(log_tau_param, floor: float = 0.01):
    """A learnable softmax temperature: tau = floor + exp(log_tau_param), so tau > floor always.

    Smooth, unlike a clamp: no dead zone where the parameter drifts while tau sits at the floor (a clamp with
    straight-through keeps the gradient but lets the parameter wander below the floor, and climbing back takes as
    many steps). Above the floor it is exp, so Adam changes tau multiplicatively, as CLIP's log-scale does.
    """
    return floor + jnp.exp(jnp.asarray(log_tau_param, jnp.float32))


def temperature_param(tau: float, floor: float = 0.01) -> float:
    """The `log_tau_param` that gives temperature `tau` (for initialisation); tau must exceed the floor."""
    if tau <= floor:
        raise ValueError(f"initial temperature {tau} must exceed the floor {floor}")
    return float(jnp.log(tau - floor))


def sampled_softmax_loss(
    query_NxD,
    positive_NxD,
    positive_ids_N,
    positive_log_q_N,
    candidate_MxD,
    candidate_ids_M,
    candidate_log_q_M,
    temperature,
    *,
    logq_correction: bool = True,
    remove_accidental_hits: bool = True,
    weight_N=None,
    per_user_ids_N=None,
):
    """Sampled softmax with logQ correction for two-tower retrieval; M candidates shared by all N queries.

    For query u with positive p: logits s(u, x) = <u, x> / tau - log Q(x) over {p} and the M candidates (without
    `- log Q` when `logq_correction` is off), loss = logsumexp(s) - s(u, p). One N x M logit matrix, never N x V.
    Q comes with the candidates from `jaxrec.ops.sampling` (log of x's expected count among the candidates).

    Args:
      query_NxD, positive_NxD: query and positive-item embeddings; any float dtype (logits are float32).
      positive_ids_N: positive ids; rows with id 0 are padding and excluded.
      positive_log_q_N, candidate_log_q_M: log Q of the positives and of the candidates.
      candidate_MxD, candidate_ids_M: the shared candidates; candidates with id 0 are masked for every query.
      temperature: tau, a float or a scalar array (`temperature(param)` for a learnable one).
      remove_accidental_hits: mask, for each query, candidates whose id is that query's positive id (in-batch
        candidates contain each query's own positive).
      weight_N: optional per-example weights.
      per_user_ids_N: if given, each user counts equally: a user's examples are (weight-)averaged, then the users
        are averaged. Otherwise the loss is the (weighted) mean over examples.
    Returns:
      (loss, aux): aux["count"] real examples, aux["normaliser"] the loss's denominator (total weight, or number of
      users: loss * normaliser sums across shards), aux["accidental_hits"] masked hits per real example.
    """
    inv_tau = 1.0 / jnp.asarray(temperature, jnp.float32)
    valid_N = positive_ids_N > 0
    real_M = candidate_ids_M > 0
    pos_N = jnp.einsum("nd,nd->n", query_NxD, positive_NxD, preferred_element_type=jnp.float32) * inv_tau
    neg_NxM = jnp.einsum("nd,md->nm", query_NxD, candidate_MxD, preferred_element_type=jnp.float32) * inv_tau
    if logq_correction:
        # where: padding's log Q may be -inf, and inf - inf would poison the gradients through the masks.
        pos_N = pos_N - jnp.where(valid_N, positive_log_q_N.astype(jnp.float32), 0.0)
        neg_NxM = neg_NxM - jnp.where(real_M, candidate_log_q_M.astype(jnp.float32), 0.0)[None]
    hits_NxM = (candidate_ids_M[None] == positive_ids_N[:, None]) & valid_N[:, None] & real_M[None]
    masked_NxM = ~real_M[None] | hits_NxM if remove_accidental_hits else ~real_M[None]
    neg_NxM = jnp.where(masked_NxM, -jnp.inf, neg_NxM)
    # The positive is always finite, so every row's logsumexp is too.
    lse_N = jax.nn.logsumexp(jnp.concatenate([pos_N[:, None], neg_NxM], axis=1), axis=1)
    per_example_N = lse_N - pos_N

    w_N = valid_N.astype(jnp.float32)
    if weight_N is not None:
        w_N = w_N * weight_N.astype(jnp.float32)
    if per_user_ids_N is None:
        normaliser = w_N.sum()
    else:
        n = per_user_ids_N.shape[0]
        _, user_N = jnp.unique(per_user_ids_N, size=n, return_inverse=True)
        user_N = user_N.reshape(-1)
        user_weight = jax.ops.segment_sum(w_N, user_N, num_segments=n)
        w_N = w_N / jnp.maximum(user_weight[user_N], 1e-30)
        normaliser = (user_weight > 0).sum().astype(jnp.float32)
    count = valid_N.sum().astype(jnp.float32)
    loss = jnp.where(valid_N, per_example_N * w_N, 0.0).sum() / jnp.maximum(normaliser, 1e-30)
    aux = {
        "count": count,
        "normaliser": normaliser,
        "accidental_hits": hits_NxM.sum().astype(jnp.float32) / jnp.maximum(count, 1.0),
    }
    return loss, aux
