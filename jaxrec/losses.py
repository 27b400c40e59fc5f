"""Training losses: pure functions, float32 accumulation.

Legend: B batch, L length, D hidden, V item-table rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


LOSSES = {"bce": bce_sampled}
