"""PinnerFormer (Pancha et al., KDD 2022): a causal transformer user tower for two-tower retrieval.

Legend: B batch, L history length (left padded, item id 0), D hidden, P time periods,
N items asked for, C item-feature columns, V item-table rows.

User tower. Each event's input is the concatenation of the item's id embedding, learned
embeddings of its categorical features (action type, surface), log(1 + duration), and time
features: sin and cos of the event time over fixed periods ("time"), log(1 + seconds since the
previous event) ("gap") and log(1 + seconds from the event to the query time, when the embedding
is computed) ("age"). A dense layer projects it to D; learned positions are added (aligned to the
newest event); `num_blocks` pre-norm causal transformer blocks; a final LayerNorm; an MLP head;
L2 normalisation. Every position gives an embedding, so dense objectives (the paper's
all-action loss) can train on all of them; the user embedding is the newest position's.

Item tower: the id table ("id"), or an MLP over [id embedding, supplied item features] ("mlp"),
L2-normalised. The id table is also the item part of the user tower's input.

A feature left out of `model.event_features` has no parameter and no batch key is read for it.
The batch keys are those of `jaxrec.data.events.history_batch`. Causality: the output at
position l reads events 0..l and the query time only, so for dense training pass the time the
sequence ends (or a cut-off) as `query_time_B`, as the paper does.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.config import TransformerConfig, check
from jaxrec.layers.attention import causal_padding_mask
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.embeddings import ITEM_AXES, POSITION_AXES, embed_init, vocab_rows
from jaxrec.layers.transformer import SelfAttention, dense_init, layer_norm

EVENT_FEATURES = ("action", "surface", "duration", "time", "gap", "age")
ITEM_TOWERS = ("id", "mlp")


@dataclasses.dataclass(frozen=True)
class PinnerFormerConfig(TransformerConfig):
    """PinnerFormer's keys: the transformer's, the event features' and the item tower's (its loss and
    negatives are the retrieval section's)."""

    name: str = "pinnerformer"  # model registry entry
    # per-event inputs besides the item; drop a name to ablate it or when the data lacks it
    event_features: tuple[str, ...] = EVENT_FEATURES
    # periods (seconds) of the sin/cos "time" features: hour, day, week, mean month, mean year
    time_periods: tuple[float, ...] = (3600.0, 86400.0, 604800.0, 2629746.0, 31556952.0)
    num_actions: int = 8  # rows of the action-type embedding (ids 1..num_actions-1, 0 = padding)
    num_surfaces: int = 8  # rows of the surface embedding (ids 1..num_surfaces-1, 0 = padding)
    feature_dim: int = 8  # width of each categorical event-feature embedding
    item_tower: str = "id"  # item embeddings from the "id" table, or an "mlp" over item features + id

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.event_features) - set(EVENT_FEATURES))
        timed = "time" in self.event_features
        check(
            (not unknown, f"model.event_features: unknown {unknown}; known: {', '.join(EVENT_FEATURES)}"),
            (self.item_tower in ITEM_TOWERS, f"model.item_tower must be one of {ITEM_TOWERS}, got {self.item_tower!r}"),
            (
                not timed or all(1 <= p < 2**31 for p in self.time_periods),
                f"model.time_periods must be seconds in [1, 2**31), got {self.time_periods}",
            ),
            (not timed or self.time_periods, '"time" in model.event_features needs model.time_periods'),
        )


def l2_normalize(x, eps: float = 1e-12):
    """x / |x| along the last axis; a zero row stays zero instead of becoming NaN."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps))


def _batch_key(batch, key: str, feature: str):
    if key not in batch:
        raise KeyError(f"batch has no {key!r}, which {feature!r} in model.event_features needs")
    return batch[key]


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)), MLP width 4D."""

    num_heads: int
    dropout: float
    implementation: str

    @nn.compact
    def __call__(self, x_BxLxD, mask_BxLxL, *, deterministic: bool):
        hidden = x_BxLxD.shape[-1]
        y = layer_norm("attention_norm")(x_BxLxD)
        y = SelfAttention(self.num_heads, self.dropout, self.implementation, name="attention")(
            y, y, mask_BxLxL, deterministic=deterministic
        )
        y = nn.Dense(hidden, kernel_init=dense_init, name="attention_out")(y)
        x_BxLxD = x_BxLxD + Dropout(self.dropout)(y, deterministic=deterministic)
        y = layer_norm("mlp_norm")(x_BxLxD)
        y = nn.gelu(nn.Dense(4 * hidden, kernel_init=dense_init, name="mlp_in")(y))
        y = nn.Dense(hidden, kernel_init=dense_init, name="mlp_out")(y)
        return x_BxLxD + Dropout(self.dropout)(y, deterministic=deterministic)


class PinnerFormer(nn.Module):
    """The retrieval task's model (`RetrievalModel`)."""

    config: PinnerFormerConfig
    num_items: int

    task = "retrieval"
    config_class = PinnerFormerConfig

    @classmethod
    def build(cls, config: PinnerFormerConfig, num_items: int) -> PinnerFormer:
        return cls(config=config, num_items=num_items)

    def setup(self):
        cfg = self.config
        cfg.validate()  # the feature names and periods setup reads (a ConfigError, which is a ValueError)
        item_init = nn.with_logical_partitioning(embed_init, ITEM_AXES)
        self.item_embedding = self.param("item_embedding", item_init, (vocab_rows(self.num_items), cfg.hidden))
        if "action" in cfg.event_features:
            self.action_embedding = self.param("action_embedding", embed_init, (cfg.num_actions, cfg.feature_dim))
        if "surface" in cfg.event_features:
            self.surface_embedding = self.param("surface_embedding", embed_init, (cfg.num_surfaces, cfg.feature_dim))
        self.input_projection = nn.Dense(cfg.hidden, kernel_init=dense_init)
        position_init = nn.with_logical_partitioning(embed_init, POSITION_AXES)
        self.position_embedding = self.param("position_embedding", position_init, (cfg.max_len, cfg.hidden))
        self.embed_dropout = Dropout(cfg.dropout)
        self.blocks = [
            _Block(cfg.num_heads, cfg.dropout, cfg.attention, name=f"block_{i}") for i in range(cfg.num_blocks)
        ]
        self.final_norm = layer_norm("final_norm")
        self.head_in = nn.Dense(cfg.hidden, kernel_init=dense_init)
        self.head_out = nn.Dense(cfg.hidden, kernel_init=dense_init)
        if cfg.item_tower == "mlp":
            self.item_mlp_in = nn.Dense(cfg.hidden, kernel_init=dense_init)
            self.item_mlp_out = nn.Dense(cfg.hidden, kernel_init=dense_init)

    def _time_features(self, batch, valid_BxL) -> list:
        """The enabled time features, each BxLxk float32 (zero at padding)."""
        features = self.config.event_features
        if not {"time", "gap", "age"} & set(features):
            return []
        t_BxL = _batch_key(batch, "timestamps_BxL", "time")
        out = []
        if "time" in features:
            # Integer remainder first: float32 cannot resolve seconds at unix-time magnitudes.
            periods = [int(round(p)) for p in self.config.time_periods]
            phase_BxLxP = jnp.stack([jnp.remainder(t_BxL, p).astype(jnp.float32) / p for p in periods], axis=-1)
            angle_BxLxP = 2.0 * math.pi * phase_BxLxP
            out += [jnp.sin(angle_BxLxP), jnp.cos(angle_BxLxP)]
        if "gap" in features:
            prev_BxL = jnp.concatenate([t_BxL[:, :1], t_BxL[:, :-1]], axis=1)
            has_prev_BxL = valid_BxL & jnp.concatenate([jnp.zeros_like(valid_BxL[:, :1]), valid_BxL[:, :-1]], axis=1)
            gap_BxL = jnp.where(has_prev_BxL, t_BxL - prev_BxL, 0)
            out.append(jnp.log1p(jnp.maximum(gap_BxL, 0).astype(jnp.float32))[..., None])
        if "age" in features:
            query_B = _batch_key(batch, "query_time_B", "age")
            age_BxL = jnp.where(valid_BxL, query_B[:, None] - t_BxL, 0)
            out.append(jnp.log1p(jnp.maximum(age_BxL, 0).astype(jnp.float32))[..., None])
        return [f * valid_BxL[..., None] for f in out]

    def encode(self, batch, *, deterministic: bool = True):
        """L2-normalised user embedding after each position of the history: BxLxD.

        Padding positions give finite unit vectors that mean nothing (mask them out of losses);
        an all-padding row (no history) gives the model's "cold" embedding.
        """
        cfg = self.config
        item_ids_BxL = batch["item_ids_BxL"]
        length = item_ids_BxL.shape[1]
        if length > cfg.max_len:
            raise ValueError(f"history length {length} exceeds model.max_len={cfg.max_len}")
        valid_BxL = item_ids_BxL > 0
        keep_BxLx1 = valid_BxL[..., None].astype(jnp.float32)
        parts = [self.item_embedding[item_ids_BxL]]
        if "action" in cfg.event_features:
            parts.append(self.action_embedding[_batch_key(batch, "action_BxL", "action")])
        if "surface" in cfg.event_features:
            parts.append(self.surface_embedding[_batch_key(batch, "surface_BxL", "surface")])
        if "duration" in cfg.event_features:
            duration_BxL = _batch_key(batch, "duration_BxL", "duration").astype(jnp.float32)
            parts.append(jnp.log1p(jnp.maximum(duration_BxL, 0.0))[..., None])
        parts += self._time_features(batch, valid_BxL)
        x = self.input_projection(jnp.concatenate(parts, axis=-1)) * keep_BxLx1
        x = x + self.position_embedding[cfg.max_len - length :][None]
        x = self.embed_dropout(x, deterministic=deterministic)
        mask_BxLxL = causal_padding_mask(valid_BxL, causal=True)
        for block in self.blocks:
            x = block(x, mask_BxLxL, deterministic=deterministic)
        h = self.head_out(nn.gelu(self.head_in(self.final_norm(x))))
        return l2_normalize(h)

    def encode_users(self, batch, *, deterministic: bool = True):
        """L2-normalised user embeddings at the newest position (the query time): BxD."""
        return self.encode(batch, deterministic=deterministic)[:, -1]

    def encode_items(self, item_ids_N, item_features_NxC=None):
        """L2-normalised item embeddings: NxD. `item_features_NxC` (e.g. multi-hot genres) feeds the "mlp" tower."""
        e_NxD = self.item_embedding[item_ids_N]
        if self.config.item_tower == "mlp":
            x = e_NxD if item_features_NxC is None else jnp.concatenate([e_NxD, item_features_NxC], axis=-1)
            e_NxD = self.item_mlp_out(nn.gelu(self.item_mlp_in(x.astype(jnp.float32))))
        return l2_normalize(e_NxD)

    def __call__(self, batch, item_ids_N=None, item_features_NxC=None, *, deterministic: bool = True):
        """(per-position user embeddings BxLxD, item embeddings NxD); items default to ids 0..num_items."""
        if item_ids_N is None:
            item_ids_N = jnp.arange(self.num_items + 1)
        return self.encode(batch, deterministic=deterministic), self.encode_items(item_ids_N, item_features_NxC)
