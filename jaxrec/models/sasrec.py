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

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.config import ModelConfig, attention_dropout_rate
from jaxrec.layers.attention import causal_padding_mask
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.transformer import PointWiseFeedForward, SelfAttention, dense_init, layer_norm, small_normal_init

embed_init = nn.initializers.xavier_uniform()
# gSASRec-pytorch's tables (torch's nn.Embedding default), used unscaled.
torch_embed_init = nn.initializers.normal(stddev=1.0)


def initializers(embedding_init: str):
    """(table init, dense-kernel init) for `model.embedding_init` (xavier | normal | small_normal)."""
    if embedding_init == "small_normal":  # Klenitskiy & Vasilev's SASRec, BERT's initializer_range
        return small_normal_init, small_normal_init
    return (torch_embed_init if embedding_init == "normal" else embed_init), dense_init


def vocab_rows(num_items: int, multiple: int = 128) -> int:
    """Rows of the item table: ids 0..num_items, padded up to `multiple` (padding rows never score)."""
    return -(-(num_items + 1) // multiple) * multiple


def position_rows(valid_BxL, max_len: int, mode: str = "from_end"):
    """Row of the position table for each slot of a left-padded window (1xL or BxL).

    "from_end": the newest item takes row max_len - 1 and earlier ones count back (SASRec's and
    BERT4Rec's code, whose windows are left padded). "from_start": a history's first item takes row 0
    (Klenitskiy & Vasilev's right-padded batches); padding slots take row 0 too, and are masked.
    Either way a slot's row does not depend on how much padding precedes the history.
    """
    length = valid_BxL.shape[1]
    if mode == "from_end":
        return jnp.arange(max_len - length, max_len)[None]
    return jnp.maximum(jnp.cumsum(valid_BxL, axis=1, dtype=jnp.int32) - 1, 0)


def position_embeddings(table_PxD, valid_BxL, mode: str = "from_end"):
    """The position table's rows for each slot (1xLxD or BxLxD), as `position_rows` numbers them.

    "from_end" is a static slice of the table (no gather in the step, nor a scatter in its gradient).
    """
    if mode == "from_end":
        return table_PxD[table_PxD.shape[0] - valid_BxL.shape[1] :][None]
    return table_PxD[position_rows(valid_BxL, table_PxD.shape[0], mode)]


class SASRec(nn.Module):
    config: ModelConfig
    num_items: int

    def setup(self):
        cfg = self.config
        rows = vocab_rows(self.num_items)
        init, kernel_init = initializers(cfg.embedding_init)
        self.item_embedding = self.param("item_embedding", init, (rows, cfg.hidden))
        if not cfg.shared_output_embedding:
            self.output_embedding = self.param("output_embedding", init, (rows, cfg.hidden))
        self.position_embedding = self.param("position_embedding", init, (cfg.max_len, cfg.hidden))
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

    @staticmethod
    def training_batch(batch, key, config: ModelConfig, num_items: int):
        """SASRec trains on the pipeline's batch as it is (next item at every position)."""
        del key, config, num_items
        return batch

    @staticmethod
    def inference_inputs(inputs_BxL, num_items: int):
        del num_items
        return inputs_BxL

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        return self.encode(item_ids_BxL, deterministic=deterministic, last_only=last_only), self.output_table()
