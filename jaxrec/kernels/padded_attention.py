"""Blocked (flash-style) self-attention for left-padded histories, skipping padding blocks.

Sequence b is left-padded: its valid positions are the last `lengths_B[b]` of L. Keys at padding
are masked; query rows at padding, or with no visible key (length 0), output exact zeros.
causal=True: query l sees valid keys s <= l (SASRec); causal=False: every valid key (BERT4Rec).

The Pallas kernels visit exactly the (query block, key block) tiles that hold a visible pair:
for query block i the key blocks run from the first one holding a valid key to the diagonal
(causal) or the end, and a query block entirely inside the padding computes nothing. The
backward pass (dq kernel over query blocks, dk/dv kernel over key blocks) skips the same tiles.
Softmax statistics are float32 whatever the input dtype. Written for the Triton GPU lowering;
on CPU it runs in Pallas interpret mode (tests), which is correct but slow.

Legend: B batch, L sequence length (Lp after left padding to the blocks), H heads, D head dim
(Dp padded for Triton), Q / K rows in a query / key block.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# Finite, so rows with no visible key never produce inf - inf = NaN inside the kernel.
_MASK = -0.7 * float(np.finfo(np.float32).max)
# Explicit Triton parameters: without them jax >= 0.10 lowers pallas_call to Mosaic GPU on CUDA.
_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)


def reference_padded_attention(q_BxLxHxD, k_BxLxHxD, v_BxLxHxD, lengths_B, *, causal: bool = True):
    """Plain jnp einsum-softmax: the obviously-correct reference. Returns BxLxHxD in q's dtype."""
    length = q_BxLxHxD.shape[1]
    valid_BxL = jnp.arange(length)[None, :] >= length - jnp.asarray(lengths_B)[:, None]
    visible_BxLxL = valid_BxL[:, :, None] & valid_BxL[:, None, :]
    if causal:
        visible_BxLxL = visible_BxLxL & jnp.tril(jnp.ones((length, length), bool))[None]
    logits_BxHxLxL = jnp.einsum("blhd,bshd->bhls", q_BxLxHxD, k_BxLxHxD, preferred_element_type=jnp.float32) * (
        q_BxLxHxD.shape[-1] ** -0.5
    )
    logits_BxHxLxL = jnp.where(visible_BxLxL[:, None], logits_BxHxLxL, _MASK)
    # Rows with no visible key would get a uniform distribution over masked keys: zero them.
    weights_BxHxLxL = jnp.where(visible_BxLxL[:, None], jax.nn.softmax(logits_BxHxLxL, axis=-1), 0.0)
    out_BxLxHxD = jnp.einsum(
        "bhls,bshd->blhd", weights_BxHxLxL, v_BxLxHxD.astype(jnp.float32), preferred_element_type=jnp.float32
    )
    return out_BxLxHxD.astype(q_BxLxHxD.dtype)


def skipped_fraction(lengths_B, L: int, block_q: int, block_k: int, causal: bool) -> float:
    """Fraction of the (query block, key block) tiles of the dense grid that the kernel skips.

    Counted on the grid the kernel runs (L left-padded to a multiple of both blocks), summed over
    the batch; heads all skip alike. Computed FLOPs = (1 - this) x dense FLOPs at that length.
    """
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"skipped_fraction needs explicit positive blocks, got {block_q=}, {block_k=}")
    padded = _round_up(L, math.lcm(block_q, block_k))
    first_Bx1 = padded - np.clip(np.asarray(lengths_B, np.int64), 0, L)[:, None]
    num_q, num_k = padded // block_q, padded // block_k
    end_of_q_block_1xN = (np.arange(num_q)[None, :] + 1) * block_q
    lo_BxN = np.broadcast_to(first_Bx1 // block_k, (first_Bx1.shape[0], num_q))
    hi_BxN = -(-end_of_q_block_1xN // block_k) if causal else np.full_like(end_of_q_block_1xN, num_k)
    hi_BxN = np.where(end_of_q_block_1xN > first_Bx1, hi_BxN, lo_BxN)
    visited = np.clip(hi_BxN - lo_BxN, 0, None).sum()
    return float(1.0 - visited / (first_Bx1.shape[0] * num_q * num_k))


def pallas_padded_attention(
    q_BxLxHxD,
    k_BxLxHxD,
    v_BxLxHxD,
    lengths_B,
    *,
    causal: bool = True,
    block_q: int = 0,
    block_k: int = 0,
    interpret: bool | None = None,
):
    """Flash attention over left-padded sequences that skips padding (and above-diagonal) tiles.

    Args:
      q_BxLxHxD, k_BxLxHxD, v_BxLxHxD: same shape and dtype (float32 or bfloat16).
      lengths_B: int, valid (rightmost) positions per sequence; clipped to [0, L].
      causal: query l sees keys s <= l; else every valid key.
      block_q, block_k: tile sizes, 0 = automatic. L is left-padded internally to a multiple of both.
      interpret: Pallas interpret mode; None = on when the default backend is CPU.

    Returns:
      BxLxHxD in q's dtype; rows at padding are exact zeros. Differentiable in q, k, v.
    """
    if not q_BxLxHxD.shape == k_BxLxHxD.shape == v_BxLxHxD.shape or q_BxLxHxD.ndim != 4:
        raise ValueError(
            f"q, k, v must share one BxLxHxD shape, got {q_BxLxHxD.shape}, {k_BxLxHxD.shape}, {v_BxLxHxD.shape}"
        )
    if not q_BxLxHxD.dtype == k_BxLxHxD.dtype == v_BxLxHxD.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q_BxLxHxD.dtype}, {k_BxLxHxD.dtype}, {v_BxLxHxD.dtype}")
    batch, length, _, head_dim = q_BxLxHxD.shape
    if jnp.shape(lengths_B) != (batch,):
        raise ValueError(f"lengths_B must have shape ({batch},), got {jnp.shape(lengths_B)}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    block_q = block_q or _auto_block(length, interpret)
    block_k = block_k or _auto_block(length, interpret)
    if not interpret:
        # Triton tiles must be powers of two, and tl.dot needs at least 16 along every dimension.
        for name, block in (("block_q", block_q), ("block_k", block_k)):
            if block < 16 or block & (block - 1):
                raise ValueError(f"on GPU {name} must be a power of two >= 16, got {block}")
    padded = _round_up(length, math.lcm(block_q, block_k))
    padded_dim = head_dim if interpret else max(16, pl.next_power_of_2(head_dim))
    # Left padding keeps "valid = last `length` positions"; zero features leave q.k and p.v unchanged.
    widths = ((0, 0), (padded - length, 0), (0, 0), (0, padded_dim - head_dim))
    q, k, v = (jnp.pad(t, widths) if widths != ((0, 0),) * 4 else t for t in (q_BxLxHxD, k_BxLxHxD, v_BxLxHxD))
    lengths = jnp.clip(jnp.asarray(lengths_B).astype(jnp.int32), 0, length)
    plan = _Plan(causal, block_q, block_k, head_dim**-0.5, interpret)
    return _attention(q, k, v, lengths, plan)[:, padded - length :, :, :head_dim]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static kernel configuration (hashable: a custom_vjp non-differentiable argument)."""

    causal: bool  # query l sees only keys s <= l
    block_q: int  # query rows per tile
    block_k: int  # key rows per tile
    scale: float  # softmax scale, D**-0.5 of the unpadded head dim
    interpret: bool  # Pallas interpret mode (CPU)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _auto_block(length: int, interpret: bool) -> int:
    if interpret:
        return min(length, 64)
    # 64 rather than 128: histories are short and a finer grid skips more of the padding (untuned).
    return min(64, max(16, pl.next_power_of_2(length)))


def _dot_nt(a_MxD, b_NxD):
    """a @ b.T with float32 accumulation (Triton transposes b in registers)."""
    return lax.dot_general(a_MxD, b_NxD, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a_MxN, b_MxD):
    """a.T @ b with float32 accumulation."""
    return lax.dot_general(a_MxN, b_MxD, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a_MxN, b_NxD):
    return lax.dot_general(a_MxN, b_NxD, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _visible(rows_Q, cols_K, first, causal: bool):
    """QxK bool: key col visible to query row (both at or after `first`, the first valid position)."""
    visible_QxK = (rows_Q[:, None] >= first) & (cols_K[None, :] >= first)
    if causal:
        visible_QxK = visible_QxK & (cols_K[None, :] <= rows_Q[:, None])
    return visible_QxK


def _key_block_range(q_block, first, padded: int, plan: _Plan):
    """Key blocks [lo, hi) holding a key visible to some row of query block `q_block`."""
    end = (q_block + 1) * plan.block_q  # one past the block's last row
    lo = lax.div(first, plan.block_k)
    hi = lax.div(end + plan.block_k - 1, plan.block_k) if plan.causal else padded // plan.block_k
    return lo, jnp.where(end > first, hi, lo)  # a block of padding rows sees nothing


def _query_block_range(k_block, first, padded: int, plan: _Plan):
    """Query blocks [lo, hi) holding a row that sees some key of key block `k_block`."""
    lowest_row = jnp.maximum(first, k_block * plan.block_k) if plan.causal else first
    lo = lax.div(lowest_row, plan.block_q)
    return lo, jnp.where((k_block + 1) * plan.block_k > first, padded // plan.block_q, lo)


def _fwd_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, plan: _Plan):
    padded, bq, bk = k_ref.shape[0], plan.block_q, plan.block_k
    q_block = pl.program_id(2)
    first = padded - len_ref[()]
    rows_Q = q_block * bq + jnp.arange(bq)
    q_QxD = q_ref[...]

    def body(k_block, carry):
        acc_QxD, max_Q, sum_Q = carry
        keys = pl.ds(k_block * bk, bk)
        visible_QxK = _visible(rows_Q, k_block * bk + jnp.arange(bk), first, plan.causal)
        s_QxK = jnp.where(visible_QxK, _dot_nt(q_QxD, k_ref[keys, :]) * plan.scale, _MASK)
        new_max_Q = jnp.maximum(max_Q, s_QxK.max(axis=-1))
        # Explicit zero: a row whose keys so far are all masked has max == _MASK and exp(0) == 1.
        p_QxK = jnp.where(visible_QxK, jnp.exp(s_QxK - new_max_Q[:, None]), 0.0)
        correction_Q = jnp.exp(max_Q - new_max_Q)
        v_KxD = v_ref[keys, :]
        acc_QxD = correction_Q[:, None] * acc_QxD + _dot(p_QxK.astype(v_KxD.dtype), v_KxD)
        return acc_QxD, new_max_Q, correction_Q * sum_Q + p_QxK.sum(axis=-1)

    lo, hi = _key_block_range(q_block, first, padded, plan)
    init = (jnp.zeros(q_QxD.shape, jnp.float32), jnp.full((bq,), _MASK, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc_QxD, max_Q, sum_Q = lax.fori_loop(lo, hi, body, init)
    has_key_Q = sum_Q > 0.0  # false for padding rows: acc is 0 there, so the output is exactly 0
    safe_sum_Q = jnp.where(has_key_Q, sum_Q, 1.0)
    o_ref[...] = (acc_QxD / safe_sum_Q[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(has_key_Q, max_Q + jnp.log(safe_sum_Q), 0.0)


def _dq_kernel(len_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, plan: _Plan):
    padded, bq, bk = k_ref.shape[0], plan.block_q, plan.block_k
    q_block = pl.program_id(2)
    first = padded - len_ref[()]
    rows_Q = q_block * bq + jnp.arange(bq)
    q_QxD, do_QxD = q_ref[...], do_ref[...]
    lse_Q, delta_Q = lse_ref[...], delta_ref[...]

    def body(k_block, dq_QxD):
        keys = pl.ds(k_block * bk, bk)
        k_KxD = k_ref[keys, :]
        visible_QxK = _visible(rows_Q, k_block * bk + jnp.arange(bk), first, plan.causal)
        s_QxK = _dot_nt(q_QxD, k_KxD) * plan.scale
        p_QxK = jnp.exp(jnp.where(visible_QxK, s_QxK - lse_Q[:, None], _MASK))  # exactly 0 when masked
        ds_QxK = p_QxK * (_dot_nt(do_QxD, v_ref[keys, :]) - delta_Q[:, None])
        return dq_QxD + _dot(ds_QxK.astype(k_KxD.dtype), k_KxD)

    lo, hi = _key_block_range(q_block, first, padded, plan)
    dq_QxD = lax.fori_loop(lo, hi, body, jnp.zeros(q_QxD.shape, jnp.float32))
    dq_ref[...] = (dq_QxD * plan.scale).astype(dq_ref.dtype)


def _dkv_kernel(len_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, plan: _Plan):
    padded, bq, bk = q_ref.shape[0], plan.block_q, plan.block_k
    k_block = pl.program_id(2)
    first = padded - len_ref[()]
    cols_K = k_block * bk + jnp.arange(bk)
    k_KxD, v_KxD = k_ref[...], v_ref[...]

    def body(q_block, carry):
        dk_KxD, dv_KxD = carry
        rows = pl.ds(q_block * bq, bq)
        q_QxD, do_QxD = q_ref[rows, :], do_ref[rows, :]
        visible_QxK = _visible(q_block * bq + jnp.arange(bq), cols_K, first, plan.causal)
        s_QxK = _dot_nt(q_QxD, k_KxD) * plan.scale
        p_QxK = jnp.exp(jnp.where(visible_QxK, s_QxK - lse_ref[rows][:, None], _MASK))
        dv_KxD = dv_KxD + _dot_tn(p_QxK.astype(do_QxD.dtype), do_QxD)
        ds_QxK = p_QxK * (_dot_nt(do_QxD, v_KxD) - delta_ref[rows][:, None])
        return dk_KxD + _dot_tn(ds_QxK.astype(q_QxD.dtype), q_QxD), dv_KxD

    lo, hi = _query_block_range(k_block, first, padded, plan)
    zeros_KxD = jnp.zeros(k_KxD.shape, jnp.float32)
    dk_KxD, dv_KxD = lax.fori_loop(lo, hi, body, (zeros_KxD, zeros_KxD))
    dk_ref[...] = (dk_KxD * plan.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_KxD.astype(dv_ref.dtype)


def _specs(block: int, padded: int, dim: int):
    """BlockSpecs for grid (B, H, blocks): this block's rows, all rows, the length, BxHxLp stats."""
    tile = pl.BlockSpec((None, block, None, dim), lambda b, h, i: (b, i, h, 0))
    full = pl.BlockSpec((None, padded, None, dim), lambda b, h, i: (b, 0, h, 0))
    length = pl.BlockSpec((None,), lambda b, h, i: (b,))  # a 0-d ref: the scalar length
    stats_tile = pl.BlockSpec((None, None, block), lambda b, h, i: (b, h, i))
    stats_full = pl.BlockSpec((None, None, padded), lambda b, h, i: (b, h, 0))
    return tile, full, length, stats_tile, stats_full


def _forward(q, k, v, lengths_B, plan: _Plan):
    """Returns out_BxLpxHxDp and lse_BxHxLp (float32)."""
    batch, padded, heads, dim = q.shape
    tile, full, length, stats_tile, _ = _specs(plan.block_q, padded, dim)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, plan=plan),
        grid=(batch, heads, padded // plan.block_q),
        in_specs=[length, tile, full, full],
        out_specs=[tile, stats_tile],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, heads, padded), jnp.float32),
        ],
        interpret=plan.interpret,
        compiler_params=_TRITON,
        name="padded_attention_fwd",
    )(lengths_B, q, k, v)


def _backward(q, k, v, lengths_B, lse_BxHxL, delta_BxHxL, do, plan: _Plan):
    batch, padded, heads, dim = q.shape
    q_tile, full, length, q_stats, stats_full = _specs(plan.block_q, padded, dim)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan),
        grid=(batch, heads, padded // plan.block_q),
        in_specs=[length, q_tile, full, full, q_tile, q_stats, q_stats],
        out_specs=q_tile,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=plan.interpret,
        compiler_params=_TRITON,
        name="padded_attention_dq",
    )(lengths_B, q, k, v, do, lse_BxHxL, delta_BxHxL)
    k_tile = _specs(plan.block_k, padded, dim)[0]
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan),
        grid=(batch, heads, padded // plan.block_k),
        in_specs=[length, full, k_tile, k_tile, full, stats_full, stats_full],
        out_specs=[k_tile, k_tile],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=plan.interpret,
        compiler_params=_TRITON,
        name="padded_attention_dkv",
    )(lengths_B, q, k, v, do, lse_BxHxL, delta_BxHxL)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, lengths_B, plan: _Plan):
    return _forward(q, k, v, lengths_B, plan)[0]


def _attention_fwd(q, k, v, lengths_B, plan: _Plan):
    out, lse_BxHxL = _forward(q, k, v, lengths_B, plan)
    return out, (q, k, v, lengths_B, out, lse_BxHxL)


def _attention_bwd(plan: _Plan, residuals, do):
    q, k, v, lengths_B, out, lse_BxHxL = residuals
    # delta = rowsum(dO * O) = rowsum(P * dP): the softmax-backward term, elementwise so left to XLA.
    delta_BxHxL = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), do.astype(jnp.float32))
    dq, dk, dv = _backward(q, k, v, lengths_B, lse_BxHxL, delta_BxHxL, do.astype(q.dtype), plan)
    return dq, dk, dv, None  # lengths are integers: no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)
