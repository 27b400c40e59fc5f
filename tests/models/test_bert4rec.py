import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.config import switch_model
from jaxrec.models import BERT4Rec, BERT4RecConfig, build_model
from tests.conftest import assert_close, rel_error, replace, weight_stds

CFG = BERT4RecConfig(max_len=12, hidden=8, num_blocks=2, num_heads=2, dropout=0.1, loss="ce")
NUM_ITEMS = 30


def _init(cfg=CFG):
    model = build_model(cfg, NUM_ITEMS)
    dummy = jnp.ones((1, cfg.max_len), jnp.int32)
    # jit: an eager init dispatches (and compiles) every op of the model one by one.
    params = jax.jit(lambda key: model.init({"params": key}, dummy, method=model.encode))(jax.random.key(0))
    return model, nn.unbox(params["params"])  # the plain arrays (init boxes tables with their logical axes)


def test_bidirectional_output_depends_on_later_positions():
    model, params = _init()
    ids = jnp.asarray(np.random.default_rng(0).permutation(NUM_ITEMS)[: CFG.max_len] + 1)[None].astype(jnp.int32)
    t = 3

    def at_t(table):
        h, _ = model.apply({"params": {**params, "item_embedding": table}}, ids, deterministic=True)
        return jnp.dot(h[0, t, :-1], jnp.linspace(-1.0, 2.0, CFG.hidden))

    grad = np.asarray(jax.jit(jax.grad(at_t))(params["item_embedding"]))  # eager grads are slow on CPU
    later = np.asarray(ids[0, t + 1 :])
    assert np.all(np.abs(grad[later]).sum(-1) > 0)  # unlike SASRec, later items matter


def test_padding_is_masked_out_of_attention():
    model, params = _init()
    ids = jnp.asarray([[0, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13]], jnp.int32)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=True)[0][0])
    h = np.asarray(apply(params, ids))
    # What the padded slots carry (the table's row 0) changes; the real positions must not notice.
    row0 = 3.0 * jax.random.normal(jax.random.key(1), (CFG.hidden,))
    padded = np.asarray(apply({**params, "item_embedding": params["item_embedding"].at[0].set(row0)}, ids))
    assert np.abs(padded[:3] - h[:3]).max() > 0.1 * np.abs(h[:3]).max()  # the perturbation reached the model
    assert_close(padded[3:], h[3:], rtol=1e-6)  # masked keys add exactly 0: a few ulps at most
    # Control: a real item does reach the other real positions (bidirectional attention).
    real = np.asarray(apply(params, ids.at[0, 3].set(20)))
    assert np.abs(real[4:] - h[4:]).max() > 0.01 * np.abs(h[4:]).max()


def test_cloze_masks_only_real_items_and_targets_only_masked_positions():
    rng = np.random.default_rng(0)
    items = rng.integers(1, NUM_ITEMS + 1, (64, CFG.max_len)).astype(np.int32)
    items[:, :4] = 0
    batch = BERT4Rec.training_batch({"positives_BxL": jnp.asarray(items)}, jax.random.key(1), CFG, NUM_ITEMS)
    masked = np.asarray(batch["inputs_BxL"]) == NUM_ITEMS + 1
    assert not masked[:, :4].any()  # padding is never masked
    np.testing.assert_array_equal(np.asarray(batch["positives_BxL"]) > 0, masked)  # loss only where masked
    np.testing.assert_array_equal(np.asarray(batch["positives_BxL"])[masked], items[masked])
    np.testing.assert_array_equal(np.asarray(batch["inputs_BxL"])[~masked], items[~masked])
    assert abs(masked[:, 4:].mean() - CFG.mask_prob) < 0.03


def test_inference_appends_mask_and_last_only_matches_full_pass():
    model, params = _init()
    ids = jnp.asarray(np.random.default_rng(1).integers(1, NUM_ITEMS + 1, (3, CFG.max_len)), jnp.int32)
    inputs = BERT4Rec.inference_inputs(ids, NUM_ITEMS)
    np.testing.assert_array_equal(inputs[:, :-1], ids[:, 1:])
    assert np.all(np.asarray(inputs[:, -1]) == NUM_ITEMS + 1)
    full, table = model.apply({"params": params}, inputs, deterministic=True)
    last, _ = model.apply({"params": params}, inputs, deterministic=True, last_only=True)
    # Float32 sums over 12 positions and 8 features in 2 blocks, maybe in another order: N eps ~ 1.5e-6 each.
    assert_close(last[:, 0], full[:, -1], rtol=1e-5)
    # The output bias is folded into the scores: h . table = head . embedding + bias.
    assert table.shape[1] == CFG.hidden + 1 and np.all(np.asarray(full[..., -1]) == 1.0)


# Klenitskiy & Vasilev's BERT4Rec (Hugging Face's BertModel): no head, right padding, BERT's projection and init.
KV_VARIANT = dict(output_head=False, positions="from_start", attention_projection=True, embedding_init="small_normal")


@pytest.mark.slow  # moved out of the default run (its ~10-minute budget); .ci/run runs it
@pytest.mark.parametrize("variant", [{}, KV_VARIANT])  # the paper's; K&V's
def test_bert4rec_trains_end_to_end_on_synthetic_data(tiny_config, tmp_path, variant):
    model = dict(name="bert4rec", loss="ce_chunked", ce_chunk=64, num_heads=2, **variant)
    cfg = replace(tiny_config, model=model, train=dict(num_epochs=2))
    metrics = experiment.run(cfg, tmp_path / "run")
    assert 0.0 < metrics["test/ndcg@10_full"] <= 1.0
    assert dataclasses.asdict(cfg.model)["name"] == "bert4rec"


def test_bert4rec_asks_for_whole_sequences_and_sasrec_for_pairs():
    assert build_model(CFG, NUM_ITEMS).trains_on_whole_sequence
    sasrec = build_model(switch_model(dataclasses.replace(CFG, mask_prob=0.2), "sasrec"), NUM_ITEMS)
    assert not sasrec.trains_on_whole_sequence and sasrec.target_fraction(sasrec.config) is None
    assert BERT4Rec.target_fraction(CFG) == CFG.mask_prob


def test_without_output_head_states_score_straight_against_the_item_embedding():
    # Klenitskiy & Vasilev's BERT4Rec: no dense -> GELU -> LayerNorm head, no per-item bias.
    cfg = dataclasses.replace(CFG, output_head=False)
    model, params = _init(cfg)
    assert not {"head_dense", "head_norm", "output_bias"} & set(params)
    ids = jnp.asarray(np.random.default_rng(2).integers(1, NUM_ITEMS + 1, (2, cfg.max_len)), jnp.int32)
    h, table = model.apply({"params": params}, ids, deterministic=True)
    assert h.shape == (2, cfg.max_len, cfg.hidden)
    np.testing.assert_array_equal(table, params["item_embedding"])
    with_head, head_params = _init(CFG)
    assert with_head.apply({"params": head_params}, ids, deterministic=True)[0].shape[-1] == CFG.hidden + 1
    last, _ = model.apply({"params": params}, ids, deterministic=True, last_only=True)
    assert_close(last[:, 0], h[:, -1], rtol=1e-5)  # as in the test above


def test_attention_projection_adds_a_dense_layer_that_identity_weights_make_a_no_op():
    model, params = _init(dataclasses.replace(CFG, attention_projection=True))
    plain, plain_params = _init(CFG)
    for i in range(CFG.num_blocks):
        assert params[f"attention_{i}"]["output"]["kernel"].shape == (CFG.hidden, CFG.hidden)
        assert "output" not in plain_params[f"attention_{i}"]
    ids = jnp.asarray(np.random.default_rng(3).integers(1, NUM_ITEMS + 1, (2, CFG.max_len)), jnp.int32)
    identity = jax.tree_util.tree_map(lambda x: x, plain_params)
    for i in range(CFG.num_blocks):
        identity[f"attention_{i}"] = dict(
            plain_params[f"attention_{i}"], output={"kernel": jnp.eye(CFG.hidden), "bias": jnp.zeros(CFG.hidden)}
        )
    h_identity, _ = model.apply({"params": identity}, ids, deterministic=True)
    h_plain, _ = plain.apply({"params": plain_params}, ids, deterministic=True)
    assert_close(h_identity, h_plain, rtol=1e-6)  # x @ I + 0 is exact in float32: a few ulps at most
    h_trained, _ = model.apply({"params": params}, ids, deterministic=True)
    assert rel_error(h_trained, h_plain) > 1e-2  # its own (random) weights change the output (by ~0.8)


def test_small_normal_init_sets_every_table_and_kernel_to_std_002():
    cfg = dataclasses.replace(CFG, hidden=64, embedding_init="small_normal", attention_projection=True)
    _, params = _init(cfg)
    _, xavier_params = _init(dataclasses.replace(cfg, embedding_init="xavier"))
    leaves = weight_stds(params)
    # Tables, per block q/k/v/output and two feed-forward kernels, and the head's dense kernel.
    assert len(leaves) == 2 + cfg.num_blocks * 6 + 1
    for name, std in leaves.items():
        assert 0.017 < std < 0.023, name
    assert float(jnp.std(xavier_params["attention_0"]["query"]["kernel"])) > 0.1
