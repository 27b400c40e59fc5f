import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers import attention as attn
from jaxrec.layers import attention_fused
from jaxrec.layers.dropout import keep_mask
from tests.conftest import assert_close

B, L, H, D = 3, 12, 2, 8
# Float32 attention against float64 or another float32 order: logits sum D <= 10 terms, the softmax and the output
# L = 12, N eps ~ 1.5e-6 each, three chained (their gradients as many again): 1e-5 of the largest value.
RTOL = 1e-5


def _inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q, k, v = (jax.random.normal(kk, (B, L, H, D)) for kk in keys)
    lengths = jnp.array([L, 5, 0])  # full, left padded, all padding
    valid_BxL = jnp.arange(L)[None] >= (L - lengths)[:, None]
    return q, k, v, valid_BxL


def _naive(q, k, v, mask, bias=None):
    """Loop-free numpy attention with explicit handling of empty rows."""
    q, k, v, mask = (np.asarray(x, np.float64) for x in (q, k, v, mask))
    logits = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])  # any head dim
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
    assert_close(out, _naive(q, k, v, mask), RTOL)
    assert not np.any(np.asarray(out[2]))  # the all-padding row is exactly zero


@pytest.mark.parametrize("impl", ["reference", "xla", "causal_blocked"])
def test_additive_bias_is_applied(impl):
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=True)
    bias = jax.random.normal(jax.random.key(5), (B, H, L, L))
    out = attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask, bias_BxHxLxS=bias)
    assert_close(out, _naive(q, k, v, mask, bias), RTOL)


@pytest.mark.parametrize("impl", ["reference", "xla", "causal_blocked"])
def test_gradients_finite_with_padding_and_match_reference(impl):
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=True)

    def loss(q, k, v, impl):
        return jnp.sum(attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)  # eager grads are slow on CPU
    grads = grad(q, k, v, impl)
    ref = grad(q, k, v, "reference")
    for name, g, r in zip("qkv", grads, ref):
        assert np.all(np.isfinite(g))
        assert_close(g, r, RTOL, err_msg=f"d{name}")


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


# ---- Kernel-backed implementations (issue 6) -------------------------------------------------------------

# cuDNN's conversions (head dim padded to 8, left padding rotated to cuDNN's right padding, lengths and
# is_causal) run through XLA here: `dpa_implementation="xla"` takes the same path with another backend.
CUDNN_VIA_XLA = dict(dpa_implementation="xla")


def _padding_mask(valid, causal):
    """Left padding (+ causal): what the trusting kernels assume; padding query rows see nothing."""
    if causal:
        return attn.causal_padding_mask(valid, causal=True)
    return valid[:, :, None] & valid[:, None, :]


def _odd_head_inputs(seed=0, head_dim=10):
    """Head dim 10: not a multiple of 8, so cuDNN's padding of the head dim is exercised."""
    keys = jax.random.split(jax.random.key(seed), 3)
    q, k, v = (jax.random.normal(kk, (B, L, H, head_dim)) for kk in keys)
    lengths = jnp.array([L, 5, 0])
    return q, k, v, jnp.arange(L)[None] >= (L - lengths)[:, None]


def _check_against_naive(impl, causal, kwargs, grads=True):
    q, k, v, valid = _odd_head_inputs()
    mask = _padding_mask(valid, causal)
    out = attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask, **kwargs)
    assert_close(out, _naive(q, k, v, mask), RTOL)
    assert not np.any(np.asarray(out[2])) and not np.any(np.asarray(out[1, : L - 5]))  # padding rows: zeros
    if grads:

        def loss(q, k, v, impl, kwargs):
            return jnp.sum(attn.attention(q, k, v, implementation=impl, mask_BxLxS=mask, **kwargs) ** 2)

        got = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, impl, kwargs)
        want = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, "reference", {})
        for name, g, r in zip("qkv", got, want):
            assert np.all(np.isfinite(g))
            assert_close(g, r, RTOL, err_msg=f"d{name}")


@pytest.mark.parametrize(
    "impl, causal",
    [("cudnn", True), ("cudnn", False), ("cudnn_padded_causal", True), ("cudnn_padded", False)],
)
def test_cudnn_conversions_match_naive(impl, causal):
    _check_against_naive(impl, causal, CUDNN_VIA_XLA)


def test_cudnn_general_path_takes_any_mask_and_a_bias():
    q, k, v, valid = _odd_head_inputs()
    mask = jax.random.bernoulli(jax.random.key(3), 0.6, (B, L, L)) & valid[:, None, :]  # some rows empty
    bias = jax.random.normal(jax.random.key(4), (B, H, L, L))
    out = attn.attention(q, k, v, implementation="cudnn", mask_BxLxS=mask, bias_BxHxLxS=bias, **CUDNN_VIA_XLA)
    want = attn.attention(q, k, v, implementation="reference", mask_BxLxS=mask, bias_BxHxLxS=bias)
    assert_close(out, want, RTOL)


@pytest.mark.parametrize("impl, causal", [("pallas_flash_causal", True), ("pallas_flash", False)])
def test_pallas_flash_in_the_interpreter_matches_naive(impl, causal):
    # JAX's Pallas GPU flash kernel, run by the Pallas interpreter (the default on CPU).
    _check_against_naive(impl, causal, {}, grads=causal)


@pytest.mark.parametrize("impl, causal", [("padded_causal", True), ("padded", False)])
def test_padded_kernel_matches_naive(impl, causal):
    pytest.importorskip("jaxrec.kernels.padded_attention")
    _check_against_naive(impl, causal, {}, grads=causal)


def test_padded_reads_lengths_from_the_last_mask_row(monkeypatch):
    # A stand-in kernel: the plumbing (lengths, causal flag, zeroed padding rows) without the real one.
    import sys
    import types

    calls = {}

    def fake_kernel(q, k, v, lengths_B, *, causal=True, block_q=0, block_k=0, interpret=None):
        calls.update(lengths=np.asarray(lengths_B), causal=causal)
        return jnp.ones_like(q)

    module = types.ModuleType("jaxrec.kernels.padded_attention")
    module.pallas_padded_attention = fake_kernel
    monkeypatch.setitem(sys.modules, "jaxrec.kernels.padded_attention", module)
    monkeypatch.setattr(attention_fused, "_module_exists", lambda name: True)
    q, k, v, valid = _inputs()
    out = attn.attention(q, k, v, implementation="padded_causal", mask_BxLxS=_padding_mask(valid, True))
    np.testing.assert_array_equal(calls["lengths"], [L, 5, 0])
    assert calls["causal"] is True
    np.testing.assert_array_equal(np.asarray(out[:, :, 0, 0]), np.asarray(valid, np.float32))


@pytest.mark.parametrize("impl", ["cudnn_padded_causal", "pallas_flash_causal", "padded_causal"])
def test_trusting_kernels_fall_back_to_reference_for_last_only_queries(impl, monkeypatch):
    # SASRec's last_only inference: one query row against L keys. The kernel is never called.
    monkeypatch.setattr(attention_fused, "kernel_supports", lambda *args, **kwargs: (True, ""))
    q, k, v, valid = _inputs()
    mask = attn.causal_padding_mask(valid, causal=True)[:, -1:]
    out = attn.attention(q[:, -1:], k, v, implementation=impl, mask_BxLxS=mask)
    want = attn.attention(q[:, -1:], k, v, implementation="reference", mask_BxLxS=mask)
    assert_close(out, want, rtol=1e-6)  # the reference both times: a few ulps at most


@pytest.mark.parametrize(
    "impl, kwargs, match",
    [
        ("cudnn", {}, "needs an NVIDIA GPU"),
        ("cudnn_padded_causal", {}, "needs an NVIDIA GPU"),
        ("pallas_flash_causal", {"dropout_rate": 0.1, "dropout_rng": jax.random.key(0)}, "no attention-weight dropout"),
        ("pallas_flash", {"bias_BxHxLxS": jnp.zeros((B, H, L, L))}, "takes no additive bias"),
        ("padded_causal", {"dropout_rate": 0.1, "dropout_rng": jax.random.key(0)}, "no attention-weight dropout"),
        ("pallas_flash_causal", {"interpret": False}, "Pallas interpreter"),
    ],
)
def test_unservable_cases_say_why(impl, kwargs, match):
    q, k, v, valid = _inputs()
    with pytest.raises(attn.UnsupportedAttention, match=match) as info:
        attn.attention(q, k, v, implementation=impl, mask_BxLxS=_padding_mask(valid, True), **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, NotImplementedError)


def test_supports_reports_reasons_per_backend():
    ok, why = attn.supports("cudnn", "gpu", jnp.float32, 64)
    assert not ok and "bfloat16" in why
    assert attn.supports("cudnn", "gpu", jnp.bfloat16, 50) == (True, "")  # 50 is padded to 56
    assert not attn.supports("cudnn_padded_causal", "gpu", jnp.bfloat16, 64, has_bias=True)[0]
    assert attn.supports("cudnn", "gpu", jnp.bfloat16, 64, has_bias=True)[0]
    assert attn.supports("pallas_flash_causal", "gpu", jnp.float32, 50)[0]
    assert "interpreter" in attn.supports("padded_causal", "cpu")[1]
    assert attn.supports("pallas_flash", "cpu", interpret=True)[0]
    assert attn.supports("causal_blocked", "cpu", has_bias=True, has_dropout=True)[0]
    assert "unknown attention implementation" in attn.supports("flash9", "gpu")[1]
    for impl in attn.IMPLEMENTATIONS:  # every registered name answers on every backend
        for backend in ("cpu", "gpu", "tpu"):
            ok, why = attn.supports(impl, backend, jnp.bfloat16, 64)
            assert ok or why.startswith(impl), (impl, backend, why)
