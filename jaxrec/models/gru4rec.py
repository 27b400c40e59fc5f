"""GRU4Rec (Hidasi et al., ICLR 2016): a recurrent session model, as a next-item sequence encoder.

Legend: B batch, L history length (left padded, id 0), D hidden, V item-table rows.

Item embeddings (dropout) feed `num_blocks` stacked GRU layers of width D (`flax.linen.GRUCell`
under `nn.scan`); the hidden state after each item scores the next item by dot products with the
item table (shared with the input embeddings, or a separate output table when
`shared_output_embedding` is off), so every loss of `jaxrec.ops.losses` trains it. GRU4Rec's own
session-parallel mini-batches become the pipeline's padded user sequences.

Padding: at a padding position the state is carried unchanged (the GRU update is masked), so left
padding leaves the state at its initial zeros and a history computes the same whatever it is
padded to (length buckets); outputs at padding positions are zero. Causal by construction.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.config import ExamplesPerUserConfig, NextItemLossConfig, check
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.embeddings import ITEM_AXES, embed_init, vocab_rows
from jaxrec.models.protocols import NextItemDefaults, last_positions_only


@dataclasses.dataclass(frozen=True)
class GRU4RecConfig(NextItemLossConfig, ExamplesPerUserConfig):
    """GRU4Rec's keys: the GRU stack's, the next-item loss's, and the examples per user."""

    name: str = "gru4rec"  # model registry entry
    num_blocks: int = 2  # stacked GRU layers
    dropout: float = 0.2  # dropout rate on the item embeddings and the output states
    shared_output_embedding: bool = True  # False: a separate output item table

    def validate(self) -> None:
        super().validate()
        check(
            (self.num_blocks >= 1, "model.num_blocks must be >= 1"),
            (0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)"),
        )


class _MaskedGRUStep(nn.Module):
    """One time step: the GRU update where the position is real, the old state where it is padding."""

    hidden: int

    @nn.compact
    def __call__(self, carry_BxD, xs):
        x_BxD, valid_B = xs
        new_BxD, _ = nn.GRUCell(self.hidden, name="cell")(carry_BxD, x_BxD)
        carry_BxD = jnp.where(valid_B[:, None], new_BxD, carry_BxD)
        return carry_BxD, carry_BxD * valid_B[:, None].astype(carry_BxD.dtype)


# Scans the step over axis 1 (time) with one set of GRU parameters for all steps.
_GRULayer = nn.scan(_MaskedGRUStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)


class GRU4Rec(NextItemDefaults, nn.Module):
    """Capabilities: NextItemDefaults', with targets only at the last `examples_per_user` positions."""

    config: GRU4RecConfig
    num_items: int

    config_class = GRU4RecConfig

    def setup(self):
        cfg = self.config
        rows = vocab_rows(self.num_items)
        item_init = nn.with_logical_partitioning(embed_init, ITEM_AXES)
        self.item_embedding = self.param("item_embedding", item_init, (rows, cfg.hidden))
        if not cfg.shared_output_embedding:
            self.output_embedding = self.param("output_embedding", item_init, (rows, cfg.hidden))
        self.embed_dropout = Dropout(cfg.dropout)
        self.grus = [_GRULayer(cfg.hidden, name=f"gru_{i}") for i in range(cfg.num_blocks)]
        self.output_dropout = Dropout(cfg.dropout)

    def encode(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        """Hidden state after each position: BxLxD (zeros at padding); Bx1xD for the newest with `last_only`.

        The recurrence runs over the whole history either way; `last_only` only keeps the last state.
        """
        cfg = self.config
        if item_ids_BxL.shape[1] > cfg.max_len:
            raise ValueError(f"history length {item_ids_BxL.shape[1]} exceeds model.max_len={cfg.max_len}")
        valid_BxL = item_ids_BxL > 0
        x = self.item_embedding[item_ids_BxL] * valid_BxL[..., None]
        x = self.embed_dropout(x, deterministic=deterministic)
        for gru in self.grus:
            carry_BxD = jnp.zeros((x.shape[0], cfg.hidden), x.dtype)
            _, x = gru(carry_BxD, (x, valid_BxL))
        if last_only:
            x, valid_BxL = x[:, -1:], valid_BxL[:, -1:]
        return self.output_dropout(x, deterministic=deterministic) * valid_BxL[..., None]

    def output_table(self):
        """VxD table that scores items: h . table[item]."""
        return self.item_embedding if self.config.shared_output_embedding else self.output_embedding

    @staticmethod
    def training_batch(batch, key, config: GRU4RecConfig, num_items: int):
        """Next-item targets at every position (or the last `examples_per_user`)."""
        del key, num_items
        return last_positions_only(batch, config.examples_per_user)

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        return self.encode(item_ids_BxL, deterministic=deterministic, last_only=last_only), self.output_table()
