"""Vocabulary-parallel losses: the item table row-sharded over mesh axis "model", the batch over "data".

Every function is a `jax.shard_map` over `jax.sharding.Mesh(devices, ("data", "model"))` (Auto axes): the table
arrives as P("model", None), so shard s holds rows [s V/S, (s+1) V/S), and the batch rows as P("data"), replicated
over "model". The maths is jaxrec.ops.losses'; only the reductions over the catalogue become collectives.

sharded_softmax_ce       full-catalogue softmax CE. Each shard computes its own logits (all at once, or in chunks
                         with an online logsumexp and a custom VJP that recomputes them), the logsumexp is combined
                         across "model" by a pmax and a psum of rescaled sums, the target's logit comes from the
                         shard that owns it (masked local lookup + psum), and the mean combines across "data".
sharded_sampled_softmax  sampled softmax with logQ (losses.sampled_softmax_loss does the maths): the positives' and
                         candidates' rows are looked up in the sharded table (masked local gather + psum over
                         "model"), and the positives are all-gathered over "data", so every query sees the global
                         batch's positives as in-batch candidates.

shard_map against GSPMD (benchmarks/scale_bench.py --part ce; results/cpu/scale_bench.md): N = 2048 rows,
V = 131072, D = 64, float32, forward + backward w.r.t. queries and table, 8 host devices on a 2-core CPU, mesh (1, 8),
per-device temp bytes from memory_analysis(); step time median (min) of 7 round-robin steps on a shared machine:
  GSPMD softmax_ce_full        4.20 s (2.18)  268 MB  no table gather: XLA keeps N x V/8 logits per device
  shard_map chunk=0            3.55 s (2.06)  268 MB  the same logits
  shard_map chunk=2048         3.37 s (1.74)   23 MB  N x 2048 logits at a time, backward recomputes them
  GSPMD softmax_ce_chunked    27.8 s (16.4)    86 MB  all-gathers the table, scans all of V on every device
  * Full logits: a draw in memory, and GSPMD partitions the reference loss well (13.1 GFLOP per device either way).
    shard_map was ahead in all five runs (by 4-45%: noisy), and XLA's cost_analysis says why: the reference picks
    the target logit out of the sharded N x V logits (take_along_axis, whose backward scatters into a fresh N x V/8
    buffer), 2.16 GB accessed per device against 1.54 GB for shard_map, which looks the target's row up instead.
  * Chunked: only shard_map gets it. Under GSPMD the scan over C x K x D chunks of a row-sharded table is not
    partitioned: the compiled HLO all-gathers the table to f32[64,2048,64] (the whole table) in the forward and again
    in the backward and every device scans all 131072 rows (8x the work, 8x the time). shard_map scans its own V/8
    rows: 12x fewer temp bytes than the full logits, and the fastest of the four.
  Pick chunk=0 for small catalogues, chunk > 0 (a few thousand) when N x V/S logits do not fit.

Legend: N rows (queries), D hidden, V table rows (padded), S "model" shards, M sampled candidates, C chunks,
K chunk rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxrec.ops import losses

DATA, MODEL = "data", "model"


def _shard_rows(table_local_VxD, num_items: int):
    """(global row offset, validity of each local row) for this "model" shard."""
    rows = table_local_VxD.shape[0]
    offset = jax.lax.axis_index(MODEL) * rows
    ids = offset + jnp.arange(rows)
    return offset, (ids > 0) & (ids <= num_items)


def sharded_lookup(table_local_VxD, ids):
    """table[ids] from a row-sharded table, inside shard_map: each shard fills the rows it owns, psum over "model".

    Differentiable: the psum's transpose hands every shard the full cotangent, which it scatters into its own rows.
    """
    rows = table_local_VxD.shape[0]
    local = ids - jax.lax.axis_index(MODEL) * rows
    owned = (local >= 0) & (local < rows)
    rows_xD = table_local_VxD[jnp.clip(local, 0, rows - 1)]
    return jax.lax.psum(jnp.where(owned[..., None], rows_xD, 0), MODEL)


def _to_varying(x, axis: str):
    """Marks x as varying over `axis`: jax.lax.pcast (older jax: jax.lax.pvary)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axis, to="varying")
    return jax.lax.pvary(x, axis)


def _check(mesh, table_VxD, n: int):
    for axis in (DATA, MODEL):
        if axis not in mesh.axis_names:
            raise ValueError(f"mesh axes {mesh.axis_names} lack {axis!r}")
    shards, data = mesh.shape[MODEL], mesh.shape[DATA]
    if table_VxD.shape[0] % shards:
        raise ValueError(f"table rows {table_VxD.shape[0]} not divisible by {shards} 'model' shards")
    if n % data:
        raise ValueError(f"{n} rows not divisible by {data} 'data' shards")


# ---------------------------------------------------------------- full-catalogue softmax CE


def sharded_softmax_ce(h_NxD, table_VxD, targets_N, num_items: int, mesh, *, chunk: int = 0):
    """`losses.softmax_ce_full` with the table row-sharded over "model" and the rows over "data".

    Args:
      h_NxD: queries, sharded (or shardable) P("data", None).
      table_VxD: item table, P("model", None); rows 0 and > num_items are padding, never given probability.
      targets_N: target ids; rows with target 0 are excluded.
      num_items: real items (ids 1..num_items).
      mesh: a Mesh with axes ("data", "model"); V divisible by the "model" size, N by the "data" size.
      chunk: 0 computes each shard's N x V/S logits at once (plain autodiff); > 0 scans the shard's rows in chunks
        of `chunk` with an online logsumexp, never holding more than N x chunk logits, the backward recomputing
        each chunk (custom VJP).
    Returns:
      (mean loss over rows with a target, number of them), both replicated.
    """
    _check(mesh, table_VxD, h_NxD.shape[0])
    body = functools.partial(_ce_body, num_items=num_items, chunk=chunk)
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(DATA, None), P(MODEL, None), P(DATA)),
        out_specs=(P(), P()),
        check_vma=True,
    )
    return fn(h_NxD, table_VxD, targets_N)


def _ce_body(h_NxD, table_local_VxD, targets_N, *, num_items, chunk):
    _, valid_V = _shard_rows(table_local_VxD, num_items)
    if chunk:
        # The custom VJP's cotangents vary over both axes, so its inputs must too: h enters varying over "model" and
        # the table over "data"; the transposes of these casts are the psums that add up dL/dh over the "model"
        # shards and dL/dtable over the "data" shards.
        h_local = _to_varying(h_NxD, MODEL)
        table_local = _to_varying(table_local_VxD, DATA)
        local_max_N, local_sum_N = _local_stats_chunked(h_local, table_local, valid_V, chunk)
    else:
        logits_NxV = jnp.where(valid_V[None], (h_NxD @ table_local_VxD.T).astype(jnp.float32), -jnp.inf)
        local_max_N = jax.lax.stop_gradient(logits_NxV.max(axis=-1))
        safe_N = jnp.where(jnp.isfinite(local_max_N), local_max_N, 0.0)
        local_sum_N = jnp.exp(logits_NxV - safe_N[:, None]).sum(axis=-1)
    # logsumexp across shards: every shard's sum rescaled to the global max. The maxima are constants for the
    # gradient (max + log sum exp(x - max) does not depend on max), so they never need a derivative; a shard whose
    # rows are all padding has max -inf and contributes 0.
    local_max_N = jax.lax.stop_gradient(local_max_N)
    global_max_N = jax.lax.stop_gradient(jax.lax.pmax(local_max_N, MODEL))
    global_max_N = jnp.where(jnp.isfinite(global_max_N), global_max_N, 0.0)
    scale_N = jnp.exp(local_max_N - global_max_N)
    lse_N = global_max_N + jnp.log(jax.lax.psum(local_sum_N * scale_N, MODEL))
    # The target's logit from the shard that owns its row.
    target_N = jnp.einsum("nd,nd->n", h_NxD, sharded_lookup(table_local_VxD, targets_N)).astype(jnp.float32)
    mask_N = targets_N > 0
    loss_sum = jax.lax.psum(jnp.where(mask_N, lse_N - target_N, 0.0).sum(), DATA)
    count = jax.lax.psum(mask_N.sum().astype(jnp.float32), DATA)
    return loss_sum / jnp.maximum(count, 1.0), count


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _local_stats_chunked(h_NxD, table_local_VxD, valid_V, chunk):
    """(max, sum exp(logit - max)) over this shard's valid rows, per query: the online scan of losses'."""
    (local_max_N, local_sum_N), _ = _stats_fwd(h_NxD, table_local_VxD, valid_V, chunk)
    return local_max_N, local_sum_N


def _stats_fwd(h_NxD, table_local_VxD, valid_V, chunk):
    table_CxKxD, valid_CxK = losses.split_rows(table_local_VxD, valid_V, chunk)
    lse_N = losses.chunked_lse(h_NxD, table_CxKxD, valid_CxK)
    # Reported as (max, sum) = (lse, 1): the same logsumexp, and all the caller uses is max + log(sum). The sum's
    # derivative, with the max held constant, is exp(logit - lse) per logit (the backward below).
    local_sum_N = jnp.where(jnp.isfinite(lse_N), 1.0, 0.0)
    return (lse_N, local_sum_N), (h_NxD, table_local_VxD, valid_V, lse_N)


def _stats_bwd(chunk, residuals, cotangents):
    h_NxD, table_local_VxD, valid_V, lse_N = residuals
    _, g_sum_N = cotangents  # the caller holds the max constant (stop_gradient): its cotangent is zero
    rows = table_local_VxD.shape[0]
    table_CxKxD, valid_CxK = losses.split_rows(table_local_VxD, valid_V, chunk)
    # local_sum = sum_k exp(logit_k - lse) (= 1 by construction): d/dlogit_k = softmax_k within the shard.
    safe_lse_N = jnp.where(jnp.isfinite(lse_N), lse_N, 0.0)
    g_N = jnp.where(jnp.isfinite(lse_N), g_sum_N, 0.0).astype(jnp.float32)

    def body(grad_h, chunk_in):
        table_KxD, valid_K = chunk_in
        logits_NxK = jnp.where(valid_K[None], (h_NxD @ table_KxD.T).astype(jnp.float32), -jnp.inf)
        dlogits_NxK = jnp.exp(logits_NxK - safe_lse_N[:, None]) * g_N[:, None]
        grad_h = grad_h + dlogits_NxK @ table_KxD.astype(jnp.float32)
        return grad_h, dlogits_NxK.T @ h_NxD.astype(jnp.float32)

    grad_h, grad_CxKxD = jax.lax.scan(body, jnp.zeros_like(h_NxD, jnp.float32), (table_CxKxD, valid_CxK))
    grad_table = grad_CxKxD.reshape(-1, table_local_VxD.shape[1])[:rows]
    return grad_h.astype(h_NxD.dtype), grad_table.astype(table_local_VxD.dtype), None


_local_stats_chunked.defvjp(_stats_fwd, _stats_bwd)


# ---------------------------------------------------------------- sampled softmax


def sharded_sampled_softmax(
    query_NxD,
    table_VxD,
    positive_ids_N,
    positive_log_q_N,
    mesh,
    *,
    extra_ids_M=None,
    extra_log_q_M=None,
    in_batch: bool = True,
    temperature=1.0,
    logq_correction: bool = True,
    remove_accidental_hits: bool = True,
    weight_N=None,
):
    """`losses.sampled_softmax_loss` with the table row-sharded over "model" and the queries over "data".

    Candidates, shared by every query: the global batch's positives (all-gathered over "data", in row order) when
    `in_batch`, followed by `extra_ids_M` (e.g. `sampling.uniform`; replicated). A candidate's log Q is the one its
    positive carries (in-batch: `sampling.in_batch` gives log n + log p(x) with n the global batch) or
    `extra_log_q_M`. Each "model" shard scores its slice of the data shard's queries against all M candidates
    (every shard scores them all if N / data does not divide by the "model" size).

    Args:
      query_NxD: queries, P("data", None).
      table_VxD: item table, P("model", None).
      positive_ids_N, positive_log_q_N: positives and their log Q, P("data"); id 0 is padding.
      mesh: Mesh with axes ("data", "model").
      extra_ids_M, extra_log_q_M: further candidates (replicated), or None.
      temperature, logq_correction, remove_accidental_hits, weight_N: as in `sampled_softmax_loss`.
    Returns:
      (loss, aux): the global weighted mean, aux["count"] (real examples), aux["normaliser"], aux["accidental_hits"]
      (per real example) and aux["num_candidates"], all replicated.
    """
    _check(mesh, table_VxD, query_NxD.shape[0])
    if not in_batch and extra_ids_M is None:
        raise ValueError("sharded_sampled_softmax: no candidates (in_batch=False and no extra_ids_M)")
    weight_N = jnp.ones(positive_ids_N.shape, jnp.float32) if weight_N is None else weight_N
    has_extra = extra_ids_M is not None
    extras = (extra_ids_M, extra_log_q_M) if has_extra else ()
    body = functools.partial(
        _sampled_body,
        in_batch=in_batch,
        has_extra=has_extra,
        logq_correction=logq_correction,
        remove_accidental_hits=remove_accidental_hits,
    )
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(DATA, None), P(MODEL, None), P(DATA), P(DATA), P(DATA), P()) + (P(), P()) * has_extra,
        out_specs=(P(), {"count": P(), "normaliser": P(), "accidental_hits": P(), "num_candidates": P()}),
        check_vma=True,
    )
    return fn(query_NxD, table_VxD, positive_ids_N, positive_log_q_N, weight_N, jnp.asarray(temperature), *extras)


def _sampled_body(query_NxD, table_local_VxD, pos_ids_N, pos_log_q_N, weight_N, temperature, *extras, **flags):
    positive_NxD = sharded_lookup(table_local_VxD, pos_ids_N)
    ids, log_q, emb = [], [], []
    if flags["in_batch"]:
        # Every data shard's positives become candidates for every query (their rows were looked up already).
        ids.append(jax.lax.all_gather(pos_ids_N.astype(jnp.int32), DATA, tiled=True))
        log_q.append(jax.lax.all_gather(pos_log_q_N.astype(jnp.float32), DATA, tiled=True))
        emb.append(jax.lax.all_gather(positive_NxD, DATA, tiled=True))
    if flags["has_extra"]:
        extra_ids_M, extra_log_q_M = extras
        ids.append(extra_ids_M.astype(jnp.int32))
        log_q.append(extra_log_q_M.astype(jnp.float32))
        emb.append(sharded_lookup(table_local_VxD, extra_ids_M))
    ids_M, log_q_M, cand_MxD = (jnp.concatenate(x) if len(x) > 1 else x[0] for x in (ids, log_q, emb))
    # The queries are replicated over "model": each "model" shard takes its slice of them (when they divide), so the
    # N x M logits are split over every device instead of being computed S times.
    rows, shards = query_NxD.shape[0], jax.lax.axis_size(MODEL)
    axes = (DATA, MODEL) if rows % shards == 0 else (DATA,)
    per_query = (query_NxD, positive_NxD, pos_ids_N, pos_log_q_N, weight_N)
    if len(axes) == 2:
        start = jax.lax.axis_index(MODEL) * (rows // shards)
        per_query = [jax.lax.dynamic_slice_in_dim(x, start, rows // shards) for x in per_query]
    query_nxD, positive_nxD, pos_ids_n, pos_log_q_n, weight_n = per_query
    loss, aux = losses.sampled_softmax_loss(
        query_nxD,
        positive_nxD,
        pos_ids_n,
        pos_log_q_n,
        cand_MxD,
        ids_M,
        log_q_M,
        temperature,
        logq_correction=flags["logq_correction"],
        remove_accidental_hits=flags["remove_accidental_hits"],
        weight_N=weight_n,
    )
    normaliser = jax.lax.psum(aux["normaliser"], axes)
    count = jax.lax.psum(aux["count"], axes)
    hits = jax.lax.psum(aux["accidental_hits"] * aux["count"], axes)
    out = {
        "count": count,
        "normaliser": normaliser,
        "accidental_hits": hits / jnp.maximum(count, 1.0),
        "num_candidates": jnp.asarray(ids_M.shape[0], jnp.float32),
    }
    return jax.lax.psum(loss * aux["normaliser"], axes) / jnp.maximum(normaliser, 1e-30), out
