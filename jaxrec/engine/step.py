"""The one train step every task runs: the step's rng, the micro-batch scan, the loss normaliser, the update.

A task supplies its loss as

    loss_fn(params, model_state, task_state, batch, key) -> (summed_loss, (count, model_state, metrics))

`summed_loss` is the loss summed over the batch's `count` targets (a task whose loss is already a mean
returns it with count 1), `model_state` the model's updated non-trainable collections (batch statistics),
`metrics` more scalars to report. The step divides the gradient by `count` (or by a fixed divisor: the
epoch normaliser) and reports the mean loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxrec.engine.state import TrainState, step_key


def split_micro_batches(x_BxF, num_micro: int):
    """B x ... -> num_micro x (B / num_micro) x ...: micro-batch j takes rows j, j + num_micro, ...

    Strided, not contiguous: a batch split over the mesh's `data` axis holds contiguous blocks of
    rows, so a contiguous micro-batch would sit on one device and the scan over micro-batches would
    run one device at a time. Strided, each micro-batch spreads evenly over every block (when
    B / num_micro is a multiple of the data axis), and its rows are the same whatever the mesh.
    """
    batch = x_BxF.shape[0]
    return jnp.swapaxes(x_BxF.reshape(batch // num_micro, num_micro, *x_BxF.shape[1:]), 0, 1)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    micro_batch: int = 0,
    loss_divisor: float | None = None,
    update_task_state: Callable[[Any, dict, jax.Array], Any] | None = None,
):
    """Returns train_step(state, batch) -> (state, {"loss", "positions", **the task's metrics}); jit it with
    the state donated.

    `micro_batch` = m < batch size: the batch runs as B/m micro-batches in a `lax.scan` that accumulates the
    gradients of the summed loss (micro-batch j's key is fold_in(step key, j)), then one update: the same
    update as the whole batch at once, with each micro-batch's activations small enough to stay in cache.
    `loss_divisor`: divide the gradient by this constant instead of the batch's count of targets.
    `update_task_state(task_state, batch, step)`: runs before the loss (a frequency sketch sees the batch).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch):
        key = step_key(state)
        task_state = state.task_state
        if update_task_state is not None:
            task_state = update_task_state(task_state, batch, state.step)
        batch_size = jax.tree.leaves(batch)[0].shape[0]
        if not micro_batch or micro_batch >= batch_size:
            (loss_sum, (count, model_state, metrics)), grads = grad_fn(
                state.params, state.model_state, task_state, batch, key
            )
        else:
            num_micro = batch_size // micro_batch
            micro_batches = jax.tree.map(lambda x: split_micro_batches(x, num_micro), batch)

            def accumulate(carry, xs):
                grads_acc, loss_acc, count_acc, model_state = carry
                micro, index = xs
                (loss_sum, (count, model_state, metrics)), grads = grad_fn(
                    state.params, model_state, task_state, micro, jax.random.fold_in(key, index)
                )
                carry = (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss_sum, count_acc + count, model_state)
                return carry, metrics

            zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(()), jnp.zeros(()), state.model_state)
            (grads, loss_sum, count, model_state), metrics = jax.lax.scan(
                accumulate, zeros, (micro_batches, jnp.arange(num_micro))
            )
            metrics = jax.tree.map(lambda x: x.mean(0), metrics)
        denominator = jnp.maximum(count, 1.0)
        divisor = denominator if loss_divisor is None else loss_divisor
        grads = jax.tree.map(lambda g: g / divisor, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            model_state=model_state,
            task_state=task_state,
        )
        return new_state, {"loss": loss_sum / denominator, "positions": count, **metrics}

    return train_step
