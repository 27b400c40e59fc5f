"""Matrix factorisation (a two-tower baseline): learned user and item embeddings, score <p_u, q_i>.

Legend: B batch, L history length (left padded, id 0), D hidden, V item-table rows, U users, F per-user inputs.

The user tower is a lookup of a learned per-user vector, by the dense user id the pipeline adds to
every batch for models with `uses_user_inputs` (`user_BxF` column 0 = user id + 1, 0 on padding
rows; see `jaxrec.data.datasets.user_inputs`). The history is ignored except for its padding: the
same user vector stands at every real position, so each position's target is one (user, item)
training pair, and the existing losses train MF unchanged: `bpr` (Rendle et al. 2009, with the
pipeline's negative outside the user's history) is the classic choice; `bce`, `ce`, `sampled` work too.
Each epoch visits every user's last `max_len` training items (all but the first, which the
next-item batches never target).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.config import ExamplesPerUserConfig, NextItemLossConfig
from jaxrec.layers.embeddings import ITEM_AXES, USER_AXES, embed_init, vocab_rows
from jaxrec.models.protocols import NextItemDefaults, last_positions_only


@dataclasses.dataclass(frozen=True)
class MFConfig(NextItemLossConfig, ExamplesPerUserConfig):
    """MF's keys: the sizes, the next-item loss's and the examples per user (no dropout: train.weight_decay)."""

    name: str = "mf"  # model registry entry


class MF(NextItemDefaults, nn.Module):
    """Capabilities: per-user inputs (the user id), targets only at the last `examples_per_user` positions."""

    config: MFConfig
    num_items: int
    num_users: int = 0  # rows 1..num_users of the user table; 0 is padding (build passes it)

    config_class = MFConfig
    uses_user_inputs = True  # the trainer adds user_BxF to every batch

    @classmethod
    def build(cls, config, num_items: int, num_users: int = 0, user_feature_rows: tuple[int, ...] = ()):
        del user_feature_rows  # the user id only
        return cls(config=config, num_items=num_items, num_users=num_users)

    def setup(self):
        if self.num_users < 1:
            raise ValueError("MF needs num_users >= 1 (build_model(config, num_items, num_users=...))")
        hidden = self.config.hidden
        item_init = nn.with_logical_partitioning(embed_init, ITEM_AXES)
        self.item_embedding = self.param("item_embedding", item_init, (vocab_rows(self.num_items), hidden))
        user_init = nn.with_logical_partitioning(embed_init, USER_AXES)
        self.user_embedding = self.param("user_embedding", user_init, (self.num_users + 1, hidden))

    def encode(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False, user_BxF=None):
        """The user's vector at every real position: BxLxD (zeros at padding); Bx1xD with `last_only`.

        `user_BxF`: per-user inputs, column 0 the user id + 1; None (parameter init) = padding user.
        """
        del deterministic  # no dropout: regularise with train.weight_decay
        if item_ids_BxL.shape[1] > self.config.max_len:
            raise ValueError(f"history length {item_ids_BxL.shape[1]} exceeds model.max_len={self.config.max_len}")
        users_B = jnp.zeros(item_ids_BxL.shape[:1], jnp.int32) if user_BxF is None else user_BxF[:, 0]
        user_BxD = self.user_embedding[users_B] * (users_B > 0)[:, None]
        valid_BxL = item_ids_BxL[:, -1:] > 0 if last_only else item_ids_BxL > 0
        return user_BxD[:, None, :] * valid_BxL[..., None]

    def output_table(self):
        """VxD item table: the item tower."""
        return self.item_embedding

    @staticmethod
    def training_batch(batch, key, config: MFConfig, num_items: int):
        del key, num_items
        return last_positions_only(batch, config.examples_per_user)

    def __call__(self, item_ids_BxL, *, deterministic: bool = True, last_only: bool = False, user_BxF=None):
        h = self.encode(item_ids_BxL, deterministic=deterministic, last_only=last_only, user_BxF=user_BxF)
        return h, self.output_table()
