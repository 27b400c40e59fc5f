"""Reference scaled dot-product attention: einsum + softmax in float32.

The obviously-correct baseline that every implementation of `jaxrec.layers.attention` is tested against, the
fallback of the fused kernels (`attention_fused`) when queries and keys differ in length, and, with
`causal_blocked`, the only implementation with dropout on the attention weights. A module of its own so that both
the dispatcher and the fused kernels can import it.

Legend: B batch, L query length, S key length, H heads, D head dim. Masks are boolean, True = may attend; query
rows with no key to attend to output exact zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrec.layers.dropout import dropout as hash_dropout

_NEG_INF = -1e30  # finite, so fully masked rows stay NaN-free before we zero them


def reference_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
):
    """Plain einsum-softmax attention; the obviously-correct baseline every fast path is tested against.

    Also the only implementation that supports dropout on the attention weights (SASRec's),
    because fused kernels do not expose the weights.
    """
    scale = q_BxLxHxD.shape[-1] ** -0.5
    # Heads next to batch first: batched matmuls over (B, H) run ~2x faster on CPU than "blhd,bshd".
    q_BxHxLxD, k_BxHxSxD, v_BxHxSxD = (t.transpose(0, 2, 1, 3) for t in (q_BxLxHxD, k_BxSxHxD, v_BxSxHxD))
    logits_BxHxLxS = jnp.einsum("bhld,bhsd->bhls", q_BxHxLxD, k_BxHxSxD).astype(jnp.float32) * scale
    if bias_BxHxLxS is not None:
        logits_BxHxLxS = logits_BxHxLxS + bias_BxHxLxS.astype(jnp.float32)
    if mask_BxLxS is not None:
        logits_BxHxLxS = jnp.where(mask_BxLxS[:, None], logits_BxHxLxS, _NEG_INF)
    weights_BxHxLxS = jax.nn.softmax(logits_BxHxLxS, axis=-1)
    if mask_BxLxS is not None:
        # Rows with no valid key got a uniform distribution over masked keys: zero them.
        weights_BxHxLxS = jnp.where(mask_BxLxS[:, None], weights_BxHxLxS, 0.0)
    if dropout_rate > 0.0 and dropout_rng is not None:
        weights_BxHxLxS = hash_dropout(weights_BxHxLxS, dropout_rate, dropout_rng)
    out_BxHxLxD = jnp.einsum("bhls,bhsd->bhld", weights_BxHxLxS.astype(v_BxHxSxD.dtype), v_BxHxSxD)
    return out_BxHxLxD.transpose(0, 2, 1, 3)
