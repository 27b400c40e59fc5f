"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attentive sequential recommender.

Legend: B batch, L history length (left padded, id 0), D hidden, V rows of the item table.

Faithful to the paper and its reference code: item embeddings scaled by sqrt(D) plus learned
positions, embedding dropout, `num_blocks` blocks of [LayerNorm -> causal self-attention ->
residual onto the normalised queries -> LayerNorm -> point-wise feed-forward with residual],
padding rows zeroed after every block, and a final LayerNorm. Scores are dot products with the
input item table (shared), or with a separate output table (the paper's ablation).
`model.embedding_init=normal` starts the tables as gSASRec-pytorch does (N(0, 1), items unscaled);
`small_normal` starts every table and dense kernel at N(0, 0.02), as Klenitskiy & Vasilev's SASRec (items scaled).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.config import ItemTransformerConfig, NextItemLossConfig, attention_dropout_rate
from jaxrec.layers.attention import causal_padding_mask
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.embeddings import ITEM_AXES, POSITION_AXES, initializers, position_embeddings, vocab_rows
from jaxrec.layers.transformer import PointWiseFeedForward, SelfAttention, layer_norm
from jaxrec.models.protocols import NextItemDefaults


@dataclasses.dataclass(frozen=True)
class SASRecConfig(NextItemLossConfig, ItemTransformerConfig):
    """SASRec's keys: the transformer's, the next-item loss's, and the output table's."""

    name: str = "sasrec"  # model registry entry
    shared_output_embedding: bool = True  # False: a separate output item table (SASRec ablation)


class SASRec(NextItemDefaults, nn.Module):
    """Capabilities: NextItemDefaults' (next item at every position, no per-user inputs)."""

    config: SASRecConfig
    num_items: int

    config_class = SASRecConfig

    def setup(self):
        cfg = self.config
        rows = vocab_rows(self.num_items)
        init, kernel_init = initializers(cfg.embedding_init)
        item_init = nn.with_logical_partitioning(init, ITEM_AXES)
        self.item_embedding = self.param("item_embedding", item_init, (rows, cfg.hidden))
        if not cfg.shared_output_embedding:
            self.output_embedding = self.param("output_embedding", item_init, (rows, cfg.hidden))
        position_init = nn.with_logical_partitioning(init, POSITION_AXES)
        self.position_embedding = self.param("position_embedding", position_init, (cfg.max_len, cfg.hidden))
        self.embed_dropout = Dropout(cfg.dropout)
        self.attention_norms = [layer_norm(f"attention_norm_{i}") for i in range(cfg.num_blocks)]
        self.attentions = [
            SelfAttention(
                cfg.num_heads,
                attention_dropout_rate(cfg),
                cfg.attention,
                kernel_init=kernel_init,
                name=f"attention_{i}",
            )
            for i in range(cfg.num_blocks)
        ]
        self.ffn_norms = [layer_norm(f"ffn_norm_{i}") for i in range(cfg.num_blocks)]
        self.ffns = [
            PointWiseFeedForward(cfg.dropout, kernel_init=kernel_init, name=f"ffn_{i}") for i in range(cfg.num_blocks)
        ]
        self.final_norm = layer_norm("final_norm")

    def encode(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        """Hidden state after each position of the history: BxLxD (zeros at padding).

        L may be shorter than max_len (length buckets): positions do not depend on the padding
        (`position_embeddings`), so a bucketed batch computes exactly what the same batch padded to max_len would.
        With `last_only` (inference), returns Bx1xD for the newest position: the last block then
        computes one query row instead of L (its keys and values still cover the history).
        """
        cfg = self.config
        length = item_ids_BxL.shape[1]
        if length > cfg.max_len:
            raise ValueError(f"history length {length} exceeds model.max_len={cfg.max_len}")
        valid_BxL = item_ids_BxL > 0
        keep_BxLx1 = valid_BxL[..., None].astype(jnp.float32)
        scale = 1.0 if cfg.embedding_init == "normal" else cfg.hidden**0.5
        x = self.item_embedding[item_ids_BxL] * scale
        x = x + position_embeddings(self.position_embedding, valid_BxL, cfg.positions)
        x = self.embed_dropout(x, deterministic=deterministic) * keep_BxLx1
        mask_BxLxL = causal_padding_mask(valid_BxL, causal=True)
        blocks = list(zip(self.attention_norms, self.attentions, self.ffn_norms, self.ffns))
        for i, (norm, attn, ffn_norm, ffn) in enumerate(blocks):
            if last_only and i == len(blocks) - 1:
                # Only the newest query row feeds the output; earlier rows matter only as keys.
                mask_BxLxL, keep_BxLx1 = mask_BxLxL[:, -1:], keep_BxLx1[:, -1:]
                q = norm(x[:, -1:])
            else:
                q = norm(x)
            x = q + attn(q, x, mask_BxLxL, deterministic=deterministic)
            x = ffn(ffn_norm(x), deterministic=deterministic) * keep_BxLx1
        return self.final_norm(x) * keep_BxLx1

    def output_table(self):
        """VxD table that scores items: h . table[item]."""
        return self.item_embedding if self.config.shared_output_embedding else self.output_embedding

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        return self.encode(item_ids_BxL, deterministic=deterministic, last_only=last_only), self.output_table()
