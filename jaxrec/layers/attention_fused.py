"""Fused attention kernels behind `jaxrec.layers.attention`: cuDNN, JAX's Pallas flash attention, jaxrec's
padded Pallas kernel.

Each adapter converts the dispatcher's call (BxLxHxD tensors, a boolean mask) to what its kernel takes: a head dim
padded to a multiple of 8, left padding rotated to cuDNN's right padding, sent as Pallas segment ids, or as
per-row lengths. `kernel_supports` says whether a kernel can serve a call (backend, dtype, head dim, bias,
dropout) and why not. The dispatcher imports this module, never the reverse: use `jaxrec.layers.attention`,
which names and documents every implementation.

Legend: B batch, L query length, S key length, H heads, D head dim. Masks are boolean, True = may attend.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp

from jaxrec.layers.attention_reference import reference_attention


class UnsupportedAttention(ValueError, NotImplementedError):
    """An implementation cannot serve this call (backend, dtype, bias, dropout); the message says why."""


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def kernel_supports(
    name: str,
    backend: str | None = None,
    dtype=jnp.float32,
    head_dim: int = 64,
    has_bias: bool = False,
    has_dropout: bool = False,
    interpret: bool = False,
) -> tuple[bool, str]:
    """Whether a kernel of this module can serve a call, and if not, a sentence saying why.

    The backend, dtype, head dim, bias and dropout each kernel takes: `jaxrec.layers.attention.supports` asks here
    for every implementation but the portable ones. "xla" is answered too: `cudnn_attention(dpa_implementation=
    "xla")` runs the cuDNN conversion through it. Arguments and result as `supports`.
    """
    backend = backend or jax.default_backend()
    dtype = jnp.dtype(dtype)
    if has_dropout:
        return False, f"{name} attention has no attention-weight dropout; use 'auto' or 'reference'"
    if name == "xla":
        return True, ""
    if name.startswith("cudnn"):
        if backend != "gpu":
            return False, f"{name}: cuDNN fused attention needs an NVIDIA GPU, and the backend is {backend}"
        if dtype.name not in ("bfloat16", "float16"):
            return False, f"{name}: cuDNN fused attention takes bfloat16 or float16 inputs, not {dtype.name}"
        if _round_up(head_dim, 8) > 256:
            return False, f"{name}: head dim {head_dim} exceeds cuDNN's 256"
        if has_bias and name != "cudnn":
            return False, f"{name} takes no additive bias (its masks are cuDNN's own); 'cudnn' takes one"
        return True, ""
    if has_bias:
        return False, f"{name}: the Pallas kernel takes no additive bias; use 'cudnn', 'xla' or 'reference'"
    if backend == "cpu" and not interpret:
        return False, (
            f"{name}: a Pallas GPU/TPU kernel; on cpu it runs only in the Pallas interpreter "
            "(interpret=True: correct but slow, for tests)"
        )
    if name.startswith("pallas_flash"):
        module = {"tpu": "jax.experimental.pallas.ops.tpu.flash_attention"}.get(
            backend, "jax.experimental.pallas.ops.gpu.attention"
        )
        if backend not in ("gpu", "tpu", "cpu"):
            return False, f"{name}: JAX ships no Pallas flash attention for backend {backend}"
        if not _module_exists(module):
            return False, f"{name}: this jax ({jax.__version__}) has no {module}"
        return True, ""
    if not _module_exists("jaxrec.kernels.padded_attention"):
        return False, f"{name}: jaxrec.kernels.padded_attention is not importable (the kernel is not there)"
    return True, ""


def _require(name, q_BxLxHxD, bias, dropout_rate, dropout_rng, interpret=False):
    ok, why = kernel_supports(
        name,
        jax.default_backend(),
        q_BxLxHxD.dtype,
        q_BxLxHxD.shape[-1],
        has_bias=bias is not None,
        has_dropout=dropout_rate > 0.0 and dropout_rng is not None,
        interpret=interpret,
    )
    if not ok:
        raise UnsupportedAttention(why)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _lengths_from_mask(mask_BxLxS, q_BxLxHxD, k_BxSxHxD):
    """Valid (non-padding) keys per row, trusting a left-padding mask: the last query row sees them all."""
    if mask_BxLxS is None:
        return jnp.full(q_BxLxHxD.shape[:1], k_BxSxHxD.shape[1], jnp.int32)
    return mask_BxLxS[:, -1].sum(-1).astype(jnp.int32)


def _zero_padding_rows(out_BxLxHxD, lengths_B):
    """Zeros at the left-padding query rows (the first L - length of each row)."""
    length = out_BxLxHxD.shape[1]
    valid_BxL = jnp.arange(length)[None] >= (length - lengths_B)[:, None]
    return jnp.where(valid_BxL[:, :, None, None], out_BxLxHxD, 0).astype(out_BxLxHxD.dtype)


def _rotate(x_BxLxHxD, shift_B):
    """out[b, i] = x[b, (i + shift[b]) mod L]: with shift = padding, left padding becomes right padding."""
    length = x_BxLxHxD.shape[1]
    index_BxL = (jnp.arange(length)[None] + shift_B[:, None]) % length
    return jnp.take_along_axis(x_BxLxHxD, index_BxL[:, :, None, None], axis=1)


def _pad_head_dim(x_BxLxHxD, multiple: int = 8):
    extra = _round_up(x_BxLxHxD.shape[-1], multiple) - x_BxLxHxD.shape[-1]
    return jnp.pad(x_BxLxHxD, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else x_BxLxHxD


def cudnn_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
    dpa_implementation: str = "cudnn",
):
    """cuDNN fused attention (`jax.nn.dot_product_attention(implementation="cudnn")`) for any mask.

    Converted for cuDNN: the head dim is zero-padded to a multiple of 8 (zeros change no logit; the
    extra output columns are sliced off; the scale stays 1/sqrt(true head dim)); the boolean mask goes
    to `mask`, which jax turns into cuDNN's additive bias of large negatives (a Bx1xLxS tensor, and no
    skipping of masked tiles: `cudnn_padded_causal` uses cuDNN's own masks instead); a bias is added
    to it. Rows without a visible key are zeroed afterwards. `dpa_implementation="xla"` runs the same
    conversion through XLA (tests on CPU).
    """
    _require("cudnn" if dpa_implementation == "cudnn" else "xla", q_BxLxHxD, bias_BxHxLxS, dropout_rate, dropout_rng)
    head_dim = q_BxLxHxD.shape[-1]
    q, k, v = (_pad_head_dim(t) for t in (q_BxLxHxD, k_BxSxHxD, v_BxSxHxD))
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=bias_BxHxLxS,
        mask=None if mask_BxLxS is None else mask_BxLxS[:, None],
        scale=head_dim**-0.5,
        implementation=dpa_implementation,
    )[..., :head_dim]
    if mask_BxLxS is not None:
        out = jnp.where(jnp.any(mask_BxLxS, axis=-1)[:, :, None, None], out, 0).astype(out.dtype)
    return out


def cudnn_padded_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
    causal: bool = False,
    dpa_implementation: str = "cudnn",
):
    """cuDNN fused attention with cuDNN's own padding (and causal) mask: no BxLxS tensor at all.

    Trusts the mask to be left padding (+ causal for `cudnn_padded_causal`) and reads only its last
    row's count of visible keys. Converted for cuDNN, whose sequence lengths mean right padding
    (valid positions first): each row is rotated left by its padding, so the valid items come first
    and keep their order (causality among them is unchanged); the lengths become
    `query_seq_lengths` = `key_value_seq_lengths`, causality `is_causal` (cuDNN's PADDING_CAUSAL
    mask, which skips the tiles above the diagonal); the head dim is zero-padded to a multiple of 8;
    the output is rotated back and its padding rows zeroed. A row of only padding is sent with length
    1 (cuDNN and empty sequences) and zeroed. Queries shorter than keys (last_only): the reference.
    """
    name = "cudnn_padded_causal" if causal else "cudnn_padded"
    _require(name if dpa_implementation == "cudnn" else "xla", q_BxLxHxD, bias_BxHxLxS, dropout_rate, dropout_rng)
    if q_BxLxHxD.shape[1] != k_BxSxHxD.shape[1]:
        return reference_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, mask_BxLxS=mask_BxLxS)
    length, head_dim = q_BxLxHxD.shape[1], q_BxLxHxD.shape[-1]
    lengths_B = _lengths_from_mask(mask_BxLxS, q_BxLxHxD, k_BxSxHxD)
    shift_B = length - lengths_B
    q, k, v = (_pad_head_dim(_rotate(t, shift_B)) for t in (q_BxLxHxD, k_BxSxHxD, v_BxSxHxD))
    kernel_lengths_B = jnp.maximum(lengths_B, 1)
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=head_dim**-0.5,
        is_causal=causal,
        query_seq_lengths=kernel_lengths_B,
        key_value_seq_lengths=kernel_lengths_B,
        implementation=dpa_implementation,
    )[..., :head_dim]
    return _zero_padding_rows(_rotate(out, -shift_B), lengths_B)


def _flash_block(length: int) -> int:
    """Sequence tile of the Pallas GPU flash kernel: 128, or a power of two >= 16 for short sequences
    (the TPU kernel's default tiles are 128 whatever the length)."""
    return 128 if length > 64 else max(16, 1 << (length - 1).bit_length())


def pallas_flash_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
    causal: bool = False,
    interpret: bool | None = None,
):
    """JAX's shipped Pallas flash attention: `jax.experimental.pallas.ops.gpu.attention.mha` (Triton)
    on GPU, `jax.experimental.pallas.ops.tpu.flash_attention` on TPU; on CPU the GPU kernel in the
    Pallas interpreter (interpret=None means: interpret on CPU only).

    Trusts the mask to be left padding (+ causal for `pallas_flash_causal`). Padding is expressed as
    segment ids (1 = item, 0 = padding: padding queries see only padding keys, so no row is empty
    inside the kernel, and those rows are zeroed afterwards). The kernels tile the sequence, so it is
    left-padded further to a multiple of the tile (more padding: same result). Queries shorter than
    keys (last_only): the reference.
    """
    name = "pallas_flash_causal" if causal else "pallas_flash"
    backend = jax.default_backend()
    interpret = backend == "cpu" if interpret is None else interpret
    _require(name, q_BxLxHxD, bias_BxHxLxS, dropout_rate, dropout_rng, interpret)
    if q_BxLxHxD.shape[1] != k_BxSxHxD.shape[1]:
        return reference_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, mask_BxLxS=mask_BxLxS)
    length, head_dim = q_BxLxHxD.shape[1], q_BxLxHxD.shape[-1]
    lengths_B = _lengths_from_mask(mask_BxLxS, q_BxLxHxD, k_BxSxHxD)
    tiled = _round_up(length, 128 if backend == "tpu" and not interpret else _flash_block(length))
    extra = tiled - length
    q, k, v = (jnp.pad(t, ((0, 0), (extra, 0), (0, 0), (0, 0))) for t in (q_BxLxHxD, k_BxSxHxD, v_BxSxHxD))
    segments_BxT = (jnp.arange(tiled)[None] >= (tiled - lengths_B)[:, None]).astype(jnp.int32)
    if backend == "tpu" and not interpret:
        from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

        heads_first = lambda t: t.transpose(0, 2, 1, 3)  # noqa: E731  (the TPU kernel is BxHxLxD)
        out = heads_first(
            tpu_flash.flash_attention(
                heads_first(q),
                heads_first(k),
                heads_first(v),
                segment_ids=tpu_flash.SegmentIds(q=segments_BxT, kv=segments_BxT),
                causal=causal,
                sm_scale=head_dim**-0.5,
            )
        )
    else:
        from jax.experimental.pallas.ops.gpu import attention as gpu_flash

        out = gpu_flash.mha(q, k, v, segments_BxT, sm_scale=head_dim**-0.5, causal=causal, interpret=interpret)
    return _zero_padding_rows(out[:, extra:], lengths_B)


def padded_attention(
    q_BxLxHxD,
    k_BxSxHxD,
    v_BxSxHxD,
    *,
    mask_BxLxS=None,
    bias_BxHxLxS=None,
    dropout_rate=0.0,
    dropout_rng=None,
    causal: bool = False,
    block_q: int = 0,
    block_k: int = 0,
    interpret: bool | None = None,
):
    """`jaxrec.kernels.padded_attention.pallas_padded_attention`: a Pallas kernel that skips padding tiles.

    Trusts the mask to be left padding (+ causal for `padded_causal`); lengths_B is the last query
    row's count of visible keys. Padding query rows are zeroed here whatever the kernel writes there.
    Queries shorter than keys (last_only): the reference. interpret=None lets the kernel choose
    (its interpreter on CPU).
    """
    name = "padded_causal" if causal else "padded"
    _require(
        name,
        q_BxLxHxD,
        bias_BxHxLxS,
        dropout_rate,
        dropout_rng,
        jax.default_backend() == "cpu" if interpret is None else interpret,
    )
    if q_BxLxHxD.shape[1] != k_BxSxHxD.shape[1]:
        return reference_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, mask_BxLxS=mask_BxLxS)
    from jaxrec.kernels.padded_attention import pallas_padded_attention

    lengths_B = _lengths_from_mask(mask_BxLxS, q_BxLxHxD, k_BxSxHxD)
    out = pallas_padded_attention(
        q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, lengths_B, causal=causal, block_q=block_q, block_k=block_k, interpret=interpret
    )
    return _zero_padding_rows(out, lengths_B)
