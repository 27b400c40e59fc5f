import importlib.util

import pytest

from jaxrec import config as config_lib
from jaxrec.config import Config, ConfigError
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
        ("eval.select_metric=valid/ndcg@3_full", "is not computed"),
        ("train.loss_normalizer=tokens", "train.loss_normalizer must be batch or epoch"),
        ("mesh.cpu_devices=-1", "mesh.cpu_devices must be >= 0"),
        ("data.validation_users=-5", "data.validation_users must be >= 0"),
        ("model.embedding_init=glorot", "model.embedding_init must be xavier, normal or small_normal"),
        ("model.gbce_negatives=user", "model.gbce_negatives must be batch or position"),
        ("model.positions=absolute", "model.positions must be from_end or from_start"),
        ("model.name=gru4rec model.positions=from_start", "only implemented for sasrec and bert4rec"),
        ("model.output_head=false", "model.output_head=false is only for bert4rec"),
        ("model.attention_projection=true", "model.attention_projection=true is only for bert4rec"),
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


@pytest.mark.parametrize("model,init", [("bert4rec", "normal"), ("gru4rec", "small_normal")])
def test_non_default_embedding_init_is_refused_for_models_without_it(model, init):
    cfg = config_lib.apply_overrides(Config(), [f"model.name={model}", "model.loss=ce", f"model.embedding_init={init}"])
    with pytest.raises(ConfigError, match=f"model.embedding_init={init} is not implemented for {model}"):
        config_lib.validate(cfg)
