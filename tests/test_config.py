import dataclasses
import importlib.util

import pytest

from jaxrec import config as config_lib
from jaxrec.config import Config, ConfigError
from jaxrec.models import BERT4RecConfig, MFConfig, RankerConfig, SASRecConfig
from tests.conftest import REPO


def test_override_coerces_by_field_type():
    cfg = config_lib.apply_overrides(
        Config(),
        [
            "train.num_epochs=7",
            "train.learning_rate=0.01",
            "model.shared_output_embedding=false",
            "data.name=file",
            "eval.ks=10,1",
        ],
    )
    assert cfg.train.num_epochs == 7 and isinstance(cfg.train.num_epochs, int)
    assert cfg.train.learning_rate == 0.01
    assert cfg.model.shared_output_embedding is False
    assert cfg.data.name == "file"
    assert cfg.eval.ks == (1, 10)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.num_epoch=3", "unknown config key 'train.num_epoch'"),
        ("trian.num_epochs=3", "unknown config section 'trian'"),
        ("train.num_epochs=three", "train.num_epochs: expected int, got 'three'"),
        ("model.shared_output_embedding=maybe", "expected a boolean"),
        ("num_epochs=3", "expected section.field"),
        ("train.num_epochs", "expected key=value"),
        ("eval.ks=1,x", "eval.ks: expected comma-separated integers"),
    ],
)
def test_bad_overrides_name_the_problem(assignment, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.apply_overrides(Config(), [assignment])


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.dropout=1.5", "model.dropout"),
        ("model.num_heads=3", "divisible"),
        ("train.batch_size=0", "train.batch_size"),
        ("eval.select_metric=test/ndcg@10_full", "never select on test"),
        ("train.loss_normalizer=tokens", "train.loss_normalizer must be batch or epoch"),
        ("mesh.cpu_devices=-1", "mesh.cpu_devices must be >= 0"),
        ("data.validation_users=-5", "data.validation_users must be >= 0"),
        ("model.embedding_init=glorot", "model.embedding_init must be xavier, normal or small_normal"),
        ("model.gbce_negatives=user", "model.gbce_negatives must be batch or position"),
        ("model.positions=absolute", "model.positions must be from_end or from_start"),
        # Keys of other models do not exist in the model's config class: refused by the override itself.
        ("model.name=gru4rec model.positions=from_start", "'model.positions': not a key of model gru4rec"),
        ("model.positions=from_start model.name=gru4rec", "'model.positions': not a key of model gru4rec"),
        ("model.output_head=false", "'model.output_head': not a key of model sasrec"),
        ("model.attention_projection=true", "'model.attention_projection': not a key of model sasrec"),
        ("model.name=bert4rec model.loss=bpr", "bert4rec trains with ce, ce_chunked, gbce or sampled"),
        ("model.name=bert4rec model.loss=ce model.mask_prob=1.0", "model.mask_prob must be in"),
        ("model.name=youtube_dnn model.history_window=0", "model.history_window must be >= 1"),
        ("model.name=pinnerformer model.item_tower=gnn", "model.item_tower must be one of"),
        ("model.name=din ctr.time_buckets=1", "ctr.time_buckets must be >= 2"),
    ],
)
def test_validate_rejects_bad_values(assignment, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config_lib.apply_overrides(Config(), assignment.split()))


def test_round_trip_through_dict():
    cfg = config_lib.apply_overrides(Config(), ["eval.ks=5,10", "train.seed=3"])
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config keys in train: bogus"):
        config_lib.from_dict({"train": {"bogus": 1}})


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_loads_and_validates(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    assert isinstance(cfg, Config)
    config_lib.validate(cfg)


def test_non_default_embedding_init_is_refused_for_models_without_it():
    cfg = config_lib.apply_overrides(Config(), ["model.name=bert4rec", "model.loss=ce", "model.embedding_init=normal"])
    with pytest.raises(ConfigError, match="model.embedding_init=normal is not implemented for bert4rec"):
        config_lib.validate(cfg)
    with pytest.raises(ConfigError, match="'model.embedding_init': not a key of model gru4rec"):  # no such key
        config_lib.apply_overrides(Config(), ["model.name=gru4rec", "model.embedding_init=small_normal"])


def test_a_model_key_of_another_model_is_refused_naming_the_key_the_model_and_its_keys():
    with pytest.raises(ConfigError) as error:
        config_lib.apply_overrides(Config(), ["model.mask_prob=0.3"])
    message = str(error.value)
    assert "'model.mask_prob'" in message and "model sasrec (SASRecConfig)" in message
    assert "its keys: name, max_len, hidden" in message and "shared_output_embedding" in message
    assert "a key of bert4rec" in message
    with pytest.raises(ConfigError, match="'model.hiden': not a key of model sasrec"):
        config_lib.apply_overrides(Config(), ["model.hiden=3"])


def test_model_name_switches_the_class_keeping_shared_values():
    cfg = config_lib.apply_overrides(Config(), ["model.hidden=64", "model.loss=ce", "model.name=bert4rec"])
    assert type(cfg.model) is BERT4RecConfig and cfg.model.name == "bert4rec"
    assert (cfg.model.hidden, cfg.model.loss, cfg.model.mask_prob) == (64, "ce", 0.2)
    # model.name is applied first, wherever it stands: the other keys are the new class's.
    cfg = config_lib.apply_overrides(Config(), ["model.mask_prob=0.3", "model.loss=ce", "model.name=bert4rec"])
    assert cfg.model.mask_prob == 0.3
    back = config_lib.override(config_lib.override(cfg, "model.mask_prob", "0.2"), "model.name", "sasrec")
    assert type(back.model) is SASRecConfig and back.model.loss == "ce"
    # A setting the new model has no key for is never dropped silently.
    with pytest.raises(ConfigError, match=r"model.mask_prob=0.3 \(set for bert4rec\) is not a key of sasrec"):
        config_lib.override(cfg, "model.name", "sasrec")
    with pytest.raises(ConfigError, match="unknown model 'gpt'.*known: sasrec, bert4rec"):
        config_lib.override(cfg, "model.name", "gpt")
    ranker = config_lib.apply_overrides(Config(), ["model.name=wdl", "model.name=din"])
    assert type(ranker.model) is RankerConfig and ranker.model.name == "din"


def test_model_config_builds_the_class_the_name_picks():
    assert config_lib.model_config("mf", hidden=8) == MFConfig(hidden=8)
    with pytest.raises(ConfigError, match="model.dropout: not a key of model mf"):
        config_lib.model_config("mf", dropout=0.1)
    mismatched = Config(model=dataclasses.replace(SASRecConfig(), name="bert4rec"))
    with pytest.raises(ConfigError, match="model.name=bert4rec takes a BERT4RecConfig"):
        config_lib.validate(mismatched)


def test_from_dict_picks_the_model_class_and_refuses_old_flat_sections():
    cfg = config_lib.apply_overrides(Config(), ["model.name=youtube_dnn", "model.user_features=true"])
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg
    assert type(config_lib.from_dict({}).model) is SASRecConfig
    with pytest.raises(ConfigError, match="unknown model 'gpt'"):
        config_lib.from_dict({"model": {"name": "gpt"}})
    with pytest.raises(ConfigError, match="unknown config keys in model \\(sasrec, SASRecConfig\\): bogus"):
        config_lib.from_dict({"model": {"name": "sasrec", "bogus": 1}})
    # What jaxrec wrote before each model had its own class: every model's keys in one section.
    flat = {key: None for key in config_lib.FLAT_MODEL_KEYS} | {"name": "sasrec"}
    with pytest.raises(ConfigError, match="written by an earlier jaxrec with a flat model section") as error:
        config_lib.from_dict({"model": flat})
    assert "examples_per_user" in str(error.value)  # the first foreign keys, by name


def test_unused_settings_lists_the_keys_set_away_from_their_defaults():
    cfg = config_lib.apply_overrides(Config(), ["retrieval.num_sampled=8", "train.seed=3", "model.hidden=8"])
    keys = ["retrieval.num_sampled", "retrieval.logq", "train.seed", "model.hidden", "model.mask_prob"]
    assert config_lib.unused_settings(cfg, keys) == ["retrieval.num_sampled", "train.seed", "model.hidden"]
    with pytest.raises(ConfigError, match="unknown config key 'train.bogus'"):
        config_lib.unused_settings(cfg, ["train.bogus"])


def test_to_json_is_gone():
    assert not hasattr(config_lib, "to_json")
