"""Pluggable scaled dot-product attention.

Every model calls `attention(...)`; the implementation is chosen by name, so kernels
(cuDNN, Pallas) and variants (TiSASRec's time-interval bias) slot in without touching models.

Legend: B batch, L query length, S key length, H heads, D head dim.
Masks are boolean, True = may attend. Query rows with no key to attend to (left padding)
output exact zeros, never NaN, in every implementation.

Implementations (IMPLEMENTATIONS; `supports()` says whether one can serve a case, and why not):
  auto                 xla, or reference when attention-weight dropout is active
  reference            einsum + softmax; the only one with attention-weight dropout besides causal_blocked
  xla                  jax.nn.dot_product_attention(implementation="xla")
  causal_blocked       reference over query blocks, skipping key blocks above the diagonal (trusts: causal)
  cudnn                cuDNN fused attention, any mask (sent as cuDNN's additive bias); NVIDIA GPU, bf16/fp16
  cudnn_padded         cuDNN with its own padding mask          (trusts: left padding)
  cudnn_padded_causal  cuDNN with its own padding+causal mask   (trusts: left padding + causal)
  pallas_flash         JAX's Pallas flash attention (GPU Triton `mha`, TPU `flash_attention`), padding as
                       segment ids                               (trusts: left padding)
  pallas_flash_causal  the same, causal                          (trusts: left padding + causal)
  padded               jaxrec.kernels.padded_attention           (trusts: left padding)
  padded_causal        the same, causal                          (trusts: left padding + causal)
"Trusts" means the implementation reads only the number of visible keys of the last query row,
mask_BxLxS[:, -1].sum(-1), and assumes the mask is what it promises, as causal_blocked assumes
causality. The trusting non-causal ones output zeros at padding query rows (where the reference
averages the valid keys; no model reads those rows). When queries and keys differ in length
(SASRec's `last_only` inference) the trusting kernels fall back to the reference.

This module is the dispatcher and the portable implementations (auto, xla, causal_blocked); the reference lives in
`attention_reference` and the fused kernels' adapters (cudnn*, pallas_flash*, padded*) with their `kernel_supports`
in `attention_fused`, which never imports this module. Every implementation is importable from here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrec.layers.attention_fused import (
    UnsupportedAttention,
    cudnn_attention,
    cudnn_padded_attention,
    kernel_supports,
    padded_attention,
    pallas_flash_attention,
)
from jaxrec.layers.attention_reference import reference_attention

__all__ = [
    "CAUSAL_ONLY",
    "IMPLEMENTATIONS",
    "UnsupportedAttention",
    "attention",
    "auto_attention",
    "causal_blocked_attention",
    "causal_padding_mask",
    "cudnn_attention",
    "cudnn_padded_attention",
    "padded_attention",
    "pallas_flash_attention",
    "reference_attention",
    "supports",
    "xla_attention",
]


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


def supports(
    implementation: str,
    backend: str | None = None,
    dtype=jnp.float32,
    head_dim: int = 64,
    has_bias: bool = False,
    has_dropout: bool = False,
    interpret: bool = False,
) -> tuple[bool, str]:
    """Whether `implementation` can serve a call, and if not, a sentence saying why.

    Args:
      backend: "cpu" | "gpu" | "tpu"; None = jax.default_backend().
      has_dropout: attention-weight dropout is active (training with a dropout rng).
      interpret: Pallas kernels may run in the Pallas interpreter, the only way they run on CPU
        (correct and slow: for tests, never a speed figure).
    Returns:
      (ok, reason); reason is "" when ok.
    """
    if implementation not in IMPLEMENTATIONS:
        known = ", ".join(IMPLEMENTATIONS)
        return False, f"unknown attention implementation {implementation!r}; known: {known}"
    if implementation in ("auto", "reference", "causal_blocked"):
        return True, ""
    return kernel_supports(implementation, backend, dtype, head_dim, has_bias, has_dropout, interpret)


IMPLEMENTATIONS: dict[str, Callable] = {
    "auto": auto_attention,
    "reference": reference_attention,
    "xla": xla_attention,
    "causal_blocked": causal_blocked_attention,
    "cudnn": cudnn_attention,
    "cudnn_padded": cudnn_padded_attention,
    "cudnn_padded_causal": functools.partial(cudnn_padded_attention, causal=True),
    "pallas_flash": pallas_flash_attention,
    "pallas_flash_causal": functools.partial(pallas_flash_attention, causal=True),
    "padded": padded_attention,
    "padded_causal": functools.partial(padded_attention, causal=True),
}
CAUSAL_ONLY = ("causal_blocked", "cudnn_padded_causal", "pallas_flash_causal", "padded_causal")  # trust causality


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
