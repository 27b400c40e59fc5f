"""PinnerFormer: shapes and unit norms, causality, optional features, time features, item towers."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.events import history_batch, synthetic_events
from jaxrec.models import PinnerFormerConfig, build_model
from jaxrec.models.pinnerformer import EVENT_FEATURES
from jaxrec.tasks.retrieval.temporal import TemporalEvalConfig, evaluate, temporal_split, user_embedder
from tests.conftest import assert_close, rel_error

L = 12
DS = synthetic_events(num_users=30, num_items=60, mean_length=20, seed=0)
CFG = PinnerFormerConfig(
    max_len=L,
    hidden=16,
    num_blocks=2,
    num_heads=2,
    dropout=0.1,
    num_actions=DS.action_vocab,
    num_surfaces=DS.surface_vocab,
    feature_dim=4,
)


def _batch(users=(0, 1, 2), lengths=None):
    users = np.asarray(users)
    lengths = np.array([len(DS.items[u]) for u in users]) if lengths is None else np.asarray(lengths)
    query = np.array([DS.timestamps[u][n - 1] + 60 if n else 1_000_000_000 for u, n in zip(users, lengths)])
    return {k: jnp.asarray(v) for k, v in history_batch(DS, users, lengths, query, L).items()}


def _init(cfg=CFG, batch=None):
    model = build_model(cfg, DS.num_items)
    params = model.init({"params": jax.random.key(0)}, _batch() if batch is None else batch)["params"]
    return model, nn.unbox(params)  # the plain arrays (init boxes the tables with their logical axes)


def _probe(h_D):
    return jnp.dot(h_D, jnp.linspace(-1.0, 2.0, h_D.shape[-1]))


def test_shapes_unit_norms_and_empty_history_with_and_without_jit():
    model, params = _init()
    batch = _batch(users=(0, 1, 2), lengths=(len(DS.items[0]), 3, 0))  # full, short (padded), empty
    for encode in (model.apply, jax.jit(model.apply)):
        h, items = encode({"params": params}, batch)
        assert h.shape == (3, L, CFG.hidden) and items.shape == (DS.num_items + 1, CFG.hidden)
        assert np.all(np.isfinite(h)) and np.all(np.isfinite(items))
        # Unit vectors: a float32 norm of 16 squares, N eps ~ 2e-6 relative.
        np.testing.assert_allclose(np.linalg.norm(h, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(items, axis=-1), 1.0, rtol=1e-5)
    users = model.apply({"params": params}, batch, method=model.encode_users)
    assert_close(users, h[:, -1], rtol=1e-6)  # the same computation: a few ulps at most
    ids = jnp.array([3, 0, 7])
    assert_close(model.apply({"params": params}, ids, method=model.encode_items), items[ids], rtol=1e-6)


def test_causality_by_gradients():
    """d output[t] / d item-embedding[s] is zero for later events and nonzero for earlier ones (with dropout on)."""
    model, params = _init()
    batch = _batch(users=(0,))
    batch["item_ids_BxL"] = jnp.arange(1, L + 1, dtype=jnp.int32)[None]  # distinct ids: row s + 1 is position s
    positions = (0, 5, L - 2)

    def probes(table):
        h, _ = model.apply(
            {"params": {**params, "item_embedding": table}},
            batch,
            deterministic=False,
            rngs={"dropout": jax.random.key(3)},
        )
        return jnp.stack([_probe(h[0, t]) for t in positions])

    jacobian = np.asarray(jax.jit(jax.jacrev(probes))(params["item_embedding"]))
    for grad, t in zip(jacobian, positions):
        assert np.all(grad[t + 2 : L + 1] == 0), "output depends on a later event"
        assert np.all(np.abs(grad[1 : t + 2]).sum(-1) > 0)


def test_causality_by_perturbing_every_feature_of_later_events():
    model, params = _init()
    batch = _batch()  # the shapes the other eager tests compiled; row 0 is perturbed
    t = 6
    later = {
        "item_ids_BxL": batch["item_ids_BxL"].at[0, t + 1 :].set(5),
        "action_BxL": batch["action_BxL"].at[0, t + 1 :].set(1),
        "surface_BxL": batch["surface_BxL"].at[0, t + 1 :].set(2),
        "duration_BxL": batch["duration_BxL"].at[0, t + 1 :].multiply(9.0),
        "timestamps_BxL": batch["timestamps_BxL"].at[0, t + 1 :].add(3 * 86400 + 17),
    }
    h, _ = model.apply({"params": params}, batch)
    h2, _ = model.apply({"params": params}, {**batch, **later})  # query time unchanged
    assert_close(h2[0, : t + 1], h[0, : t + 1], rtol=1e-6)  # masked later events add exactly 0: a few ulps at most
    assert rel_error(h2[0, t + 1 :], h[0, t + 1 :]) > 1e-2  # while the later outputs change (by ~0.16)


@pytest.mark.parametrize("feature", EVENT_FEATURES)
def test_removing_a_feature_removes_its_parameters_and_inputs(feature):
    kept = tuple(f for f in EVENT_FEATURES if f != feature)
    cfg = dataclasses.replace(CFG, event_features=kept)
    batch = _batch()
    key = {"action": "action_BxL", "surface": "surface_BxL", "duration": "duration_BxL", "age": "query_time_B"}
    if feature in key:
        del batch[key[feature]]  # the model must not read it
    model, params = _init(cfg, batch)
    _, full = _init()
    width = {"action": CFG.feature_dim, "surface": CFG.feature_dim, "time": 2 * len(CFG.time_periods)}.get(feature, 1)
    assert params["input_projection"]["kernel"].shape[0] == full["input_projection"]["kernel"].shape[0] - width
    if feature in ("action", "surface"):
        assert f"{feature}_embedding" in full and f"{feature}_embedding" not in params
    h, _ = model.apply({"params": params}, batch)
    assert np.all(np.isfinite(h))


def test_minimal_config_runs_on_items_and_timestamps_only():
    cfg = dataclasses.replace(CFG, event_features=())
    batch = {"item_ids_BxL": _batch()["item_ids_BxL"]}
    model, params = _init(cfg, batch)
    assert set(params) >= {"item_embedding", "input_projection"} and "action_embedding" not in params
    assert np.all(np.isfinite(model.apply({"params": params}, batch)[0]))


def test_time_features_change_the_output_when_only_timestamps_change():
    batch = _batch()
    shifted = {**batch, "timestamps_BxL": jnp.where(batch["item_ids_BxL"] > 0, batch["timestamps_BxL"] + 5000, 0)}
    for features, changes in ((("time",), True), (("age",), True), (("action", "duration"), False)):
        model, params = _init(dataclasses.replace(CFG, event_features=features))
        h, _ = model.apply({"params": params}, batch)
        h2, _ = model.apply({"params": params}, shifted)
        if changes:  # by ~0.8 of the largest value
            assert rel_error(h2, h) > 1e-2, features
        else:  # inputs the model does not read: the same sums, a few ulps at most
            assert_close(h2, h, rtol=1e-6, err_msg=str(features))
    # "gap" sees only differences: a uniform shift leaves it unchanged, a changed gap does not.
    model, params = _init(dataclasses.replace(CFG, event_features=("gap",)))
    h, _ = model.apply({"params": params}, batch)
    assert_close(model.apply({"params": params}, shifted)[0], h, rtol=1e-6)  # int32 timestamps: the same gaps
    stretched = {**batch, "timestamps_BxL": batch["timestamps_BxL"].at[:, -1].add(7200)}
    assert rel_error(model.apply({"params": params}, stretched)[0][:, -1], h[:, -1]) > 1e-4  # ~7e-3; rounding 1e-7


def test_mlp_item_tower_uses_item_features():
    cfg = dataclasses.replace(CFG, item_tower="mlp")
    features = jnp.asarray(DS.item_categories, jnp.float32)
    model = build_model(cfg, DS.num_items)
    params = nn.unbox(model.init({"params": jax.random.key(0)}, _batch(), None, features)["params"])
    assert params["item_mlp_in"]["kernel"].shape == (CFG.hidden + features.shape[1], CFG.hidden)
    ids = jnp.arange(DS.num_items + 1)
    items = model.apply({"params": params}, ids, features, method=model.encode_items)
    np.testing.assert_allclose(np.linalg.norm(items, axis=-1), 1.0, rtol=1e-5)  # unit vectors, as above
    other = model.apply({"params": params}, ids, 1.0 - features, method=model.encode_items)
    assert rel_error(other, items) > 1e-2  # other features, other items (by ~1.6)


def test_bad_config_and_missing_batch_keys_are_named():
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        _init(dataclasses.replace(CFG, event_features=("action", "colour")))
    with pytest.raises(ValueError, match="item_tower"):
        _init(dataclasses.replace(CFG, item_tower="gnn"))
    batch = _batch()
    del batch["surface_BxL"]
    with pytest.raises(KeyError, match="surface_BxL"):
        _init(batch=batch)


def test_evaluates_end_to_end_through_the_temporal_protocol():
    model, params = _init()
    split = temporal_split(DS, test_fraction=0.2)
    items = model.apply({"params": params}, jnp.arange(DS.num_items + 1), method=model.encode_items)
    result = evaluate(user_embedder(model, params), items, split, TemporalEvalConfig(batch_size=16, ks=(10,)), L)
    assert 0.0 <= result["recall@10"] <= 1.0 and 0.0 < result["p90_coverage@10"] <= 1.0
    assert result["entropy@50"] > 0.0
