"""A straightforward Flax port of SASRec's training step: the baseline jaxrec's step is measured against.

What a user porting the PyTorch SASRec line by line would write: flax's nn.Dropout (threefry
keys), einsum-softmax attention with masks, every batch padded to max_len, one jitted step.
Same architecture, loss and optimizer as jaxrec's SASRec; none of its speed work.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class NaiveBlock(nn.Module):
    hidden: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask_BxLxL, keep_BxLx1, deterministic):
        q_in = nn.LayerNorm(epsilon=1e-8)(x)
        q = nn.Dense(self.hidden)(q_in)
        k = nn.Dense(self.hidden)(x)
        v = nn.Dense(self.hidden)(x)
        logits = jnp.einsum("bld,bsd->bls", q, k) / jnp.sqrt(self.hidden)
        logits = jnp.where(mask_BxLxL, logits, -1e30)
        weights = jnp.where(mask_BxLxL, jax.nn.softmax(logits, -1), 0.0)
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        x = q_in + jnp.einsum("bls,bsd->bld", weights, v)
        y = nn.LayerNorm(epsilon=1e-8)(x)
        f = nn.Dropout(self.dropout)(nn.relu(nn.Dense(self.hidden)(y)), deterministic=deterministic)
        f = nn.Dropout(self.dropout)(nn.Dense(self.hidden)(f), deterministic=deterministic)
        return (y + f) * keep_BxLx1


class NaiveSASRec(nn.Module):
    num_items: int
    max_len: int
    hidden: int
    num_blocks: int
    dropout: float

    @nn.compact
    def __call__(self, ids_BxL, deterministic=False):
        table = self.param("item_embedding", nn.initializers.xavier_uniform(), (self.num_items + 1, self.hidden))
        pos = self.param("position_embedding", nn.initializers.xavier_uniform(), (self.max_len, self.hidden))
        valid = ids_BxL > 0
        keep = valid[..., None].astype(jnp.float32)
        length = ids_BxL.shape[1]
        mask = valid[:, None, :] & jnp.tril(jnp.ones((length, length), bool))[None]
        x = table[ids_BxL] * self.hidden**0.5 + pos[None]
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic) * keep
        for _ in range(self.num_blocks):
            x = NaiveBlock(self.hidden, self.dropout)(x, mask, keep, deterministic)
        return nn.LayerNorm(epsilon=1e-8)(x) * keep, table


def make_naive_step(model, tx):
    """train_step((params, opt_state, key), batch) with SASRec's BCE; jit it with donation."""

    def loss_fn(params, batch, key):
        h, table = model.apply({"params": params}, batch["inputs_BxL"], rngs={"dropout": key})
        mask = (batch["positives_BxL"] > 0).astype(jnp.float32)
        pos = jnp.sum(h * table[batch["positives_BxL"]], -1)
        neg = jnp.sum(h * table[batch["negatives_BxL"]], -1)
        loss = -jax.nn.log_sigmoid(pos) - jax.nn.log_sigmoid(-neg)
        return jnp.sum(loss * mask) / jnp.maximum(mask.sum(), 1.0)

    def step(carry, batch):
        params, opt_state, key = carry
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, sub)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    return step
