"""Model registry: name -> Linen module class.

Each class carries its config dataclass (`config_class`, chosen by `model.name`) and its task (`task`:
"next_item" | "retrieval" | "ctr"), and meets that task's protocol (`jaxrec.models.protocols`). Adding a
model takes its module and its line in MODELS.
"""

from jaxrec.config import ConfigError
from jaxrec.layers.embeddings import vocab_rows
from jaxrec.models.bert4rec import BERT4Rec, BERT4RecConfig
from jaxrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from jaxrec.models.mf import MF, MFConfig
from jaxrec.models.pinnerformer import PinnerFormer, PinnerFormerConfig
from jaxrec.models.protocols import PROTOCOLS, CTRModel, NextItemDefaults, NextItemModel, RetrievalModel
from jaxrec.models.rankers import BST, DIN, RANKERS, WDL, RankerConfig, WDLSeq, build_ranker
from jaxrec.models.sasrec import SASRec, SASRecConfig
from jaxrec.models.youtube_dnn import YoutubeDNN, YoutubeDNNConfig
from jaxrec.registry import MODELS

# The registry (`jaxrec.registry.MODELS`, which the config package reads too): one line per model.
MODELS.update(
    {
        "sasrec": SASRec,
        "bert4rec": BERT4Rec,
        "gru4rec": GRU4Rec,
        "mf": MF,
        "youtube_dnn": YoutubeDNN,
        "pinnerformer": PinnerFormer,
        **RANKERS,  # CTR rankers (wdl, wdl_seq, din, bst): built by build_ranker
    }
)


def model_class(name: str):
    """The module class registered as `name`; ConfigError naming the known models when there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (model.name); known: {', '.join(MODELS)}") from None


def config_class_of(name: str) -> type:
    """The config dataclass of model `name` (what `Config.model` holds when model.name is `name`)."""
    return model_class(name).config_class


def check_config_class(model_cfg) -> type:
    """The class `model_cfg.name` names, after checking that `model_cfg` is an instance of its config class."""
    cls = model_class(model_cfg.name)
    if type(model_cfg) is not cls.config_class:
        raise ConfigError(
            f"model.name={model_cfg.name} takes a {cls.config_class.__name__}, got a {type(model_cfg).__name__} "
            "(config.switch_model changes a config's model)"
        )
    return cls


def build_model(model_cfg, num_items: int, num_users: int = 0, user_feature_rows: tuple[int, ...] = ()):
    """The registry's module for `model_cfg` (a next-item or retrieval model; CTR rankers: build_ranker).

    A next-item model takes the sizes it needs: `num_users` (MF's user table) and `user_feature_rows`, the
    rows of each user-feature table (YoutubeDNN with model.user_features; the data's
    `jaxrec.data.datasets.ML1M_USER_FEATURE_ROWS`).
    """
    cls = check_config_class(model_cfg)
    if cls.task == "next_item":
        return cls.build(model_cfg, num_items, num_users=num_users, user_feature_rows=user_feature_rows)
    if cls.task == "retrieval":
        return cls.build(model_cfg, num_items)
    raise ValueError(
        f"{model_cfg.name} is a {cls.task} model: build it with build_ranker(cfg, num_items, num_categories, "
        "user_vocab, action_vocab)"
    )


__all__ = [
    "BST",
    "DIN",
    "MODELS",
    "PROTOCOLS",
    "RANKERS",
    "WDL",
    "BERT4Rec",
    "BERT4RecConfig",
    "CTRModel",
    "GRU4Rec",
    "GRU4RecConfig",
    "MF",
    "MFConfig",
    "NextItemDefaults",
    "NextItemModel",
    "PinnerFormer",
    "PinnerFormerConfig",
    "RankerConfig",
    "RetrievalModel",
    "SASRec",
    "SASRecConfig",
    "WDLSeq",
    "YoutubeDNN",
    "YoutubeDNNConfig",
    "build_model",
    "build_ranker",
    "check_config_class",
    "config_class_of",
    "model_class",
    "vocab_rows",
]
