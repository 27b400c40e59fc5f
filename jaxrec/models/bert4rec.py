"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional transformer trained with the cloze task.

Legend: B batch, L history length (left padded, id 0), D hidden, V item-table rows.

As the paper and its reference code: item plus learned position embeddings, LayerNorm and
dropout; `num_blocks` post-norm transformer blocks (multi-head self-attention with a padding
mask and no causal mask, GELU feed-forward of width 4D, residuals, dropout); an output head of
dense -> GELU -> LayerNorm, scored against the shared item embedding plus a per-item bias.
Id num_items + 1 is the [MASK] token. Training masks each non-padding position with
probability `mask_prob` (inside the jitted step) and scores only masked positions; inference
appends a [MASK] to the history and reads its output.

The per-item output bias is folded into the scores by returning h with an extra constant
column and the table with the bias as an extra column, so every loss and evaluation that
takes (h, table) serves BERT4Rec unchanged. `model.output_head=false` drops the head and the bias
(Klenitskiy & Vasilev's BERT4Rec): the last block's states are scored against the item embedding.

Two options bring it closer to the BERT code that both BERT4Rec's and Klenitskiy & Vasilev's implementations
build on, off by default (the reproduction table's rows ran without them): `model.attention_projection`
(a dense layer after the attention heads) and `model.embedding_init=small_normal` (every table and dense
kernel N(0, 0.02), BERT's initializer_range; the default is Xavier-uniform).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.config import ItemTransformerConfig, NextItemLossConfig, attention_dropout_rate, check
from jaxrec.layers.attention import causal_padding_mask
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.embeddings import (
    ITEM_AXES,
    ITEM_BIAS_AXES,
    POSITION_AXES,
    initializers,
    position_embeddings,
    vocab_rows,
)
from jaxrec.layers.transformer import SelfAttention, dense_init, layer_norm
from jaxrec.models.protocols import NextItemDefaults


@dataclasses.dataclass(frozen=True)
class BERT4RecConfig(NextItemLossConfig, ItemTransformerConfig):
    """BERT4Rec's keys: the transformer's, the next-item loss's, the cloze's and the BERT options'."""

    name: str = "bert4rec"  # model registry entry
    mask_prob: float = 0.2  # probability that the cloze task masks an item
    # the paper's output head (dense -> GELU -> LayerNorm, per-item bias); false = Klenitskiy & Vasilev's
    # (Hugging Face BertModel: the last block's states scored straight against the item embedding)
    output_head: bool = True
    # a dense layer over the attention heads' outputs, as BERT (and so BERT4Rec's and K&V's code) has;
    # off by default because the reproduction table's rows ran without it
    attention_projection: bool = False

    def validate(self) -> None:
        super().validate()
        check(
            (
                self.embedding_init in ("xavier", "small_normal"),
                f"model.embedding_init={self.embedding_init} is not implemented for bert4rec",
            ),
            (0.0 < self.mask_prob < 1.0, "model.mask_prob must be in (0, 1)"),
            (self.loss not in ("bce", "bpr"), "bert4rec trains with ce, ce_chunked, gbce or sampled"),
        )


class _FeedForward(nn.Module):
    hidden: int
    dropout: float
    kernel_init: nn.initializers.Initializer = dense_init

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        y = nn.gelu(nn.Dense(4 * self.hidden, kernel_init=self.kernel_init, name="dense_in")(x))
        y = nn.Dense(self.hidden, kernel_init=self.kernel_init, name="dense_out")(y)
        return Dropout(self.dropout)(y, deterministic=deterministic)


class BERT4Rec(NextItemDefaults, nn.Module):
    """Capabilities: trains on whole sequences (its cloze), a target fraction (mask_prob), [MASK] at inference."""

    config: BERT4RecConfig
    num_items: int

    config_class = BERT4RecConfig
    # The cloze masks the training items themselves: batches hold the whole sequence, first item included.
    trains_on_whole_sequence = True

    @property
    def mask_token(self) -> int:
        return self.num_items + 1

    def setup(self):
        cfg = self.config
        rows = vocab_rows(self.num_items + 1)  # room for the [MASK] row
        table_init, kernel_init = initializers(cfg.embedding_init)
        item_init = nn.with_logical_partitioning(table_init, ITEM_AXES)
        self.item_embedding = self.param("item_embedding", item_init, (rows, cfg.hidden))
        if cfg.output_head:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ITEM_BIAS_AXES)
            self.output_bias = self.param("output_bias", bias_init, (rows,))
        position_init = nn.with_logical_partitioning(table_init, POSITION_AXES)
        self.position_embedding = self.param("position_embedding", position_init, (cfg.max_len, cfg.hidden))
        self.embed_norm = layer_norm("embed_norm")
        self.embed_dropout = Dropout(cfg.dropout)
        self.attentions = [
            SelfAttention(
                cfg.num_heads,
                attention_dropout_rate(cfg),
                cfg.attention,
                kernel_init=kernel_init,
                output_projection=cfg.attention_projection,
                name=f"attention_{i}",
            )
            for i in range(cfg.num_blocks)
        ]
        self.attention_dropouts = [Dropout(cfg.dropout) for _ in range(cfg.num_blocks)]
        self.attention_norms = [layer_norm(f"attention_norm_{i}") for i in range(cfg.num_blocks)]
        self.ffns = [_FeedForward(cfg.hidden, cfg.dropout, kernel_init, name=f"ffn_{i}") for i in range(cfg.num_blocks)]
        self.ffn_norms = [layer_norm(f"ffn_norm_{i}") for i in range(cfg.num_blocks)]
        self.head_dense = nn.Dense(cfg.hidden, kernel_init=kernel_init, name="head_dense")
        self.head_norm = layer_norm("head_norm")

    def encode(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        """Output-head states, with a trailing constant 1 column for the bias: BxLx(D+1) (BxLxD without the head)."""
        cfg = self.config
        length = item_ids_BxL.shape[1]
        if length > cfg.max_len:
            raise ValueError(f"history length {length} exceeds model.max_len={cfg.max_len}")
        valid_BxL = item_ids_BxL > 0
        x = self.item_embedding[item_ids_BxL] + position_embeddings(self.position_embedding, valid_BxL, cfg.positions)
        x = self.embed_dropout(self.embed_norm(x), deterministic=deterministic)
        mask_BxLxL = causal_padding_mask(valid_BxL, causal=False)
        for attn, attn_drop, attn_norm, ffn, ffn_norm in zip(
            self.attentions, self.attention_dropouts, self.attention_norms, self.ffns, self.ffn_norms
        ):
            a = attn(x, x, mask_BxLxL, deterministic=deterministic)
            x = attn_norm(x + attn_drop(a, deterministic=deterministic))
            x = ffn_norm(x + ffn(x, deterministic=deterministic))
        if last_only:
            x = x[:, -1:]
        if not cfg.output_head:
            return x
        h = self.head_norm(nn.gelu(self.head_dense(x)))
        return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)

    def output_table(self):
        """Vx(D+1): the shared item embedding with the output bias as its last column (VxD without the head)."""
        if not self.config.output_head:
            return self.item_embedding
        return jnp.concatenate([self.item_embedding, self.output_bias[:, None]], axis=-1)

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False):
        return self.encode(item_ids_BxL, deterministic=deterministic, last_only=last_only), self.output_table()

    @staticmethod
    def training_batch(batch, key, config: BERT4RecConfig, num_items: int):
        """Cloze task: mask each non-padding item with probability mask_prob; targets only there.

        The sequence is the pipeline's `positives_BxL`: the user's last L training items, the first one
        included (TrainBatches with whole_sequence, which the trainer asks for: trains_on_whole_sequence).
        """
        items_BxL = batch["positives_BxL"]
        masked_BxL = jax.random.bernoulli(key, config.mask_prob, items_BxL.shape) & (items_BxL > 0)
        return {
            "inputs_BxL": jnp.where(masked_BxL, num_items + 1, items_BxL),
            "positives_BxL": jnp.where(masked_BxL, items_BxL, 0),
        }

    @staticmethod
    def target_fraction(config: BERT4RecConfig) -> float:
        """The expected share of positions with a training target (the loss scores only those)."""
        return config.mask_prob

    @staticmethod
    def inference_inputs(inputs_BxL, num_items: int):
        """The history's last L-1 items followed by [MASK], whose output scores the next item."""
        mask_Bx1 = jnp.full(inputs_BxL.shape[:1] + (1,), num_items + 1, inputs_BxL.dtype)
        return jnp.concatenate([inputs_BxL[:, 1:], mask_Bx1], axis=1)
