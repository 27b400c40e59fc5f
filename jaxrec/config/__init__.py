"""Typed experiment configuration.

A `Config` is a tree of frozen dataclasses (`sections.py`). Experiments live in `configs/*.py` as
`get_config() -> Config`; the command line overrides single fields with `--set section.field=value`,
coerced by the field's type (`overrides.py`). Unknown keys and values that do not parse as the field's
type are rejected with a `ConfigError` that names them.

The model section is the config class of the model `model.name` names, declared in the model's own
module from the pieces in `model.py` (`SASRecConfig` in `jaxrec/models/sasrec.py`, ...); build one with
`model_config("bert4rec", hidden=64)` or the class itself. `--set model.name=...` switches the class.
"""

from jaxrec.config.checks import CTR_ACTIVATIONS, FREQUENCIES, NEGATIVES, OBJECTIVES, validate
from jaxrec.config.model import (
    LOSSES,
    ConfigError,
    ExamplesPerUserConfig,
    ItemTransformerConfig,
    ModelConfigBase,
    NextItemLossConfig,
    TransformerConfig,
    attention_dropout_rate,
    check,
    config_class_of,
)
from jaxrec.config.overrides import (
    FLAT_MODEL_KEYS,
    ORDERED_INT_TUPLES,
    apply_overrides,
    from_dict,
    model_config,
    override,
    parse_ks,
    switch_model,
    to_dict,
    unused_settings,
)
from jaxrec.config.sections import (
    DEFAULT_MODEL,
    Config,
    CTRConfig,
    DataConfig,
    EvalConfig,
    MeshConfig,
    RetrievalConfig,
    TrainConfig,
)

__all__ = [
    "CTR_ACTIVATIONS",
    "DEFAULT_MODEL",
    "FLAT_MODEL_KEYS",
    "FREQUENCIES",
    "LOSSES",
    "NEGATIVES",
    "OBJECTIVES",
    "ORDERED_INT_TUPLES",
    "CTRConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExamplesPerUserConfig",
    "ItemTransformerConfig",
    "MeshConfig",
    "ModelConfigBase",
    "NextItemLossConfig",
    "RetrievalConfig",
    "TrainConfig",
    "TransformerConfig",
    "apply_overrides",
    "attention_dropout_rate",
    "check",
    "config_class_of",
    "from_dict",
    "model_config",
    "override",
    "parse_ks",
    "switch_model",
    "to_dict",
    "unused_settings",
    "validate",
]
