"""Pallas padded attention against its reference (interpret mode on CPU), and the skip accounting.

Legend: B batch, L length, H heads, D head dim.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.kernels.padded_attention import (
    pallas_padded_attention,
    reference_padded_attention,
    skipped_fraction,
)
from tests.conftest import assert_close

B, L, H, D, BLOCK = 5, 64, 2, 16, 16
# The kernel against the reference, both float32: logits sum D = 16 terms, the softmax, the output and the key
# and value gradients up to L = 64 in another (blocked) order: N eps <= 7.7e-6 of the largest value.
RTOL = 1e-5
LENGTHS = (0, 1, L, 23, 40)  # empty, single item, full, and two that straddle block edges


def _qkv_and_cotangent(shape, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)


@functools.partial(jax.jit, static_argnames=("fn", "causal", "block_q", "block_k"))
def _value_and_grads(q, k, v, lengths_B, do, *, fn, causal, block_q=0, block_k=0):
    kwargs = dict(causal=causal)
    if fn is pallas_padded_attention:
        kwargs.update(block_q=block_q, block_k=block_k)
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, lengths_B, **kwargs), q, k, v)
    return out, vjp(do)


_reference = jax.jit(reference_padded_attention, static_argnames="causal")


def _padding_rows_BxL(lengths, length):
    return np.arange(length)[None, :] < length - np.asarray(lengths)[:, None]


def test_reference_matches_numpy():
    q, k, v, _ = (np.asarray(t, np.float64) for t in _qkv_and_cotangent((3, 6, 2, 4), seed=1))
    lengths = np.array([0, 2, 6])
    for causal in (True, False):
        expected = np.zeros_like(q)
        for b, n in enumerate(lengths):
            for h in range(2):
                for row in range(6 - n, 6):
                    cols = np.arange(6 - n, row + 1 if causal else 6)
                    logits = k[b, cols, h] @ q[b, row, h] / 2.0  # D**-0.5 with D = 4
                    weights = np.exp(logits - logits.max())
                    expected[b, row, h] = weights @ v[b, cols, h] / weights.sum()
        got = _reference(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), lengths, causal=causal)
        assert_close(got, expected, rtol=2e-6)  # float32 sums of <= 6 terms, three chained, against float64


@pytest.mark.parametrize("causal", [True, False])
def test_pallas_matches_reference_values_and_grads(causal):
    q, k, v, do = _qkv_and_cotangent((B, L, H, D))
    lengths = jnp.array(LENGTHS)
    out, grads = _value_and_grads(
        q, k, v, lengths, do, fn=pallas_padded_attention, causal=causal, block_q=BLOCK, block_k=BLOCK
    )
    ref_out, ref_grads = _value_and_grads(q, k, v, lengths, do, fn=reference_padded_attention, causal=causal)
    assert_close(out, ref_out, RTOL)
    for name, got, want in zip("qkv", grads, ref_grads):
        assert_close(got, want, RTOL, err_msg=f"d{name}")
    padding_BxL = _padding_rows_BxL(LENGTHS, L)
    for name, t in zip(("out", "dq", "dk", "dv"), (out, *grads)):
        assert np.isfinite(t).all(), name
        assert (np.asarray(t)[padding_BxL] == 0.0).all(), f"{name} is not exactly zero at padding"


@pytest.mark.parametrize("causal", [True, False])
def test_padding_blocks_are_never_read(causal):
    # NaN in every padding position: any padding block entering a matmul would spread it.
    # Lengths are block multiples, so each visited block is entirely valid. Same shapes as
    # above, so the compiled programs are reused.
    lengths = (0, 16, 48, 64, 32)
    padding_Bx1xLx1x1 = jnp.asarray(_padding_rows_BxL(lengths, L))[None, :, :, None, None]
    poisoned = jnp.where(padding_Bx1xLx1x1, jnp.nan, jnp.stack(_qkv_and_cotangent((B, L, H, D), seed=2)))
    clean = jnp.where(padding_Bx1xLx1x1, 0.0, poisoned)
    lengths = jnp.array(lengths)
    out, grads = _value_and_grads(
        *poisoned[:3], lengths, poisoned[3], fn=pallas_padded_attention, causal=causal, block_q=BLOCK, block_k=BLOCK
    )
    ref_out, ref_grads = _value_and_grads(*clean[:3], lengths, clean[3], fn=reference_padded_attention, causal=causal)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want, RTOL, err_msg=name)  # a NaN anywhere in got fails


def test_length_not_multiple_of_block():
    # L = 40 with blocks 16 x 8: padded internally (on the left) to 48.
    length, lengths = 40, jnp.array([0, 1, 40, 17])
    q, k, v, do = _qkv_and_cotangent((4, length, H, D), seed=3)
    out, grads = _value_and_grads(q, k, v, lengths, do, fn=pallas_padded_attention, causal=True, block_q=16, block_k=8)
    ref_out, ref_grads = _value_and_grads(q, k, v, lengths, do, fn=reference_padded_attention, causal=True)
    assert out.shape == (4, length, H, D)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want, RTOL, err_msg=name)


def test_automatic_blocks_and_interpret():
    q, k, v, _ = _qkv_and_cotangent((2, 40, 1, D), seed=4)
    lengths = jnp.array([7, 40])
    out = jax.jit(pallas_padded_attention)(q, k, v, lengths)
    assert_close(out, _reference(q, k, v, lengths, causal=True), RTOL)


def test_bfloat16():
    length, lengths = 32, jnp.array([0, 5, 32, 20])
    q, k, v, do = _qkv_and_cotangent((4, length, H, D), seed=5, dtype=jnp.bfloat16)
    out, grads = _value_and_grads(
        q, k, v, lengths, do, fn=pallas_padded_attention, causal=True, block_q=BLOCK, block_k=BLOCK
    )
    f32 = [t.astype(jnp.float32) for t in (q, k, v, do)]
    ref_out, ref_grads = _value_and_grads(*f32[:3], lengths, f32[3], fn=reference_padded_attention, causal=True)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    # bfloat16 (eps 2^-8 = 3.9e-3) rounds the outputs and the kernel's matmul operands: a few eps of the largest
    # value; 3e-2 is 8 of them.
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        assert np.isfinite(np.asarray(got, np.float32)).all()
        assert_close(np.asarray(got, np.float32), want, rtol=3e-2, err_msg=name)


def test_skipped_fraction_extremes():
    n = 4  # 64 / 16 blocks per side
    full = [64] * 3
    assert skipped_fraction(full, 64, 16, 16, causal=True) == pytest.approx(n * (n - 1) / 2 / n**2)
    assert skipped_fraction(full, 64, 16, 16, causal=False) == 0.0
    assert skipped_fraction([1] * 3, 64, 16, 16, causal=True) == pytest.approx(1 - 1 / n**2)
    assert skipped_fraction([1] * 3, 64, 16, 16, causal=False) == pytest.approx(1 - 1 / n**2)
    assert skipped_fraction([0] * 3, 64, 16, 16, causal=True) == 1.0


@pytest.mark.parametrize("causal", [True, False])
def test_skipped_fraction_counts_exactly_the_empty_tiles(causal):
    # The kernel visits a tile iff it holds at least one visible (query, key) pair.
    length, block_q, block_k, padded = 40, 16, 8, 48
    lengths = np.random.default_rng(0).integers(0, length + 1, size=16)
    first_Bx1x1 = (padded - lengths)[:, None, None]
    rows_LxL, cols_LxL = np.indices((padded, padded))
    visible_BxLxL = (rows_LxL >= first_Bx1x1) & (cols_LxL >= first_Bx1x1)
    if causal:
        visible_BxLxL &= cols_LxL <= rows_LxL
    tiles = visible_BxLxL.reshape(len(lengths), padded // block_q, block_q, padded // block_k, block_k)
    empty = 1.0 - tiles.any(axis=(2, 4)).mean()
    assert skipped_fraction(lengths, length, block_q, block_k, causal) == pytest.approx(empty)
