import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import switch_model
from jaxrec.layers.embeddings import position_rows, vocab_rows
from jaxrec.models import SASRecConfig, build_model
from tests.conftest import assert_close, rel_error, weight_stds

CFG = SASRecConfig(max_len=16, hidden=8, num_blocks=2, num_heads=2, dropout=0.2)
NUM_ITEMS = 40


def _init(cfg=CFG):
    model = build_model(cfg, NUM_ITEMS)
    params = model.init({"params": jax.random.key(0)}, jnp.ones((1, cfg.max_len), jnp.int32), method=model.encode)
    return model, nn.unbox(params["params"])  # the plain arrays (init boxes tables with their logical axes)


def _histories(length, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, NUM_ITEMS + 1, size=(3, length)).astype(np.int32)
    ids[1, : length // 2] = 0  # left padded
    ids[2, :] = 0  # all padding
    return jnp.asarray(ids)


def test_shapes_finite_and_padding_rows_zero_with_and_without_jit():
    model, params = _init()
    ids = _histories(CFG.max_len)
    for fn in (model.apply, jax.jit(model.apply, static_argnames="deterministic")):
        h, table = fn({"params": params}, ids, deterministic=True)
        assert h.shape == (3, CFG.max_len, CFG.hidden)
        assert table.shape == (vocab_rows(NUM_ITEMS), CFG.hidden)
        assert np.all(np.isfinite(h))
        assert not np.any(np.asarray(h[2]))
        assert not np.any(np.asarray(h[1, : CFG.max_len // 2]))


def _probe(h_D):
    # A fixed random direction: sum() would be blind, LayerNorm outputs sum to a constant.
    return jnp.dot(h_D, jnp.linspace(-1.0, 2.0, h_D.shape[-1]))


@pytest.mark.parametrize("attention", ["auto", "reference", "causal_blocked"])
def test_causality_by_gradients(attention):
    """d output[t] / d input[s] is zero for every s > t and nonzero for s <= t (distinct ids per position)."""
    model, params = _init(dataclasses.replace(CFG, attention=attention))
    ids = jnp.asarray(np.random.default_rng(0).permutation(NUM_ITEMS)[: CFG.max_len] + 1)[None].astype(jnp.int32)

    def at_t(table, t):
        h, _ = model.apply(
            {"params": {**params, "item_embedding": table}},
            ids,
            deterministic=False,
            rngs={"dropout": jax.random.key(3)},
        )
        return _probe(h[0][t])

    grad_at = jax.jit(jax.grad(at_t))  # one compile for every t (eager grads take ~10x longer)
    for t in (0, 6, CFG.max_len - 2):
        grad = np.asarray(grad_at(params["item_embedding"], t))
        rows = np.asarray(ids[0])
        assert np.all(grad[rows[t + 1 :]] == 0), "output depends on a later input"
        assert np.all(np.abs(grad[rows[: t + 1]]).sum(-1) > 0)


def test_position_embedding_gradient_is_causal():
    model, params = _init()
    ids = _histories(CFG.max_len)[:1]
    t = 7

    def at_t(pos):
        h, _ = model.apply({"params": {**params, "position_embedding": pos}}, ids, deterministic=True)
        return _probe(h[0, t])

    grad = np.asarray(jax.grad(at_t)(params["position_embedding"]))
    assert np.all(grad[t + 1 :] == 0)
    assert np.any(grad[: t + 1] != 0)


def test_shorter_bucket_computes_the_same_as_full_length():
    model, params = _init()
    full = _histories(CFG.max_len)
    short = full[:, -6:]
    full = full.at[:, :-6].set(0)
    h_full, _ = model.apply({"params": params}, full, deterministic=True)
    h_short, _ = model.apply({"params": params}, short, deterministic=True)
    # Float32 sums over 16 or 6 positions and 8 features in 2 blocks: N eps ~ 2e-6 each; 1e-5 bounds them all.
    assert_close(h_short, h_full[:, -6:], rtol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("positions", ["from_end", "from_start"])
def test_positions_use_the_rows_of_their_mode_whatever_the_padding(name, positions):
    cfg = dataclasses.replace(switch_model(CFG, name), positions=positions)
    model, params = _init(cfg)
    n = 5  # a history shorter than max_len, left padded to two bucket lengths
    items = jnp.asarray(np.random.default_rng(3).integers(1, NUM_ITEMS + 1, size=(1, n)), jnp.int32)
    used = set(range(n)) if positions == "from_start" else set(range(cfg.max_len - n, cfg.max_len))
    outputs = []
    for length in (8, cfg.max_len):
        ids = jnp.pad(items, ((0, 0), (length - n, 0)))
        rows = np.asarray(position_rows(ids > 0, cfg.max_len, positions))
        assert set(rows[0, length - n :].tolist()) == used

        def real_slots(pos, ids=ids):
            h, _ = model.apply({"params": {**params, "position_embedding": pos}}, ids, deterministic=True)
            return h[0, -n:], _probe(h[0, -n:].sum(0))

        grad = np.asarray(jax.grad(lambda pos: real_slots(pos)[1])(params["position_embedding"]))
        assert {int(r) for r in np.nonzero(np.abs(grad).sum(-1))[0]} == used  # padding slots use no row
        outputs.append(real_slots(params["position_embedding"])[0])
    assert_close(outputs[0], outputs[1], rtol=1e-5)  # buckets compute the same, up to float32 sums' order


def test_unshared_output_table_is_a_separate_parameter():
    model, params = _init(dataclasses.replace(CFG, shared_output_embedding=False))
    assert "output_embedding" in params
    _, table = model.apply({"params": params}, _histories(CFG.max_len), deterministic=True)
    np.testing.assert_array_equal(table, params["output_embedding"])


def test_normal_embedding_init_is_unit_variance_and_unscaled():
    """embedding_init=normal (gSASRec-pytorch): N(0, 1) tables, item embeddings not scaled by sqrt(D)."""
    cfg = dataclasses.replace(CFG, embedding_init="normal", shared_output_embedding=False)
    model, params = _init(cfg)
    for name in ("item_embedding", "output_embedding", "position_embedding"):
        assert 0.8 < float(jnp.std(params[name])) < 1.2, name
    xavier_model, xavier_params = _init(dataclasses.replace(cfg, embedding_init="xavier"))
    assert float(jnp.std(xavier_params["item_embedding"])) < 0.3
    # The xavier model multiplies items by sqrt(D): dividing its table by sqrt(D) must give the same output.
    rescaled = dict(params, item_embedding=params["item_embedding"] / CFG.hidden**0.5)
    ids = _histories(CFG.max_len)
    h_normal, _ = model.apply({"params": params}, ids, deterministic=True)
    h_xavier, _ = xavier_model.apply({"params": rescaled}, ids, deterministic=True)
    assert_close(h_normal, h_xavier, rtol=1e-5)  # rounds the table differently, then float32 sums as above


def test_small_normal_init_sets_every_table_and_kernel_to_std_002_and_keeps_item_scaling():
    """embedding_init=small_normal (Klenitskiy & Vasilev's SASRec): N(0, 0.02) tables and dense kernels."""
    cfg = dataclasses.replace(CFG, hidden=64, num_heads=1, embedding_init="small_normal")
    model, params = _init(cfg)
    xavier_model, xavier_params = _init(dataclasses.replace(cfg, embedding_init="xavier"))
    kernels = weight_stds(params)
    assert len(kernels) == 2 + cfg.num_blocks * 5  # tables, q/k/v and two feed-forward kernels per block
    for name, std in kernels.items():
        assert 0.017 < std < 0.023, name
    # Xavier's kernels are wider (64x64: std 0.125), so the test tells the two apart.
    assert float(jnp.std(xavier_params["attention_0"]["query"]["kernel"])) > 0.1
    # Items are still multiplied by sqrt(D): the xavier model on the same parameters computes the same output.
    ids = _histories(cfg.max_len)
    h_small, _ = model.apply({"params": params}, ids, deterministic=True)
    h_xavier, _ = xavier_model.apply({"params": params}, ids, deterministic=True)
    assert_close(h_small, h_xavier, rtol=1e-6)  # one program on the same parameters: a few ulps at most


def test_dropout_active_only_in_training():
    model, params = _init()
    ids = _histories(CFG.max_len)
    a = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})[0]
    b = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(2)})[0]
    c = model.apply({"params": params}, ids, deterministic=True)[0]
    d = model.apply({"params": params}, ids, deterministic=True)[0]
    assert rel_error(a, b) > 1e-2  # dropout changes the output at O(1), rounding at 1e-7
    np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize("attention", ["auto", "causal_blocked"])
def test_last_only_inference_equals_the_last_row_of_the_full_pass(attention):
    model, params = _init(dataclasses.replace(CFG, attention=attention))
    ids = _histories(CFG.max_len)
    full, _ = model.apply({"params": params}, ids, deterministic=True)
    last, _ = model.apply({"params": params}, ids, deterministic=True, last_only=True)
    assert last.shape == (3, 1, CFG.hidden)
    assert_close(last[:, 0], full[:, -1], rtol=1e-5)  # float32 sums in another order, as above


@pytest.mark.slow  # moved out of the default run (its ~10-minute budget); .ci/run runs it
def test_padded_kernel_trains_like_the_reference_when_attention_dropout_is_off():
    """model.attention_dropout=0 lets a fused kernel train (embedding and FFN dropout stay on)."""
    cfg = dataclasses.replace(CFG, attention_dropout=0.0)
    ids = _histories(CFG.max_len)
    grads = {}
    for impl in ("reference", "padded_causal"):
        model, params = _init(dataclasses.replace(cfg, attention=impl))

        def loss(p, model=model):
            h, _ = model.apply({"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
            return _probe(h).sum()

        grads[impl] = jax.jit(jax.value_and_grad(loss))(params)
    (v_ref, g_ref), (v_pad, g_pad) = grads["reference"], grads["padded_causal"]
    # Float32 sums over <= 48 positions x 16 keys in another order: N eps ~ 1e-5 of the largest value or gradient
    # (a gradient that cancels to ~0 carries the rounding of the large ones, hence the one scale per tree).
    np.testing.assert_allclose(v_pad, v_ref, rtol=1e-5)
    assert_close(g_pad, g_ref, rtol=1e-5)
