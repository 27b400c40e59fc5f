"""Pure train and evaluation steps.

Legend: B batch, L length, N sampled negatives, H history length, V item-table rows.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxrec.config import Config
from jaxrec.losses import LOSSES
from jaxrec.metrics import rank_of_target

# rbg keys: dropout masks are the bulk of the random bits in a step, and threefry is slow on CPU.
RNG_IMPL = "rbg"


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # model parameters (a plain pytree)
    opt_state: Any  # optax state
    rng_data: jax.Array  # raw key data of the base rng; step keys are fold_in(rng, step)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    adam = optax.adam(cfg.train.learning_rate, b1=cfg.train.adam_b1, b2=cfg.train.adam_b2)
    if cfg.train.weight_decay > 0:
        return optax.chain(optax.add_decayed_weights(cfg.train.weight_decay), adam)
    return adam


def init_state(model, tx, cfg: Config) -> TrainState:
    key = jax.random.key(cfg.train.seed, impl=RNG_IMPL)
    init_key, base_key = jax.random.split(key)
    dummy_BxL = jnp.ones((1, cfg.model.max_len), jnp.int32)
    # jit: an eager init would compile every op of the model one by one.
    init = jax.jit(lambda key: model.init({"params": key}, dummy_BxL, method=model.encode)["params"])
    params = init(init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng_data=jax.random.key_data(base_key),
    )


def make_train_step(model, tx, cfg: Config):
    """Returns train_step(state, batch) -> (state, metrics); jit it with the state donated."""
    loss_fn_impl = LOSSES[cfg.model.loss]

    def loss_fn(params, batch, dropout_key):
        h_BxLxD, table_VxD = model.apply(
            {"params": params}, batch["inputs_BxL"], deterministic=False, rngs={"dropout": dropout_key}
        )
        return loss_fn_impl(h_BxLxD, table_VxD, batch["positives_BxL"], batch["negatives_BxL"])

    def train_step(state: TrainState, batch):
        base = jax.random.wrap_key_data(state.rng_data, impl=RNG_IMPL)
        dropout_key = jax.random.fold_in(base, state.step)
        (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": loss, "positions": count}

    return train_step


def make_eval_step(model, num_items: int, full_ranking: bool = True):
    """Returns eval_step(params, batch) -> {'rank_sampled': B, 'rank_full': B} (0-based, pessimistic)."""

    def eval_step(params, batch):
        h_BxLxD, table_VxD = model.apply({"params": params}, batch["inputs_BxL"], deterministic=True)
        user_BxD = h_BxLxD[:, -1].astype(jnp.float32)  # left padding: the last position is the newest
        table_VxD = table_VxD.astype(jnp.float32)
        targets_B = batch["targets_B"]
        target_B = jnp.einsum("bd,bd->b", user_BxD, table_VxD[targets_B])
        negatives_BxN = jnp.einsum("bd,bnd->bn", user_BxD, table_VxD[batch["negatives_BxN"]])
        out = {"rank_sampled": rank_of_target(target_B, negatives_BxN)}
        if full_ranking:
            scores_BxV = user_BxD @ table_VxD.T
            ids_V = jnp.arange(table_VxD.shape[0])
            batch_size = targets_B.shape[0]
            seen_BxV = (
                jnp.zeros(scores_BxV.shape, bool).at[jnp.arange(batch_size)[:, None], batch["history_BxH"]].set(True)
            )
            # Candidates: real items (not padding rows) outside the user's history, minus the target.
            valid_BxV = (ids_V > 0) & (ids_V <= num_items) & ~seen_BxV & (ids_V[None] != targets_B[:, None])
            out["rank_full"] = rank_of_target(target_B, scores_BxV, valid_BxV)
        return out

    return eval_step
