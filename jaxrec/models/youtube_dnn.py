"""YoutubeDNN candidate generation (Covington, Adams & Sargin, RecSys 2016), as a next-item model.

Legend: B batch, L history length (left padded, id 0), D hidden, V item-table rows, F per-user inputs.

The user vector at position t is a tower of ReLU layers over the concatenation of
- the average embedding of the last `history_window` items up to and including t (the paper's
  "watch vector": a causal sliding-window mean, so every position is a training example that
  predicts the next item from the past only), and
- optionally (`model.user_features`) embeddings of the user's gender, age group and occupation
  (ML-1M users.dat, delivered by the pipeline as `user_BxF`, see `jaxrec.data.datasets.user_inputs`).
Scores are dot products with the item table (shared with the input embeddings, or a separate
output table when `shared_output_embedding` is off), i.e. the softmax of the paper's extreme
multiclass classification; train it with `model.loss=sampled` (sampled softmax with logQ) or `ce`.

`examples_per_user` = K keeps only the last K positions of each training sequence as examples, the
paper's "fixed number of training examples per user" so that heavy users do not dominate the loss.

Not implemented: the paper's "example age" feature (the leave-one-out pipeline carries no
timestamps; ml-1m-sasrec has none) and search-token / geographic inputs (absent from these data).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.config import ExamplesPerUserConfig, NextItemLossConfig, check
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.embeddings import ITEM_AXES, embed_init, vocab_rows
from jaxrec.models.protocols import NextItemDefaults, last_positions_only

relu_init = nn.initializers.he_uniform()


@dataclasses.dataclass(frozen=True)
class YoutubeDNNConfig(NextItemLossConfig, ExamplesPerUserConfig):
    """YoutubeDNN's keys: the watch window's, the tower's, the user features', the next-item loss's."""

    name: str = "youtube_dnn"  # model registry entry
    dropout: float = 0.2  # dropout rate on the tower's input
    shared_output_embedding: bool = True  # False: a separate output item table
    history_window: int = 50  # items averaged into the user vector at each position (causal window)
    tower_layers: int = 3  # ReLU layers of the user tower (the last one is hidden wide)
    tower_width: int = 256  # width of the tower's other ReLU layers
    user_features: bool = False  # add gender/age/occupation embeddings (ML-1M users.dat)
    feature_dim: int = 8  # width of each user-feature embedding

    def validate(self) -> None:
        super().validate()
        check(
            (0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)"),
            (self.history_window >= 1, "model.history_window must be >= 1"),
            (self.tower_layers >= 1 and self.tower_width >= 1, "model.tower_layers/tower_width must be >= 1"),
        )


def window_mean(x_BxLxD, valid_BxL, window: int, last_only: bool = False):
    """Mean of x over the valid positions among the last `window` up to each position (0 where none).

    Causal by construction: differences of prefix sums, sum(t - window, t] = S[t] - S[t - window].
    With `last_only`, only the newest position's mean: Bx1xD.
    """
    x_BxLxD = x_BxLxD * valid_BxL[..., None]
    count_BxL = valid_BxL.astype(x_BxLxD.dtype)
    if last_only:
        total_Bx1xD = x_BxLxD[:, -window:].sum(axis=1, keepdims=True)
        count_Bx1 = count_BxL[:, -window:].sum(axis=1, keepdims=True)
        return total_Bx1xD / jnp.maximum(count_Bx1, 1.0)[..., None]

    def windowed(values):  # sums over the window ending at each position (axis 1)
        prefix = jnp.cumsum(values, axis=1)
        length = values.shape[1]
        if window >= length:
            return prefix
        pad = [(0, 0), (window, 0)] + [(0, 0)] * (values.ndim - 2)
        return prefix - jnp.pad(prefix, pad)[:, :length]

    return windowed(x_BxLxD) / jnp.maximum(windowed(count_BxL), 1.0)[..., None]


class YoutubeDNN(NextItemDefaults, nn.Module):
    """Capabilities: per-user inputs with `model.user_features`; targets at the last `examples_per_user`
    positions, whose windows are all the step keeps of the batch."""

    config: YoutubeDNNConfig
    num_items: int
    # Rows of each user-feature table (the data's codes: ML-1M's gender, age and occupation,
    # jaxrec.data.datasets.ML1M_USER_FEATURE_ROWS), needed with `model.user_features`.
    user_feature_rows: tuple[int, ...] = ()

    config_class = YoutubeDNNConfig

    @classmethod
    def build(cls, config, num_items: int, num_users: int = 0, user_feature_rows: tuple[int, ...] = ()):
        del num_users  # no user table: users are their features
        rows = tuple(user_feature_rows) if config.user_features else ()
        return cls(config=config, num_items=num_items, user_feature_rows=rows)

    @property
    def uses_user_inputs(self) -> bool:
        """User features arrive as per-user inputs (`user_BxF`); without them the model needs none."""
        return self.config.user_features

    @property
    def uses_user_features(self) -> bool:
        return self.config.user_features

    def setup(self):
        cfg = self.config
        rows = vocab_rows(self.num_items)
        item_init = nn.with_logical_partitioning(embed_init, ITEM_AXES)
        self.item_embedding = self.param("item_embedding", item_init, (rows, cfg.hidden))
        if not cfg.shared_output_embedding:
            self.output_embedding = self.param("output_embedding", item_init, (rows, cfg.hidden))
        if cfg.user_features:
            if not self.user_feature_rows:
                raise ValueError(
                    "YoutubeDNN with model.user_features needs the rows of each user-feature table: "
                    "build_model(config, num_items, user_feature_rows=...)"
                )
            self.feature_embeddings = [
                nn.Embed(size, cfg.feature_dim, embedding_init=embed_init, name=f"user_feature_{i}")
                for i, size in enumerate(self.user_feature_rows)
            ]
        self.input_dropout = Dropout(cfg.dropout)
        widths = [cfg.tower_width] * (cfg.tower_layers - 1) + [cfg.hidden]
        self.tower = [nn.Dense(w, kernel_init=relu_init, name=f"tower_{i}") for i, w in enumerate(widths)]

    def encode(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False, user_BxF=None):
        """User vector after each position: BxLxD (zeros at padding); Bx1xD for the newest with `last_only`.

        `user_BxF`: per-user inputs (columns 1-3: gender, age, occupation codes) when `user_features`;
        None (parameter init) means unknown users.
        """
        cfg = self.config
        if item_ids_BxL.shape[1] > cfg.max_len:
            raise ValueError(f"history length {item_ids_BxL.shape[1]} exceeds model.max_len={cfg.max_len}")
        valid_BxL = item_ids_BxL > 0
        x = window_mean(self.item_embedding[item_ids_BxL], valid_BxL, cfg.history_window, last_only)
        if last_only:
            valid_BxL = valid_BxL[:, -1:]
        if cfg.user_features:
            if user_BxF is None:
                user_BxF = jnp.zeros((item_ids_BxL.shape[0], 1 + len(self.user_feature_rows)), jnp.int32)
            features = [embed(user_BxF[:, 1 + i]) for i, embed in enumerate(self.feature_embeddings)]
            features_BxLxE = jnp.broadcast_to(
                jnp.concatenate(features, axis=-1)[:, None], x.shape[:2] + (cfg.feature_dim * len(features),)
            )
            x = jnp.concatenate([x, features_BxLxE], axis=-1)
        x = self.input_dropout(x, deterministic=deterministic)
        for dense in self.tower:
            x = nn.relu(dense(x))  # ReLU on the user vector too, as the paper's tower
        return x * valid_BxL[..., None]

    def output_table(self):
        """VxD table that scores items: h . table[item] (the softmax weights)."""
        return self.item_embedding if self.config.shared_output_embedding else self.output_embedding

    @staticmethod
    def training_batch(batch, key, config: YoutubeDNNConfig, num_items: int):
        """Next-item targets at every position, or at the last `examples_per_user` = K positions only.

        With K, the step also drops the columns no example reads: the last K positions see only the
        last K + history_window - 1 items, so the tower and the loss run on that many columns (the
        same outputs at those positions: `window_mean` never looks further back).
        """
        del key, num_items
        k = config.examples_per_user
        keep = k + config.history_window - 1
        if k and keep < batch["positives_BxL"].shape[1]:
            batch = {name: x[:, -keep:] if name.endswith("_BxL") else x for name, x in batch.items()}
        return last_positions_only(batch, k)

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False, user_BxF=None):
        h = self.encode(item_ids_BxL, deterministic=deterministic, last_only=last_only, user_BxF=user_BxF)
        return h, self.output_table()
