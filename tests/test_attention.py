import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers import attention as attn
from jaxrec.layers.dropout import keep_mask

B, L, H, D = 3, 12, 2, 8


def _inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q, k, v = (jax.random.normal(kk, (B, L, H, D)) for kk in keys)
    lengths = jnp.array([L, 5, 0])  # full, left padded, all padding
    valid_BxL = jnp.arange(L)[None] >= (L - lengths)[:, None]
    return q, k, v, valid_BxL


def _naive(q, k, v, mask, bias=None):
    """Loop-free numpy attention with explicit handling of empty rows."""
    q, k, v, mask = (np.asarray(x, np.float64) for x in (q, k, v, mask))
    logits = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(D)
    if bias is not None:
        logits = logits + np.asarray(bias)
    logits = np.where(mask[:, None], logits, -np.inf)
    peak = np.max(logits, -1, keepdims=True)
    w = np.exp(logits - np.where(np.isfinite(peak), peak, 0))
    denom = w.sum(-1, keepdims=True)
    w = np.where(denom > 0, w / np.where(denom > 0, denom, 1), 0)
    return np.einsum("bhls,bshd->blhd", w, v)


@pytest.mark.parametrize(
    "impl, causal",
    [(impl, causal) for impl in ("reference", "xla", "auto") for causal in (True, False)] + [("causal_blocked", True)],
)
def test_implementations_match_naive(impl, causal):
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=causal)
    out = attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask)
    np.testing.assert_allclose(out, _naive(q, k, v, mask), atol=1e-5)
    assert not np.any(np.asarray(out[2]))  # the all-padding row is exactly zero


@pytest.mark.parametrize("impl", ["reference", "xla", "causal_blocked"])
def test_additive_bias_is_applied(impl):
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=True)
    bias = jax.random.normal(jax.random.key(5), (B, H, L, L))
    out = attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask, bias_BxHxLxS=bias)
    np.testing.assert_allclose(out, _naive(q, k, v, mask, bias), atol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "xla", "causal_blocked"])
def test_gradients_finite_with_padding_and_match_reference(impl):
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=True)

    def loss(q, k, v, impl):
        return jnp.sum(attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, impl)
    ref = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, "reference")
    for g, r in zip(grads, ref):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_blocked_attention_dropout_is_causal_and_deterministic():
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=True)
    kwargs = dict(mask_BxLxS=mask, dropout_rate=0.3, dropout_rng=jax.random.key(1))
    a = attn.attention(q, k, v, implementation="causal_blocked", **kwargs)
    b = attn.attention(q, k, v, implementation="causal_blocked", **kwargs)
    np.testing.assert_array_equal(a, b)
    # Perturbing the last key must not change any earlier query's output.
    v2 = v.at[:, -1].add(1.0)
    c = attn.attention(q, k, v2, implementation="causal_blocked", **kwargs)
    np.testing.assert_array_equal(a[:, :-1], c[:, :-1])


def test_unknown_implementation_is_named():
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="unknown attention implementation 'flash9'"):
        attn.attention(q, k, v, implementation="flash9")


def test_xla_refuses_attention_dropout():
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="no attention-weight dropout"):
        attn.attention(q, k, v, implementation="xla", dropout_rate=0.1, dropout_rng=jax.random.key(0))


def test_hash_dropout_mask_rate_and_independence():
    shape = (64, 200, 50)
    a = np.asarray(keep_mask(jnp.uint32(1), shape, 0.2))
    b = np.asarray(keep_mask(jnp.uint32(2), shape, 0.2))
    assert abs(a.mean() - 0.8) < 0.002
    assert abs(b.mean() - 0.8) < 0.002
    assert (a != b).mean() > 0.3  # different seeds give different masks (expected 0.32)
    flat = a.reshape(-1).astype(np.float64)
    neighbour_corr = np.corrcoef(flat[:-1], flat[1:])[0, 1]
    assert abs(neighbour_corr) < 0.01
    assert np.all(keep_mask(jnp.uint32(1), (10,), 0.0))
