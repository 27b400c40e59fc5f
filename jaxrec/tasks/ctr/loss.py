"""The CTR loss: BCE in float32 plus DIN's mini-batch aware L2.

Legend: B batch, V item-table rows, C genres, D embedding width.

Mini-batch aware regularisation (DIN, Zhou et al. 2018, eq. 4): instead of an L2 penalty on every
embedding row at every step, a step penalises only the rows its batch uses, each weighted by 1 / n_j,
where n_j is the number of training examples that use row j:
    l2_reg * sum_{j in batch} ||w_j||^2 / n_j.
Rows of the item table (the history items and the candidates) and of the genre table (the genres
of those items) are regularised; rows outside the batch get no gradient from it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.config import Config
from jaxrec.models.rankers import with_genres

NOT_MODEL_INPUTS = ("label_B", "weight_B", "user_B")


def model_inputs(batch, categories_VxC):
    """The model's inputs: the batch without labels, weights and user ids, plus genre multi-hots."""
    return with_genres({k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}, categories_VxC)


def init_variables(model, example_batch: dict[str, np.ndarray], categories_VxC):
    """init(key) -> the ranker's variables ({"params", "batch_stats" for Dice}), from two rows of a batch."""
    inputs = model_inputs({k: v[:2] for k, v in example_batch.items()}, categories_VxC)
    return lambda key: model.init({"params": key}, inputs)


def present_rows(ids, rows: int):
    """(rows,) float32: 1 where a row id occurs in `ids` (any shape), 0 elsewhere and at padding row 0."""
    return jnp.zeros((rows,), jnp.float32).at[ids.reshape(-1)].set(1.0).at[0].set(0.0)


def minibatch_l2(table_VxD, present_V, counts_V):
    """sum_j present_j ||w_j||^2 / n_j (n_j floored at 1, so unseen rows are not divided by 0)."""
    norms_V = jnp.sum(jnp.square(table_VxD.astype(jnp.float32)), axis=-1)
    return jnp.sum(present_V * norms_V / jnp.maximum(counts_V, 1.0))


def regularizer(params, batch, categories_VxC, item_counts_V, genre_counts_C):
    """Mini-batch aware L2 of the item and genre tables (module docstring)."""
    table = params["embed"]["item"]
    ids = jnp.concatenate([batch["history_BxL"].reshape(-1), batch["candidate_B"]])
    present_V = present_rows(ids, table.shape[0])
    counts_V = jnp.zeros((table.shape[0],), jnp.float32).at[: item_counts_V.shape[0]].set(item_counts_V)
    total = minibatch_l2(table, present_V, counts_V)
    if "genre" in params["embed"]:
        categories = jnp.asarray(categories_VxC, jnp.float32)
        present_C = (present_V[: categories.shape[0]] @ categories > 0).astype(jnp.float32)
        total += minibatch_l2(params["embed"]["genre"], present_C, jnp.asarray(genre_counts_C, jnp.float32))
    return total


def weighted_bce(logits_B, labels_B, weight_B):
    """Mean binary cross-entropy over the rows with weight (float32)."""
    losses = optax.sigmoid_binary_cross_entropy(logits_B.astype(jnp.float32), labels_B.astype(jnp.float32))
    return jnp.sum(losses * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)


def make_loss(model, cfg: Config, categories_VxC, item_counts_V, genre_counts_C):
    """The task's loss (`jaxrec.engine.step`): mean BCE + l2_reg x the mini-batch aware L2, with count 1;
    metrics "bce" and "l2"; the model state is Dice's batch statistics."""
    categories = jnp.asarray(categories_VxC, jnp.float32)
    item_counts = jnp.asarray(item_counts_V, jnp.float32)
    genre_counts = jnp.asarray(genre_counts_C, jnp.float32)
    l2_reg = cfg.ctr.l2_reg

    def loss(params, model_state, task_state, batch, key):
        (logits_B, _), updates = model.apply(
            {"params": params, **model_state},
            model_inputs(batch, categories),
            deterministic=False,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        bce = weighted_bce(logits_B, batch["label_B"], batch["weight_B"])
        l2 = regularizer(params, batch, categories, item_counts, genre_counts) if l2_reg > 0 else jnp.zeros(())
        model_state = {**model_state, **updates}  # new batch statistics (none without Dice)
        return bce + l2_reg * l2, (jnp.ones((), jnp.float32), model_state, {"bce": bce, "l2": l2})

    return loss


def make_predict(model, categories_VxC):
    """Returns predict(params, model_state, batch) -> logits_B float32 (inference mode); jit it."""
    categories = jnp.asarray(categories_VxC, jnp.float32)

    def predict(params, model_state, batch):
        logits_B, _ = model.apply({"params": params, **model_state}, model_inputs(batch, categories))
        return logits_B

    return predict
