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
from jaxrec.engine import mesh as mesh_lib
from jaxrec.ops.losses import real_item_rows
from jaxrec.ops.ranking import rank_of_target
from jaxrec.tasks.next_item.loss import training_loss

# rbg keys: dropout masks are the bulk of the random bits in a step, and threefry is slow on CPU.
RNG_IMPL = "rbg"


def compiler_options() -> dict[str, str]:
    """XLA options for our executables on the current backend.

    CPU: with YNNPACK fusions of the small matmuls in these models (d = 50) an ML-1M epoch took
    14.2 s instead of 10.3 s on a 2-core AMD EPYC (benchmarks/results/cpu/train_throughput.jsonl),
    so they are off.
    """
    if jax.default_backend() == "cpu":
        return {"xla_cpu_experimental_ynn_fusion_type": ""}
    return {}


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


def init_state(model, tx, cfg: Config, mesh=None) -> TrainState:
    """The initial state; with a `mesh`, created already sharded by `jaxrec.engine.mesh`'s rules.

    Sharded: the state's shapes come from `eval_shape`, and one jitted init with those out_shardings
    writes each device's shard in place, so an item table larger than one device never exists whole.
    """
    key = jax.random.key(cfg.train.seed, impl=RNG_IMPL)
    init_key, base_key = jax.random.split(key)
    dummy_BxL = jnp.ones((1, cfg.model.max_len), jnp.int32)

    def init(init_key, base_key):
        params = model.init({"params": init_key}, dummy_BxL, method=model.encode)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng_data=jax.random.key_data(base_key),
        )

    # jit even unsharded: an eager init would compile every op of the model one by one.
    if mesh is None:
        return jax.jit(init)(init_key, base_key)
    shardings = mesh_lib.tree_shardings(jax.eval_shape(init, init_key, base_key), mesh, cfg.mesh.fsdp)
    return jax.jit(init, out_shardings=shardings)(init_key, base_key)


def split_micro_batches(x_BxF, num_micro: int):
    """B x ... -> num_micro x (B / num_micro) x ...: micro-batch j takes rows j, j + num_micro, ...

    Strided, not contiguous: a batch split over the mesh's `data` axis holds contiguous blocks of
    rows, so a contiguous micro-batch would sit on one device and the scan over micro-batches would
    run one device at a time. Strided, each micro-batch spreads evenly over every block (when
    B / num_micro is a multiple of the data axis), and its rows are the same whatever the mesh.
    """
    batch = x_BxF.shape[0]
    return jnp.swapaxes(x_BxF.reshape(batch // num_micro, num_micro, *x_BxF.shape[1:]), 0, 1)


def make_train_step(model, tx, cfg: Config, mesh=None, mean_positions_per_batch: float | None = None):
    """Returns train_step(state, batch) -> (state, metrics); jit it with the state donated.

    `mesh`: the mesh the step will be sharded over, for the losses that run vocabulary-parallel on it.
    `mean_positions_per_batch` (TrainBatches.mean_positions_per_batch): the gradient's divisor when
    train.loss_normalizer is "epoch" (else the batch's own count of positions). The reported loss
    is the mean over the batch's positions either way.

    With `train.micro_batch` = m < batch size, the batch is processed as B/m micro-batches in a
    `lax.scan` that accumulates gradients of the summed loss, then one optimizer update with the
    mean over all of the batch's positions: the same update as the whole batch at once, but each
    micro-batch's activations (and its LxL attention matrix) stay in cache, which on CPU is
    worth more than the extra loop overhead.
    """
    num_items = model.num_items
    micro = cfg.train.micro_batch or cfg.train.batch_size
    # Models whose targets are a sparse share of positions (BERT4Rec's cloze) say so; the CE skips the rest.
    target_fraction_of = getattr(type(model), "target_fraction", None)
    target_fraction = target_fraction_of(cfg.model) if target_fraction_of else None
    if cfg.train.loss_normalizer == "epoch" and not mean_positions_per_batch:
        raise ValueError("train.loss_normalizer=epoch needs the mean positions per batch of the data")

    def summed_loss(params, batch, dropout_key):
        user_inputs = {"user_BxF": batch["user_BxF"]} if "user_BxF" in batch else {}  # per-user inputs (MF)
        batch = type(model).training_batch(batch, jax.random.fold_in(dropout_key, 1 << 29), cfg.model, num_items)
        h_BxLxD, table_VxD = model.apply(
            {"params": params}, batch["inputs_BxL"], deterministic=False, rngs={"dropout": dropout_key}, **user_inputs
        )
        loss_key = jax.random.fold_in(dropout_key, 1 << 30)  # gbce's negatives; independent of dropout
        mean, count = training_loss(
            cfg.model, num_items, h_BxLxD, table_VxD, batch, loss_key, mesh, target_fraction=target_fraction
        )
        return mean * count, count

    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)

    def train_step(state: TrainState, batch):
        base = jax.random.wrap_key_data(state.rng_data, impl=RNG_IMPL)
        step_key = jax.random.fold_in(base, state.step)
        batch_size = batch["inputs_BxL"].shape[0]
        if micro >= batch_size:
            (loss_sum, count), grads = grad_fn(state.params, batch, step_key)
        else:
            num_micro = batch_size // micro
            micro_batches = jax.tree.map(lambda x: split_micro_batches(x, num_micro), batch)

            def accumulate(carry, xs):
                grads_acc, loss_acc, count_acc = carry
                micro_batch, index = xs
                (loss_sum, count), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(step_key, index))
                return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss_sum, count_acc + count), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(()), jnp.zeros(()))
            (grads, loss_sum, count), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(num_micro)))
        denominator = jnp.maximum(count, 1.0)
        divisor = mean_positions_per_batch if cfg.train.loss_normalizer == "epoch" else denominator
        grads = jax.tree.map(lambda g: g / divisor, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": loss_sum / denominator, "positions": count}

    return train_step


def make_eval_step(model, num_items: int, full_ranking: bool = True):
    """Returns eval_step(params, batch) -> {protocol: B ranks} (0-based, pessimistic).

    One rank per sampled protocol in batch['negatives'] ({'sampled': BxN, ...}) and 'full'.
    """

    def eval_step(params, batch):
        # Left padding: the last position is the newest, and the only one scored.
        inputs_BxL = type(model).inference_inputs(batch["inputs_BxL"], num_items)
        user_inputs = {"user_BxF": batch["user_BxF"]} if "user_BxF" in batch else {}
        h_Bx1xD, table_VxD = model.apply(
            {"params": params}, inputs_BxL, deterministic=True, last_only=True, **user_inputs
        )
        user_BxD = h_Bx1xD[:, 0].astype(jnp.float32)
        table_VxD = table_VxD.astype(jnp.float32)
        targets_B = batch["targets_B"]
        target_B = jnp.einsum("bd,bd->b", user_BxD, table_VxD[targets_B])
        out = {}
        for protocol, negatives_BxN in batch["negatives"].items():
            scores_BxN = jnp.einsum("bd,bnd->bn", user_BxD, table_VxD[negatives_BxN])
            out[protocol] = rank_of_target(target_B, scores_BxN)
        if full_ranking:
            scores_BxV = user_BxD @ table_VxD.T
            ids_V = jnp.arange(table_VxD.shape[0])  # for the target; real_item_rows for the rest
            batch_size = targets_B.shape[0]
            seen_BxV = (
                jnp.zeros(scores_BxV.shape, bool).at[jnp.arange(batch_size)[:, None], batch["history_BxH"]].set(True)
            )
            # Candidates: real items (not padding rows) outside the user's history, minus the target.
            valid_BxV = (
                real_item_rows(table_VxD.shape[0], num_items)[None] & ~seen_BxV & (ids_V[None] != targets_B[:, None])
            )
            out["full"] = rank_of_target(target_B, scores_BxV, valid_BxV)
        return out

    return eval_step
