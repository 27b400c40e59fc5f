"""Top-K over a catalogue: exact (`jax.lax.top_k`) or approximate (`jax.lax.approx_max_k`), optionally over an item
table row-sharded on mesh axis "model".

`approx_max_k` is approximate only on TPU; on CPU and GPU XLA lowers it to an exact sort and slice (its recall is 1
there), so `approx=True` buys speed on TPU only.

Legend: B users, D hidden, V table rows (padded), H history length, K results, S "model" shards.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"


def top_k_scores(
    user_BxD,
    table_VxD,
    k: int,
    *,
    num_items: int,
    exclude_BxH=None,
    approx: bool = False,
    mesh=None,
    recall_target: float = 0.95,
):
    """The K best items per user by inner product, padding rows and each user's excluded ids never among them.

    Args:
      user_BxD: user embeddings (P("data", None) with a mesh).
      table_VxD: item table; rows 0 and > num_items are padding (P("model", None) with a mesh).
      k: results per user, at most V.
      num_items: real items (ids 1..num_items).
      exclude_BxH: ids never returned for that user (e.g. the history); 0 entries are padding.
      approx: `jax.lax.approx_max_k` (per shard, with a mesh) instead of `jax.lax.top_k`.
      mesh: a Mesh with axes ("data", "model"): each "model" shard takes the top K of its rows (global id = local id
        + the shard's offset), then the shards' S x K candidates are all-gathered over "model" and merged by an
        exact top K. Without a mesh, one top K over B x V scores (which jit may partition by itself).
      recall_target: passed to `approx_max_k`.
    Returns:
      (scores_BxK float32, ids_BxK int32), best first; equal scores in increasing id order (exact path, with or
      without a mesh: `lax.top_k` keeps the lower index first, and the shards are merged in row order). If fewer
      than K items remain for a user, the rest are score -inf with id -1.
    """
    rows = table_VxD.shape[0]
    if not 0 < k <= rows:
        raise ValueError(f"top_k_scores: k={k} must be in 1..{rows} (table rows)")
    if exclude_BxH is None:
        exclude_BxH = jnp.zeros((user_BxD.shape[0], 1), jnp.int32)
    if mesh is None:
        scores_BxK, ids_BxK = _local_top_k(user_BxD, table_VxD, exclude_BxH, 0, k, num_items, approx, recall_target)
    else:
        shards = mesh.shape[MODEL]
        if rows % shards or user_BxD.shape[0] % mesh.shape[DATA]:
            raise ValueError(
                f"top_k_scores: table rows {rows} must divide by {shards} 'model' shards and users "
                f"{user_BxD.shape[0]} by {mesh.shape[DATA]} 'data' shards"
            )
        body = functools.partial(_sharded_body, k=k, num_items=num_items, approx=approx, recall_target=recall_target)
        scores_BxK, ids_BxK = jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(DATA, None), P(MODEL, None), P(DATA, None)),
            out_specs=(P(DATA, None), P(DATA, None)),
            # all_gather's result counts as varying over "model" for the checker, though every shard merges the
            # same candidates; nothing here is differentiated, so the check has nothing else to guard.
            check_vma=False,
        )(user_BxD, table_VxD, exclude_BxH)
    return scores_BxK, jnp.where(jnp.isfinite(scores_BxK), ids_BxK, -1)


def _local_top_k(user_BxD, table_VxD, exclude_BxH, offset, k, num_items, approx, recall_target):
    """Top K of one (shard of the) table whose first row has global id `offset`; returns global ids."""
    rows = table_VxD.shape[0]
    scores_BxV = (user_BxD @ table_VxD.T).astype(jnp.float32)
    ids_V = offset + jnp.arange(rows)
    valid_V = (ids_V > 0) & (ids_V <= num_items)  # losses.real_item_rows, from a shard's offset
    scores_BxV = jnp.where(valid_V[None], scores_BxV, -jnp.inf)
    # Excluded ids: those in this shard's rows are set to -inf; others (and id 0) fall out of range and are dropped.
    local_BxH = exclude_BxH - offset
    local_BxH = jnp.where((exclude_BxH > 0) & (local_BxH >= 0) & (local_BxH < rows), local_BxH, rows)
    batch_Bx1 = jnp.arange(scores_BxV.shape[0])[:, None]
    scores_BxV = scores_BxV.at[batch_Bx1, local_BxH].set(-jnp.inf, mode="drop")
    if approx:
        scores_BxK, local_ids_BxK = jax.lax.approx_max_k(scores_BxV, k, recall_target=recall_target)
    else:
        scores_BxK, local_ids_BxK = jax.lax.top_k(scores_BxV, k)
    return scores_BxK, (local_ids_BxK + offset).astype(jnp.int32)


def _sharded_body(user_BxD, table_local_VxD, exclude_BxH, *, k, num_items, approx, recall_target):
    rows = table_local_VxD.shape[0]
    offset = jax.lax.axis_index(MODEL) * rows
    local_k = min(k, rows)
    scores_Bxk, ids_Bxk = _local_top_k(
        user_BxD, table_local_VxD, exclude_BxH, offset, local_k, num_items, approx, recall_target
    )
    # Merge: the global top K is within the union of every shard's top K.
    scores_BxSk = jax.lax.all_gather(scores_Bxk, MODEL, axis=1, tiled=True)
    ids_BxSk = jax.lax.all_gather(ids_Bxk, MODEL, axis=1, tiled=True)
    scores_BxK, pick_BxK = jax.lax.top_k(scores_BxSk, k)
    return scores_BxK, jnp.take_along_axis(ids_BxSk, pick_BxK, axis=1)
