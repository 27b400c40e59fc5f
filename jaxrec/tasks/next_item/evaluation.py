"""Leave-one-out evaluation: sampled (target + N negatives) and full-catalogue ranking.

Validation ranks the second-to-last item given the training history; test ranks the last item
given training history plus the validation item. Full ranking excludes the items of the input
history (the target itself always stays a candidate). Sampled negatives come from items the
user never interacted with (train, validation or test), drawn once with a fixed seed: uniformly
(metric suffix `_sampled`, SASRec's protocol) and, optionally, in proportion to popularity
(`_popsampled`, BERT4Rec's protocol).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.engine import mesh as mesh_lib
from jaxrec.engine.compile import compiler_options
from jaxrec.engine.dispatch import DispatchWindow
from jaxrec.ops.losses import real_item_rows
from jaxrec.ops.ranking import means, merge, metric_sums, rank_of_target
from jaxrec.tasks.next_item.batches import eval_batches
from jaxrec.tasks.next_item.split import sample_eval_negatives


def draw_eval_negatives(split, cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Protocol name (the metric suffix) -> (valid, test) negatives, as the config asks."""
    protocols = {"sampled": "uniform"}
    if cfg.eval.popularity_negatives:
        protocols["popsampled"] = "popularity"
    return {
        name: sample_eval_negatives(split, cfg.eval.num_negatives, cfg.data.seed, distribution)
        for name, distribution in protocols.items()
    }


class LeaveOneOutEvaluator:
    def __init__(self, split, eval_negatives, model, cfg, buckets, users=None, mesh=None):
        """`eval_negatives`: protocol name -> (valid, test) negatives, see `draw_eval_negatives`.

        `users`: per-user model inputs (`jaxrec.data.datasets.user_inputs`) for models that take them.
        `mesh`: evaluate sharded: each process feeds its rows of a batch, split over `data`, against
        the (item-sharded) parameters; every process gets all ranks back and the same metrics.
        """
        self.mesh = mesh
        valid_negatives = {name: pair[0] for name, pair in eval_negatives.items()}
        test_negatives = {name: pair[1] for name, pair in eval_negatives.items()}
        max_len, batch_size = cfg.model.max_len, cfg.eval.batch_size
        test_inputs = split.test_histories()
        self.batches = {
            "valid": eval_batches(
                split.train, split.valid_target, valid_negatives, split.train, max_len, batch_size, buckets, users
            ),
            "test": eval_batches(
                test_inputs, split.test_target, test_negatives, test_inputs, max_len, batch_size, buckets, users
            ),
        }
        self.ks = cfg.eval.ks
        self.full_ranking = cfg.eval.full_ranking
        self._jitted = jax.jit(make_eval_step(model, split.num_items, self.full_ranking))
        self._compiled = {}

    def eval_step(self, params, batch):
        """The jitted eval step, compiled once per batch shape (ahead of use, with our XLA options)."""
        inputs = {k: v for k, v in batch.items() if k != "weight_B"}  # weights stay on the host
        if self.mesh is not None:
            rows = mesh_lib.process_rows(len(batch["weight_B"]), self.mesh)
            inputs = mesh_lib.put_batch(jax.tree.map(lambda x: x[rows], inputs), self.mesh)
        shapes = str(jax.tree.map(np.shape, inputs))
        if shapes not in self._compiled:
            self._compiled[shapes] = self._jitted.lower(params, inputs).compile(compiler_options=compiler_options())
        return self._compiled[shapes](params, inputs)

    def evaluate(self, params, which: str) -> dict[str, float]:
        """Mean metrics over the users of `which` ('valid' or 'test'), keys like 'valid/ndcg@10_full'."""
        sums: dict[str, float] = {}
        count = 0.0
        window, pending = DispatchWindow(), []
        for batch in self.batches[which]:  # dispatch ahead (a bounded window), then read back
            ranks = self.eval_step(params, batch)
            window.push(ranks)
            pending.append((batch, ranks))
        for batch, ranks in pending:
            weight = batch["weight_B"]
            for name, rank_B in ranks.items():  # 'sampled', 'popsampled', 'full'
                merge(sums, metric_sums(mesh_lib.to_host(rank_B), weight, self.ks, name))
            count += float(weight.sum())
        return means(sums, count, which)


def make_eval_step(model, num_items: int, full_ranking: bool = True):
    """Returns eval_step(params, batch) -> {protocol: B ranks} (0-based, pessimistic).

    One rank per sampled protocol in batch['negatives'] ({'sampled': BxN, ...}) and 'full'.
    """

    def eval_step(params, batch):
        # Left padding: the last position is the newest, and the only one scored.
        inputs_BxL = model.inference_inputs(batch["inputs_BxL"], num_items)
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
