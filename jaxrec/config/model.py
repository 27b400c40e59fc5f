"""The model section's building blocks: a base dataclass and the groups of fields several models share.

Each model declares its own frozen config dataclass in its module (`SASRecConfig` in
`jaxrec/models/sasrec.py`) from these pieces plus its own fields, holding exactly the keys it reads;
`model.name` picks the class (`jaxrec.models.config_class_of`). `validate()` checks the ranges of the
fields; each piece checks its own and calls `super().validate()`, so a class composed of several
pieces runs all of their checks.
"""

from __future__ import annotations

import dataclasses

from jaxrec.registry import MODELS


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


def check(*conditions: tuple[bool, str]) -> None:
    """Raises ConfigError with the message of the first (ok, message) pair whose ok is false."""
    for ok, message in conditions:
        if not ok:
            raise ConfigError(message)


def config_class_of(name: str) -> type[ModelConfigBase]:
    """The config class of model `name` in the registry (`jaxrec.registry`); ConfigError naming the known models."""
    try:
        return MODELS[name].config_class
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (model.name); known: {', '.join(MODELS)}") from None


def registered_config_classes() -> dict[str, type[ModelConfigBase]]:
    """Model name -> config class, for every registered model."""
    return {name: cls.config_class for name, cls in MODELS.items()}


LOSSES = ("bce", "bpr", "ce", "ce_chunked", "gbce", "sampled")


@dataclasses.dataclass(frozen=True)
class ModelConfigBase:
    """Fields every model has. A model's class redefines `name` with its registry name as the default."""

    name: str = ""  # model registry entry (jaxrec.models.MODELS): picks the config class and the model
    max_len: int = 200  # history length fed to the model (left padded)
    hidden: int = 50  # embedding and hidden width

    def validate(self) -> None:
        """Range and cross-field checks of the model's keys; raises ConfigError naming the key."""
        check((self.max_len >= 2, "model.max_len must be >= 2"), (self.hidden >= 1, "model.hidden must be >= 1"))


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfigBase):
    """Self-attention blocks (sasrec, bert4rec, pinnerformer, bst)."""

    num_blocks: int = 2  # transformer blocks
    num_heads: int = 1  # attention heads
    dropout: float = 0.2  # dropout rate on embeddings, attention weights and feed-forward
    attention: str = "auto"  # auto|reference|xla|causal_blocked|cudnn|{cudnn_padded,pallas_flash,padded}[_causal]

    def validate(self) -> None:
        super().validate()
        check(
            (self.num_blocks >= 1, "model.num_blocks must be >= 1"),
            (self.num_heads >= 1, "model.num_heads must be >= 1"),
            (self.hidden % self.num_heads == 0, "model.hidden must be divisible by model.num_heads"),
            (0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)"),
        )


@dataclasses.dataclass(frozen=True)
class ItemTransformerConfig(TransformerConfig):
    """A transformer over item ids with its own initialisation and position options (sasrec, bert4rec)."""

    attention_dropout: float = -1.0  # dropout on attention weights; -1 = model.dropout (fused kernels need 0)
    # "xavier" = SASRec's TF code (Xavier-uniform tables, items scaled by sqrt(hidden)); "normal" =
    # gSASRec-pytorch (torch's nn.Embedding: N(0, 1) tables, no scaling); "small_normal" = Klenitskiy &
    # Vasilev's SASRec (every table and dense kernel N(0, 0.02), items scaled by sqrt(hidden)); bert4rec takes
    # xavier or small_normal (BERT's initializer_range 0.02, which BERT4Rec's code uses)
    embedding_init: str = "xavier"
    # Rows of the position table. "from_end" counts back from the newest item (SASRec's and BERT4Rec's code:
    # left-padded windows); "from_start" counts from a history's first item (Klenitskiy & Vasilev's code:
    # right-padded batches). They differ only for histories shorter than max_len.
    positions: str = "from_end"

    def validate(self) -> None:
        super().validate()
        check(
            (
                self.attention_dropout == -1.0 or 0.0 <= self.attention_dropout < 1.0,
                "model.attention_dropout must be -1 or in [0, 1)",
            ),
            (
                self.embedding_init in ("xavier", "normal", "small_normal"),
                "model.embedding_init must be xavier, normal or small_normal",
            ),
            (self.positions in ("from_end", "from_start"), "model.positions must be from_end or from_start"),
        )


def attention_dropout_rate(model: ItemTransformerConfig) -> float:
    """The attention-weight dropout rate `model` asks for (`attention_dropout`, or `dropout` when -1)."""
    return model.dropout if model.attention_dropout < 0 else model.attention_dropout


@dataclasses.dataclass(frozen=True)
class NextItemLossConfig(ModelConfigBase):
    """The next-item task's training loss (jaxrec/tasks/next_item/loss.py), for the models it trains."""

    loss: str = "bce"  # training loss: bce | bpr | ce | ce_chunked | gbce | sampled (see jaxrec/ops/losses.py)
    num_negatives: int = 256  # gbce, sampled: negatives per step, shared by every position of the batch
    gbce_t: float = 0.75  # gbce: calibration parameter t (0 = plain BCE with num_negatives)
    # gbce: "batch" = the num_negatives are shared by every position (one BxLxK matmul, cheap); "position" =
    # num_negatives drawn for each position, as gSASRec's reference (a BxLxKxD gather: use micro_batch to bound it)
    gbce_negatives: str = "batch"
    ce_chunk: int = 4096  # ce_chunked: catalogue rows per chunk
    sampled_negatives: str = "uniform"  # loss=sampled: uniform | in_batch (drawn from the batch's positives)

    def validate(self) -> None:
        super().validate()
        check(
            (self.loss in LOSSES, f"model.loss must be one of {', '.join(LOSSES)}"),
            (self.num_negatives >= 1, "model.num_negatives must be >= 1"),
            (0.0 <= self.gbce_t <= 1.0, "model.gbce_t must be in [0, 1]"),
            (self.gbce_negatives in ("batch", "position"), "model.gbce_negatives must be batch or position"),
            (self.ce_chunk >= 1, "model.ce_chunk must be >= 1"),
            (
                self.sampled_negatives in ("uniform", "in_batch"),
                "model.sampled_negatives must be uniform or in_batch",
            ),
        )


@dataclasses.dataclass(frozen=True)
class ExamplesPerUserConfig(ModelConfigBase):
    """A cap on the training positions per sequence (gru4rec, mf, youtube_dnn)."""

    examples_per_user: int = 0  # only the last K positions of a sequence carry loss; 0 = all

    def validate(self) -> None:
        super().validate()
        check((self.examples_per_user >= 0, "model.examples_per_user must be >= 0"))
