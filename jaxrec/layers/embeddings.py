"""Embedding tables: their initialisers, the item table's padded size, position rows, and logical axes.

Legend: B batch, L window length, D hidden, P rows of the position table.

Logical axis names of the tables (`jaxrec.engine.mesh.logical_rules` maps them to mesh axes): a model
creates a table with `nn.with_logical_partitioning(init, ITEM_AXES)` and so on, so `model.init` returns
it boxed with its names (`flax.linen.LogicallyPartitioned`; `nn.unbox` gives the plain arrays). Only
"item" is split over devices (vocabulary parallelism); the others are replicated.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.layers.transformer import dense_init, small_normal_init

ITEM_AXES = ("item", "embed")  # item tables, V x D: the input and output embeddings
ITEM_BIAS_AXES = ("item",)  # per-item scalars, V: output biases, wide weights
POSITION_AXES = ("seq", "embed")  # position tables, max_len x D
USER_AXES = ("user", "embed")  # user tables, (users + 1) x D

embed_init = nn.initializers.xavier_uniform()
# gSASRec-pytorch's tables (torch's nn.Embedding default), used unscaled.
torch_embed_init = nn.initializers.normal(stddev=1.0)


def initializers(embedding_init: str):
    """(table init, dense-kernel init) for `model.embedding_init` (xavier | normal | small_normal)."""
    if embedding_init == "small_normal":  # Klenitskiy & Vasilev's SASRec, BERT's initializer_range
        return small_normal_init, small_normal_init
    return (torch_embed_init if embedding_init == "normal" else embed_init), dense_init


def vocab_rows(num_items: int, multiple: int = 128) -> int:
    """Rows of the item table: ids 0..num_items, padded up to `multiple` (padding rows never score)."""
    return -(-(num_items + 1) // multiple) * multiple


def position_rows(valid_BxL, max_len: int, mode: str = "from_end"):
    """Row of the position table for each slot of a left-padded window (1xL or BxL).

    "from_end": the newest item takes row max_len - 1 and earlier ones count back (SASRec's and
    BERT4Rec's code, whose windows are left padded). "from_start": a history's first item takes row 0
    (Klenitskiy & Vasilev's right-padded batches); padding slots take row 0 too, and are masked.
    Either way a slot's row does not depend on how much padding precedes the history.
    """
    length = valid_BxL.shape[1]
    if mode == "from_end":
        return jnp.arange(max_len - length, max_len)[None]
    return jnp.maximum(jnp.cumsum(valid_BxL, axis=1, dtype=jnp.int32) - 1, 0)


def position_embeddings(table_PxD, valid_BxL, mode: str = "from_end"):
    """The position table's rows for each slot (1xLxD or BxLxD), as `position_rows` numbers them.

    "from_end" is a static slice of the table (no gather in the step, nor a scatter in its gradient).
    """
    if mode == "from_end":
        return table_PxD[table_PxD.shape[0] - valid_BxL.shape[1] :][None]
    return table_PxD[position_rows(valid_BxL, table_PxD.shape[0], mode)]
