"""The one train state, its optimizer, and its initialisation directly in its sharding.

Legend: V item-table rows, D embedding width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxrec.engine import mesh as mesh_lib

# rbg keys: dropout masks are the bulk of the random bits in a step, and threefry is slow on CPU.
RNG_IMPL = "rbg"


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # trainable parameters (a plain pytree)
    opt_state: Any  # optax state
    rng_data: jax.Array  # raw key data of the base rng; step keys are fold_in(rng, step)
    model_state: Any  # the model's other variable collections, e.g. {"batch_stats": ...} ({} when none)
    task_state: Any  # the task's streaming state, e.g. a frequency sketch (None when none)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """Adam with `train.learning_rate`, `adam_b1`, `adam_b2`, and L2 via `train.weight_decay` (0 = off)."""
    adam = optax.adam(train_cfg.learning_rate, b1=train_cfg.adam_b1, b2=train_cfg.adam_b2)
    if train_cfg.weight_decay > 0:
        return optax.chain(optax.add_decayed_weights(train_cfg.weight_decay), adam)
    return adam


def step_key(state: TrainState) -> jax.Array:
    """The step's key: fold_in(base, step), so every random stream is a function of the step (resume)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng_data, impl=RNG_IMPL), state.step)


def init_state(
    init_variables: Callable[[jax.Array], dict],
    tx: optax.GradientTransformation,
    seed: int,
    mesh=None,
    fsdp: bool = False,
    init_task_state: Callable[[], Any] = lambda: None,
) -> TrainState:
    """The initial state; with a `mesh`, created already sharded.

    `init_variables(key)`: the model's variables ({"params": ..., other collections}), as `model.init` returns
    them, with the logical axes the model gave its parameters (`nn.with_logical_partitioning`). The shapes
    come from `eval_shape`, and one jitted init with those out_shardings writes each device's shard in place,
    so an item table larger than one device never exists whole.
    """
    init_key, base_key = jax.random.split(jax.random.key(seed, impl=RNG_IMPL))

    def init(init_key, base_key):
        variables = dict(nn.meta.unbox(init_variables(init_key)))
        params = variables.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng_data=jax.random.key_data(base_key),
            model_state=variables,
            task_state=init_task_state(),
        )

    # jit even unsharded: an eager init would compile every op of the model one by one.
    if mesh is None:
        return jax.jit(init)(init_key, base_key)
    param_axes = nn.get_partition_spec(jax.eval_shape(init_variables, init_key)["params"])
    shardings = mesh_lib.state_shardings(jax.eval_shape(init, init_key, base_key), param_axes, mesh, fsdp)
    return jax.jit(init, out_shardings=shardings)(init_key, base_key)
