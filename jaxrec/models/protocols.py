"""What each task calls on a model: one Protocol per task, and the next-item models' default capabilities.

Every model class states its task (`task`: "next_item" | "retrieval" | "ctr") and its config dataclass
(`config_class`); the task reads the members below directly, never probing with getattr. A next-item
model inherits `NextItemDefaults` and overrides what differs from them (BERT4Rec's cloze, MF's user ids).

Legend: B batch, L history length (left padded, id 0), D hidden, V item-table rows, F per-user inputs,
N items asked for, C item-feature columns.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import jax.numpy as jnp

TASKS = ("next_item", "retrieval", "ctr")


@runtime_checkable
class NextItemModel(Protocol):
    """A sequence model scored by dot products with an item table (jaxrec/tasks/next_item)."""

    task: ClassVar[str]  # "next_item"
    config_class: ClassVar[type]  # its config dataclass
    config: Any  # an instance of config_class
    num_items: int  # catalogue size: item ids 1..num_items, 0 = padding
    uses_user_inputs: bool  # the batches carry user_BxF (column 0: user id + 1), passed to __call__/encode
    uses_user_features: bool  # user_BxF's columns 1.. carry the data's user features (else zeros)
    trains_on_whole_sequence: bool  # batches hold the whole sequence: the model builds its own targets

    @classmethod
    def build(
        cls, config, num_items: int, num_users: int = 0, user_feature_rows: tuple[int, ...] = ()
    ) -> NextItemModel:
        """The module for `config`, a catalogue of `num_items`, `num_users` users and user-feature tables of
        `user_feature_rows` rows (each model takes the sizes it needs and ignores the others)."""
        ...

    @staticmethod
    def target_fraction(config) -> float | None:
        """The expected share of positions with a training target when the model trains on a sparse share
        (the loss then scores only those); None: every position may carry one."""
        ...

    @staticmethod
    def training_batch(batch: dict, key, config, num_items: int) -> dict:
        """The pipeline's batch as the loss reads it (inputs_BxL, positives_BxL, ...), inside the step."""
        ...

    @staticmethod
    def inference_inputs(inputs_BxL, num_items: int):
        """The history as the model reads it at inference (its last position's output scores the next item)."""
        ...

    def encode(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False, **user_inputs):
        """States after each position, BxLxD (Bx1xD for the newest with `last_only`); user_BxF= when
        `uses_user_inputs`."""
        ...

    def output_table(self):
        """The VxD table that scores items: h . table[item]."""
        ...

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False, **user_inputs):
        """(encode(...), output_table())."""
        ...

    def init(self, rngs, *args, **kwargs) -> dict: ...

    def apply(self, variables, *args, **kwargs) -> Any: ...


@runtime_checkable
class RetrievalModel(Protocol):
    """A two-tower model: user embeddings from event histories, item embeddings (jaxrec/tasks/retrieval)."""

    task: ClassVar[str]  # "retrieval"
    config_class: ClassVar[type]
    config: Any
    num_items: int

    @classmethod
    def build(cls, config, num_items: int) -> RetrievalModel: ...

    def encode(self, batch: dict, *, deterministic: bool = True):
        """L2-normalised user embeddings after each position of the history batch: BxLxD."""
        ...

    def encode_users(self, batch: dict, *, deterministic: bool = True):
        """L2-normalised user embeddings at the newest position: BxD."""
        ...

    def encode_items(self, item_ids_N, item_features_NxC=None):
        """L2-normalised item embeddings: NxD."""
        ...

    def __call__(self, batch: dict, item_ids_N=None, item_features_NxC=None, *, deterministic: bool = True): ...

    def init(self, rngs, *args, **kwargs) -> dict: ...

    def apply(self, variables, *args, **kwargs) -> Any: ...


@runtime_checkable
class CTRModel(Protocol):
    """A ranker: the click logit of (user, history, candidate) examples (jaxrec/tasks/ctr)."""

    task: ClassVar[str]  # "ctr"
    config_class: ClassVar[type]
    config: Any
    num_items: int
    reads_history: bool  # reads the history (so the history's action embeddings, with ctr.history_actions)

    @classmethod
    def build(cls, cfg, num_items: int, num_categories: int, user_vocab: int, action_vocab: int = 0) -> CTRModel:
        """The ranker for the whole Config `cfg` (its `ctr` section holds the rankers' knobs)."""
        ...

    def __call__(self, batch: dict, *, deterministic: bool = True):
        """(logits_B float32, aux)."""
        ...

    def init(self, rngs, *args, **kwargs) -> dict: ...

    def apply(self, variables, *args, **kwargs) -> Any: ...


PROTOCOLS: dict[str, type] = {"next_item": NextItemModel, "retrieval": RetrievalModel, "ctr": CTRModel}


class NextItemDefaults:
    """The next-item capabilities a model has unless it says otherwise (mixed into its Linen module).

    No per-user inputs, targets the pipeline makes (the next item at every position), every position a
    potential target, and the history read as it is at inference.
    """

    task = "next_item"
    uses_user_inputs = False
    uses_user_features = False
    trains_on_whole_sequence = False

    @classmethod
    def build(cls, config, num_items: int, num_users: int = 0, user_feature_rows: tuple[int, ...] = ()):
        del num_users, user_feature_rows  # no user table
        return cls(config=config, num_items=num_items)

    @staticmethod
    def target_fraction(config) -> float | None:
        del config
        return None

    @staticmethod
    def training_batch(batch: dict, key, config, num_items: int) -> dict:
        del key, config, num_items
        return batch

    @staticmethod
    def inference_inputs(inputs_BxL, num_items: int):
        del num_items
        return inputs_BxL


def last_positions_only(batch: dict, k: int) -> dict:
    """The batch with targets only at the last `k` positions of each row (k = 0: all positions).

    Rows are left padded and aligned to the end, so the last k columns are each sequence's last k
    training examples (fewer when the sequence is shorter). A `training_batch` for `examples_per_user`.
    """
    if k == 0:
        return batch
    positives_BxL = batch["positives_BxL"]
    length = positives_BxL.shape[1]
    keep_L = jnp.arange(length) >= length - k
    return {**batch, "positives_BxL": jnp.where(keep_L[None], positives_BxL, 0)}
