"""Pluggable scaled dot-product attention.

Every model calls `attention(...)`; the implementation is chosen by name, so kernels
(cuDNN, Pallas) and variants (TiSASRec's time-interval bias) slot in without touching models.

Legend: B batch, L query length, S key length, H heads, D head dim.
Masks are boolean, True = may attend. Query rows with no key to attend to (left padding)
output exact zeros, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable

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


def xla_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
):
    """`jax.nn.dot_product_attention` (XLA implementation); no attention-weight dropout."""
    if dropout_rate > 0.0 and dropout_rng is not None:
        raise ValueError("xla attention has no attention-weight dropout; use 'auto' or 'reference'")
    mask = None if mask_BxLxS is None else mask_BxLxS[:, None]
    out = jax.nn.dot_product_attention(
        q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, bias=bias_BxHxLxS, mask=mask, implementation="xla"
    )
    if mask_BxLxS is not None:
        has_key_BxL = jnp.any(mask_BxLxS, axis=-1)
        out = jnp.where(has_key_BxL[:, :, None, None], out, 0.0)
    return out


def causal_blocked_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
    num_blocks: int = 4,
):
    """Causal self-attention that skips key blocks above the diagonal.

    Query block j only multiplies keys [0, end of block j): with 4 blocks the matmuls and the
    softmax cover 10/16 of the LxL square. Exact (same result as the reference) as long as the
    mask is causal, which the caller promises by choosing this implementation.
    """
    length = q_BxLxHxD.shape[1]
    if length != k_BxSxHxD.shape[1]:  # not square (e.g. only the last query row): nothing to skip
        return reference_attention(
            q_BxLxHxD,
            k_BxSxHxD,
            v_BxSxHxD,
            mask_BxLxS=mask_BxLxS,
            bias_BxHxLxS=bias_BxHxLxS,
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
        )
    bounds = [round(length * j / num_blocks) for j in range(num_blocks + 1)]
    outs = []
    for j in range(num_blocks):
        lo, hi = bounds[j], bounds[j + 1]
        if hi == lo:
            continue
        outs.append(
            reference_attention(
                q_BxLxHxD[:, lo:hi],
                k_BxSxHxD[:, :hi],
                v_BxSxHxD[:, :hi],
                mask_BxLxS=None if mask_BxLxS is None else mask_BxLxS[:, lo:hi, :hi],
                bias_BxHxLxS=None if bias_BxHxLxS is None else bias_BxHxLxS[:, :, lo:hi, :hi],
                dropout_rate=dropout_rate,
                dropout_rng=None if dropout_rng is None else jax.random.fold_in(dropout_rng, j),
            )
        )
    return jnp.concatenate(outs, axis=1)


def auto_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, *, dropout_rate=0.0, dropout_rng=None, **kwargs):
    """`jax.nn.dot_product_attention` unless attention-weight dropout is active (training)."""
    if dropout_rate > 0.0 and dropout_rng is not None:
        return reference_attention(
            q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, dropout_rate=dropout_rate, dropout_rng=dropout_rng, **kwargs
        )
    return xla_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, **kwargs)


IMPLEMENTATIONS: dict[str, Callable] = {
    "auto": auto_attention,
    "reference": reference_attention,
    "xla": xla_attention,
    "causal_blocked": causal_blocked_attention,
}


def attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, *, implementation: str = "auto", **kwargs):
    """Scaled dot-product attention by implementation name (see IMPLEMENTATIONS)."""
    try:
        fn = IMPLEMENTATIONS[implementation]
    except KeyError:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; known: {', '.join(IMPLEMENTATIONS)}"
        ) from None
    return fn(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, **kwargs)


def causal_padding_mask(valid_BxL, causal: bool = True):
    """Boolean BxLxL mask: key s visible to query l when s is not padding (and s <= l if causal)."""
    length = valid_BxL.shape[1]
    mask_BxLxL = jnp.broadcast_to(valid_BxL[:, None, :], valid_BxL.shape[:1] + (length, length))
    if causal:
        mask_BxLxL = mask_BxLxL & jnp.tril(jnp.ones((length, length), bool))[None]
    return mask_BxLxL
