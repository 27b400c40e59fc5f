"""The model contract: every registered model meets its task's protocol, owns a config class that round-trips
through config.json, names its item tables' logical axes, and depends only on config, layers and protocols."""

import ast
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxrec import config as config_lib
from jaxrec.config import Config, CTRConfig, ModelConfigBase
from jaxrec.models import MODELS, PROTOCOLS, model_class
from tests.conftest import REPO

NUM_ITEMS, MAX_LEN = 20, 6

# The flat ModelConfig's defaults before each model had its own class: a key keeps its meaning.
OLD_DEFAULTS = dict(
    max_len=200, hidden=50, num_blocks=2, num_heads=1, dropout=0.2, attention_dropout=-1.0, attention="auto",
    shared_output_embedding=True, embedding_init="xavier", mask_prob=0.2, output_head=True,
    attention_projection=False, positions="from_end", loss="bce", num_negatives=256, gbce_t=0.75,
    gbce_negatives="batch", ce_chunk=4096, event_features=("action", "surface", "duration", "time", "gap", "age"),
    time_periods=(3600.0, 86400.0, 604800.0, 2629746.0, 31556952.0), num_actions=8, num_surfaces=8, feature_dim=8,
    item_tower="id", sampled_negatives="uniform", examples_per_user=0, history_window=50, tower_layers=3,
    tower_width=256, user_features=False,
)  # fmt: skip


def _build(name: str, **fields):
    cls = model_class(name)
    cfg = config_lib.model_config(name, max_len=MAX_LEN, hidden=8, **fields)
    if cls.task == "next_item":
        return cls.build(cfg, NUM_ITEMS, num_users=5, user_feature_rows=(3, 8, 22))
    if cls.task == "retrieval":
        return cls.build(cfg, NUM_ITEMS)
    return cls.build(Config(model=cfg, ctr=CTRConfig(mlp=(4,), attention_mlp=(4,), wide=True)), NUM_ITEMS, 0, 0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_meets_its_task_protocol(name):
    cls = model_class(name)
    assert cls.task in PROTOCOLS and issubclass(cls.config_class, ModelConfigBase)
    model = _build(name)
    assert isinstance(model, PROTOCOLS[cls.task]), f"{name} lacks members of {PROTOCOLS[cls.task].__name__}"
    if cls.task == "next_item":  # capabilities are stated, with these types
        assert isinstance(model.uses_user_inputs, bool) and isinstance(model.trains_on_whole_sequence, bool)
        assert isinstance(model.uses_user_features, bool)
        fraction = model.target_fraction(model.config)
        assert fraction is None or 0.0 < fraction < 1.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_class_round_trips_through_config_json_with_the_old_defaults(name):
    cls = model_class(name).config_class
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    cfg = config_lib.apply_overrides(Config(), [f"model.name={name}", "model.max_len=7"])
    assert type(cfg.model) is cls and cfg.model.name == name
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg
    config_lib.validate(config_lib.override(cfg, "model.loss", "ce") if name == "bert4rec" else cfg)
    for field in dataclasses.fields(cls):
        if field.name in OLD_DEFAULTS:
            assert field.default == OLD_DEFAULTS[field.name], (name, field.name)


def _init_shapes(model):
    """The boxed variables of `model.init`, as shapes (no compile)."""
    key = jax.random.key(0)
    if model.task == "next_item":
        return jax.eval_shape(lambda: model.init({"params": key}, jnp.ones((1, MAX_LEN), jnp.int32), method="encode"))
    if model.task == "retrieval":
        return jax.eval_shape(lambda: model.init({"params": key}, {"item_ids_BxL": jnp.ones((1, MAX_LEN), jnp.int32)}))
    batch = {
        "history_BxL": jnp.ones((2, MAX_LEN), jnp.int32),
        "history_time_BxL": jnp.ones((2, MAX_LEN), jnp.int32),
        "candidate_B": jnp.ones((2,), jnp.int32),
        "time_B": jnp.full((2,), 9, jnp.int32),
    }
    return jax.eval_shape(lambda: model.init({"params": key}, batch))


ITEM_TABLES = {"item_embedding", "output_embedding", "item"}  # V x D
ITEM_VECTORS = {"output_bias", "wide_item"}  # V


@pytest.mark.parametrize("name", sorted(MODELS))
def test_item_tables_carry_their_logical_axes(name):
    fields = {"event_features": ()} if name == "pinnerformer" else {}
    if name in ("sasrec", "gru4rec", "youtube_dnn"):
        fields["shared_output_embedding"] = False
    params = _init_shapes(_build(name, **fields))["params"]
    specs = nn.get_partition_spec(params)
    found = set()
    for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.P)):
        leaf = path[-1].key
        if leaf in ITEM_TABLES | ITEM_VECTORS:
            found.add(leaf)
            assert tuple(spec) == (("item", "embed") if leaf in ITEM_TABLES else ("item",)), (path, spec)
    assert found & {"item_embedding", "item"}, "no item table found"
    unboxed = nn.unbox(params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(unboxed))


def test_model_modules_depend_on_config_layers_and_protocols_only():
    """No model imports another model's module, the data layer, the engine or a task."""
    allowed = ("jaxrec.config", "jaxrec.layers", "jaxrec.models.protocols")
    for path in sorted((REPO / "jaxrec" / "models").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        wrong = [m for m in imported if m.startswith("jaxrec") and not m.startswith(allowed)]
        assert not wrong, f"{path.name} imports {wrong}"
