"""CTR rankers: Wide & Deep, Wide & Deep over a pooled history, DIN and BST.

Legend: B batch, L history length, S = L + 1, C genres, F user fields, D model.hidden, E event width
(D for the item, plus D for the genres when there are genres), T = E + D (BST: plus the time embedding),
V item-table rows.

Inputs: the batch keys of `jaxrec.tasks.ctr.data` plus the genre multi-hots that `with_genres` gathers
(history_genres_BxLxC, candidate_genres_BxC; absent when num_categories = 0). Every model returns
(logits_B float32, aux).

Embeddings (parameters under "embed"): "item" (V x D, id 0 = padding), "genre" (C x D; an item's genre
vector is the mean over its genres, zero when it has none), "user" (one table for all user fields;
the F vectors are concatenated), "action" (with `ctr.history_actions`: A + 2 rows, 0 padding, 1..A the
actions, A + 1 the candidate's own row, as its action is what is predicted). An event or a candidate is
[item, genre] (E wide), plus [action] (D more) with `ctr.history_actions`.

  WDL      wide: per-item bias, genre weights, user-field biases, user-field x candidate-genre crosses;
           deep: MLP over [user fields, candidate]. No history.
  WDLSeq   WDL with the mean of the history's events added to the deep input.
  DIN      (Zhou et al., KDD 2018) the activation unit, an MLP over [event, candidate, event - candidate,
           event * candidate], gives each event a weight; weights are NOT softmax-normalised (the
           paper's choice, to keep the intensity of interest); deep input [user fields, candidate,
           weighted sum of events]; `ctr.activation` dice or prelu as the paper.
  BST      (Chen et al., 2019, Behavior Sequence Transformer) `model.num_blocks` post-norm transformer
           layers over [history, candidate], each position [item, genre, embedding of the bucketed
           time between the event and the recommendation]; the S outputs are concatenated into the MLP.

`ctr.wide` adds WDL's wide part to DIN and BST, so that they see every feature WDL sees and a
comparison isolates what the sequence model adds (the papers' DIN and BST have no wide part).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.config import ConfigError, CTRConfig, TransformerConfig
from jaxrec.layers.attention import causal_padding_mask
from jaxrec.layers.dropout import Dropout
from jaxrec.layers.embeddings import ITEM_AXES, ITEM_BIAS_AXES, embed_init, vocab_rows
from jaxrec.layers.transformer import SelfAttention, dense_init


@dataclasses.dataclass(frozen=True)
class RankerConfig(TransformerConfig):
    """The CTR rankers' model keys (wdl, wdl_seq, din, bst share them: num_blocks, num_heads and attention are
    BST's, dropout BST's blocks'); their own knobs are the ctr section's (`CTRConfig`)."""

    name: str = "wdl"  # model registry entry: wdl | wdl_seq | din | bst


def with_genres(batch, categories_VxC):
    """The batch plus history_genres_BxLxC and candidate_genres_BxC gathered from the item multi-hots."""
    if categories_VxC is None or categories_VxC.shape[1] == 0:
        return batch
    table = jnp.asarray(categories_VxC, jnp.float32)
    return {
        **batch,
        "history_genres_BxLxC": table[batch["history_BxL"]],
        "candidate_genres_BxC": table[batch["candidate_B"]],
    }


def time_buckets(seconds, num_buckets: int):
    """1 + floor(log2(1 + seconds)), clipped to [1, num_buckets - 1] (0 is left for padding); int32 exact."""
    seconds = jnp.maximum(seconds, 0).astype(jnp.int32)
    log2 = 31 - jax.lax.clz(seconds + 1)  # floor(log2(x)) for x >= 1
    return jnp.clip(1 + log2, 1, num_buckets - 1)


class Dice(nn.Module):
    """DIN's activation: p(s) s + (1 - p(s)) alpha s with p = sigmoid((s - E[s]) / sqrt(Var[s] + eps)).

    E and Var are statistics of the batch (over the rows where `mask` is true) in training, and
    their moving averages (collection "batch_stats") at inference.
    """

    momentum: float = 0.99
    epsilon: float = 1e-8

    @nn.compact
    def __call__(self, x, mask=None, *, deterministic: bool):
        features = x.shape[-1]
        alpha = self.param("alpha", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if deterministic:
            mean, var = running_mean.value, running_var.value
        else:
            w = jnp.ones(x.shape[:-1], jnp.float32) if mask is None else mask.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            total = jnp.maximum(jnp.sum(w), 1.0)
            mean = jnp.sum(w[..., None] * x, axis=axes) / total
            var = jnp.sum(w[..., None] * jnp.square(x - mean), axis=axes) / total
            if not self.is_initializing():
                m = self.momentum
                running_mean.value = m * running_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
                running_var.value = m * running_var.value + (1 - m) * jax.lax.stop_gradient(var)
        p = jax.nn.sigmoid((x - mean) * jax.lax.rsqrt(var + self.epsilon))
        return p * x + (1.0 - p) * alpha * x


class PReLU(nn.Module):
    """max(0, s) + alpha min(0, s) with a learned alpha per feature (initially 0.25)."""

    @nn.compact
    def __call__(self, x, mask=None, *, deterministic: bool):
        alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
        return jnp.where(x > 0, x, alpha * x)


class MLP(nn.Module):
    """Dense layers of `widths`, each followed by `activation` (relu | leaky_relu | prelu | dice)."""

    widths: tuple[int, ...]
    activation: str

    @nn.compact
    def __call__(self, x, mask=None, *, deterministic: bool):
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, kernel_init=dense_init, name=f"dense_{i}")(x)
            if self.activation == "dice":
                x = Dice(name=f"dice_{i}")(x, mask, deterministic=deterministic)
            elif self.activation == "prelu":
                x = PReLU(name=f"prelu_{i}")(x, deterministic=deterministic)
            elif self.activation == "leaky_relu":
                x = nn.leaky_relu(x)
            elif self.activation == "relu":
                x = nn.relu(x)
            else:
                raise ValueError(f"ctr.activation: unknown {self.activation!r}")
        return x


class Embeddings(nn.Module):
    """Item, genre and user-field tables (module docstring)."""

    num_items: int
    dim: int
    num_categories: int
    user_vocab: int
    action_vocab: int = 0  # A + 1 (0 = no action embedding); the table has one more row, the candidate's

    def setup(self):
        item_init = nn.with_logical_partitioning(embed_init, ITEM_AXES)
        self.item = self.param("item", item_init, (vocab_rows(self.num_items), self.dim))
        if self.num_categories:
            self.genre = self.param("genre", embed_init, (self.num_categories, self.dim))
        if self.user_vocab:
            self.user = self.param("user", embed_init, (self.user_vocab, self.dim))
        if self.action_vocab:
            self.action = self.param("action", embed_init, (self.action_vocab + 1, self.dim))

    def events(self, ids, genres=None, actions=None):
        """[item, mean genre, action] embeddings: ids (...), multi-hot genres (..., C), action ids (...) -> (..., E).

        With action embeddings, `actions=None` means a candidate: its row is the last one.
        """
        parts = [self.item[ids]]
        if self.num_categories:
            count = jnp.maximum(jnp.sum(genres, axis=-1, keepdims=True), 1.0)
            parts.append(jnp.dot(genres, self.genre) / count)
        if self.action_vocab:
            if actions is None:
                actions = jnp.full(ids.shape, self.action_vocab, jnp.int32)
            parts.append(self.action[actions])
        return jnp.concatenate(parts, axis=-1)

    def users(self, user_BxF):
        """Concatenated user-field embeddings: B x (F D)."""
        return self.user[user_BxF].reshape(user_BxF.shape[0], -1)


class _Ranker(nn.Module):
    """The CTR task's models (`CTRModel`)."""

    config: RankerConfig
    num_items: int
    ctr: CTRConfig = CTRConfig()
    num_categories: int = 0
    user_vocab: int = 0
    action_vocab: int = 0  # A + 1 with ctr.history_actions (the data's actions), else 0

    task = "ctr"
    config_class = RankerConfig
    reads_history = True  # WDL alone does not: it has no events to annotate with actions

    @classmethod
    def build(cls, cfg, num_items: int, num_categories: int, user_vocab: int, action_vocab: int = 0) -> _Ranker:
        """The ranker for the Config `cfg` (model and ctr sections), a catalogue of `num_items`, C genres, a
        user-field vocabulary and the data's action vocabulary (used only with `ctr.history_actions`)."""
        uses_actions = cfg.ctr.history_actions and cls.reads_history
        if uses_actions and not action_vocab:
            raise ValueError(
                "ctr.history_actions: the data has no actions (ratings) to embed; set ctr.history_actions=false"
            )
        return cls(
            config=cfg.model,
            num_items=num_items,
            ctr=cfg.ctr,
            num_categories=num_categories,
            user_vocab=user_vocab,
            action_vocab=action_vocab if uses_actions else 0,
        )

    def _embeddings(self):
        return Embeddings(self.num_items, self.config.hidden, self.num_categories, self.user_vocab, self.action_vocab)

    def _inputs(self, batch):
        """(history B x L x E, its mask, candidate B x E, user fields B x F D)."""
        history_BxL = batch["history_BxL"]
        if history_BxL.shape[1] != self.config.max_len:
            raise ValueError(f"history length {history_BxL.shape[1]} != model.max_len={self.config.max_len}")
        if self.num_categories and "history_genres_BxLxC" not in batch:
            raise KeyError("the batch has no history_genres_BxLxC: pass it through rankers.with_genres first")
        if self.action_vocab and "history_action_BxL" not in batch:
            raise KeyError("ctr.history_actions: the batch has no history_action_BxL (the data has no actions)")
        actions_BxL = batch.get("history_action_BxL") if self.action_vocab else None
        hist_BxLxE = self.embed.events(history_BxL, batch.get("history_genres_BxLxC"), actions_BxL)
        cand_BxE = self.embed.events(batch["candidate_B"], batch.get("candidate_genres_BxC"))
        if self.user_vocab:
            user_BxU = self.embed.users(batch["user_BxF"])
        else:
            user_BxU = jnp.zeros((history_BxL.shape[0], 0), jnp.float32)
        return hist_BxLxE, history_BxL > 0, cand_BxE, user_BxU

    def _setup_wide(self):
        """WDL's wide part (called from setup): per-item bias, genre weights, user-field biases and crosses."""
        wide_init = nn.with_logical_partitioning(nn.initializers.zeros, ITEM_BIAS_AXES)
        self.wide_item = self.param("wide_item", wide_init, (vocab_rows(self.num_items),))
        if self.num_categories:
            self.wide_genre = self.param("wide_genre", nn.initializers.zeros, (self.num_categories,))
        if self.user_vocab:
            self.wide_user = self.param("wide_user", nn.initializers.zeros, (self.user_vocab,))
        if self.num_categories and self.user_vocab:
            self.wide_cross = self.param("wide_cross", nn.initializers.zeros, (self.user_vocab, self.num_categories))

    def _wide(self, batch):
        """The wide logit, B float32: linear in the candidate item, its genres, the user fields and their crosses."""
        wide_B = self.wide_item[batch["candidate_B"]]
        if self.num_categories:
            wide_B += batch["candidate_genres_BxC"] @ self.wide_genre
        if self.user_vocab:
            user_BxF = batch["user_BxF"]
            wide_B += self.wide_user[user_BxF].sum(-1)
            if self.num_categories:
                wide_B += jnp.einsum("bfc,bc->b", self.wide_cross[user_BxF], batch["candidate_genres_BxC"])
        return wide_B.astype(jnp.float32)

    def _deep(self, parts, deterministic: bool):
        x = jnp.concatenate(parts, axis=-1)
        return self.head(self.mlp(x, deterministic=deterministic))[:, 0].astype(jnp.float32)


class WDL(_Ranker):
    """Wide & Deep (Cheng et al., 2016) without the sequence; `reads_history` adds its mean (WDLSeq)."""

    reads_history = False

    def setup(self):
        self.embed = self._embeddings()
        self.mlp = MLP(self.ctr.mlp, self.ctr.activation)
        self.head = nn.Dense(1, kernel_init=dense_init)
        self._setup_wide()

    def __call__(self, batch, *, deterministic: bool = True):
        hist_BxLxE, mask_BxL, cand_BxE, user_BxU = self._inputs(batch)
        parts = [user_BxU, cand_BxE]
        if self.reads_history:
            keep_BxL = mask_BxL.astype(jnp.float32)
            pooled = jnp.einsum("bl,ble->be", keep_BxL, hist_BxLxE) / jnp.maximum(keep_BxL.sum(-1, keepdims=True), 1)
            parts.append(pooled)
        return self._deep(parts, deterministic) + self._wide(batch), {}


class WDLSeq(WDL):
    reads_history = True


class DIN(_Ranker):
    """Deep Interest Network: candidate-dependent, unnormalised attention over the history."""

    def setup(self):
        self.embed = self._embeddings()
        self.attention_mlp = MLP(self.ctr.attention_mlp, self.ctr.activation)
        self.attention_out = nn.Dense(1, kernel_init=dense_init)
        self.mlp = MLP(self.ctr.mlp, self.ctr.activation)
        self.head = nn.Dense(1, kernel_init=dense_init)
        if self.ctr.wide:
            self._setup_wide()

    def __call__(self, batch, *, deterministic: bool = True):
        hist_BxLxE, mask_BxL, cand_BxE, user_BxU = self._inputs(batch)
        cand_BxLxE = jnp.broadcast_to(cand_BxE[:, None], hist_BxLxE.shape)
        unit_in = jnp.concatenate([hist_BxLxE, cand_BxLxE, hist_BxLxE - cand_BxLxE, hist_BxLxE * cand_BxLxE], -1)
        hidden = self.attention_mlp(unit_in, mask_BxL, deterministic=deterministic)
        weights_BxL = jnp.where(mask_BxL, self.attention_out(hidden)[..., 0], 0.0)  # no softmax
        interest_BxE = jnp.einsum("bl,ble->be", weights_BxL, hist_BxLxE)
        logits = self._deep([user_BxU, cand_BxE, interest_BxE], deterministic)
        if self.ctr.wide:
            logits = logits + self._wide(batch)
        return logits, {"attention_BxL": weights_BxL}


class _PostNormBlock(nn.Module):
    """BST's transformer layer: LN(x + Dropout(MH(x))), then LN(x + Dropout(FFN(x))).

    The FFN is two T-wide dense layers with LeakyReLU between them (the paper does not give its width;
    T keeps a block cheap next to the 1024-wide MLP, as common BST implementations do).
    """

    num_heads: int
    dropout: float
    implementation: str

    @nn.compact
    def __call__(self, x_BxSxT, mask_BxSxS, *, deterministic: bool):
        width = x_BxSxT.shape[-1]
        y = SelfAttention(self.num_heads, self.dropout, self.implementation, name="attention")(
            x_BxSxT, x_BxSxT, mask_BxSxS, deterministic=deterministic
        )
        y = nn.Dense(width, kernel_init=dense_init, name="attention_out")(y)
        x_BxSxT = nn.LayerNorm(name="attention_norm")(x_BxSxT + Dropout(self.dropout)(y, deterministic=deterministic))
        y = nn.leaky_relu(nn.Dense(width, kernel_init=dense_init, name="ffn_in")(x_BxSxT))
        y = nn.Dense(width, kernel_init=dense_init, name="ffn_out")(y)
        return nn.LayerNorm(name="ffn_norm")(x_BxSxT + Dropout(self.dropout)(y, deterministic=deterministic))


class BST(_Ranker):
    """Behavior Sequence Transformer with the time-difference embedding as its position feature."""

    def setup(self):
        cfg = self.config
        self.embed = self._embeddings()
        self.time_embedding = self.param("time_embedding", embed_init, (self.ctr.time_buckets, cfg.hidden))
        self.blocks = [
            _PostNormBlock(cfg.num_heads, cfg.dropout, cfg.attention, name=f"block_{i}") for i in range(cfg.num_blocks)
        ]
        self.mlp = MLP(self.ctr.mlp, self.ctr.activation)
        self.head = nn.Dense(1, kernel_init=dense_init)
        if self.ctr.wide:
            self._setup_wide()

    def __call__(self, batch, *, deterministic: bool = True):
        hist_BxLxE, mask_BxL, cand_BxE, user_BxU = self._inputs(batch)
        seconds_BxL = batch["time_B"][:, None] - batch["history_time_BxL"]
        bucket_BxL = jnp.where(mask_BxL, time_buckets(seconds_BxL, self.ctr.time_buckets), 0)
        candidate_Bx1 = time_buckets(jnp.zeros_like(bucket_BxL[:, :1]), self.ctr.time_buckets)  # 0 s: its own bucket
        bucket_BxS = jnp.concatenate([bucket_BxL, candidate_Bx1], axis=1)
        x_BxSxE = jnp.concatenate([hist_BxLxE, cand_BxE[:, None]], axis=1)
        x_BxSxT = jnp.concatenate([x_BxSxE, self.time_embedding[bucket_BxS]], axis=-1)
        valid_BxS = jnp.concatenate([mask_BxL, jnp.ones_like(mask_BxL[:, :1])], axis=1)
        keep_BxSx1 = valid_BxS[..., None].astype(jnp.float32)
        mask_BxSxS = causal_padding_mask(valid_BxS, causal=False)
        x_BxSxT = x_BxSxT * keep_BxSx1
        for block in self.blocks:
            x_BxSxT = block(x_BxSxT, mask_BxSxS, deterministic=deterministic) * keep_BxSx1
        flat = x_BxSxT.reshape(x_BxSxT.shape[0], -1)
        logits = self._deep([user_BxU, flat], deterministic)
        return (logits + self._wide(batch) if self.ctr.wide else logits), {}


RANKERS = {"wdl": WDL, "wdl_seq": WDLSeq, "din": DIN, "bst": BST}


def build_ranker(cfg, num_items: int, num_categories: int, user_vocab: int, action_vocab: int = 0) -> _Ranker:
    """The ranker `cfg.model.name` (`_Ranker.build`)."""
    try:
        cls = RANKERS[cfg.model.name]
    except KeyError:
        raise ValueError(f"unknown ranker {cfg.model.name!r}; known: {', '.join(RANKERS)}") from None
    if type(cfg.model) is not RankerConfig:
        raise ConfigError(f"model.name={cfg.model.name} takes a RankerConfig, got a {type(cfg.model).__name__}")
    return cls.build(cfg, num_items, num_categories, user_vocab, action_vocab)
