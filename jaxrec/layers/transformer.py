"""Transformer pieces shared by the sequential models.

Legend: B batch, L length, D hidden, H heads.
"""

from __future__ import annotations

import flax.linen as nn

from jaxrec.layers.attention import attention
from jaxrec.layers.dropout import Dropout

dense_init = nn.initializers.xavier_uniform()
# Hugging Face's initializer_range, which Klenitskiy & Vasilev's SASRec applies to every layer.
small_normal_init = nn.initializers.normal(stddev=0.02)


class SelfAttention(nn.Module):
    """Multi-head self-attention: Q, K, V projections; no output projection (the SASRec paper's) unless asked.

    `output_projection`: a dense layer over the heads' concatenated outputs, as BERT's (so BERT4Rec's) has.
    Without it each head writes only its own D/H slice of the residual stream.
    """

    num_heads: int
    dropout: float
    implementation: str = "auto"
    kernel_init: nn.initializers.Initializer = dense_init
    output_projection: bool = False

    @nn.compact
    def __call__(self, queries_BxLxD, keys_BxLxD, mask_BxLxL, *, deterministic: bool, bias_BxHxLxL=None):
        batch, length, hidden = queries_BxLxD.shape  # length: queries; keys may be longer
        head_dim = hidden // self.num_heads

        def project(x, name):
            y = nn.Dense(hidden, kernel_init=self.kernel_init, name=name)(x)
            return y.reshape(batch, -1, self.num_heads, head_dim)

        q = project(queries_BxLxD, "query")
        k = project(keys_BxLxD, "key")
        v = project(keys_BxLxD, "value")
        use_dropout = self.dropout > 0.0 and not deterministic
        out_BxLxHxD = attention(
            q,
            k,
            v,
            implementation=self.implementation,
            mask_BxLxS=mask_BxLxL,
            bias_BxHxLxS=bias_BxHxLxL,
            dropout_rate=self.dropout if use_dropout else 0.0,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
        )
        out_BxLxD = out_BxLxHxD.reshape(batch, length, hidden)
        if self.output_projection:
            out_BxLxD = nn.Dense(hidden, kernel_init=self.kernel_init, name="output")(out_BxLxD)
        return out_BxLxD


class PointWiseFeedForward(nn.Module):
    """Two position-wise dense layers (SASRec's Conv1D with kernel 1), ReLU, dropout, residual."""

    dropout: float
    kernel_init: nn.initializers.Initializer = dense_init

    @nn.compact
    def __call__(self, x_BxLxD, *, deterministic: bool):
        hidden = x_BxLxD.shape[-1]
        y = nn.Dense(hidden, kernel_init=self.kernel_init, name="dense_in")(x_BxLxD)
        y = Dropout(self.dropout)(nn.relu(y), deterministic=deterministic)
        y = nn.Dense(hidden, kernel_init=self.kernel_init, name="dense_out")(y)
        y = Dropout(self.dropout)(y, deterministic=deterministic)
        return x_BxLxD + y


def layer_norm(name: str):
    # SASRec's epsilon; flax's default 1e-6 changes nothing measurable but we keep the paper's.
    return nn.LayerNorm(epsilon=1e-8, name=name)
