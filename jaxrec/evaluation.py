"""Leave-one-out evaluation: sampled (target + N uniform negatives) and full-catalogue ranking.

Validation ranks the second-to-last item given the training history; test ranks the last item
given training history plus the validation item. Full ranking excludes the items of the input
history (the target itself always stays a candidate). Sampled negatives come from items the
user never interacted with (train, validation or test), drawn once with a fixed seed.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxrec.data.pipeline import eval_batches
from jaxrec.metrics import means, merge, metric_sums
from jaxrec.train_step import compiler_options, make_eval_step


class LeaveOneOutEvaluator:
    def __init__(self, split, eval_negatives, model, cfg, buckets):
        valid_negatives, test_negatives = eval_negatives
        max_len, batch_size = cfg.model.max_len, cfg.eval.batch_size
        test_inputs = [np.append(seq, v) if v > 0 else seq for seq, v in zip(split.train, split.valid_target)]
        self.batches = {
            "valid": eval_batches(
                split.train, split.valid_target, valid_negatives, split.train, max_len, batch_size, buckets
            ),
            "test": eval_batches(
                test_inputs, split.test_target, test_negatives, test_inputs, max_len, batch_size, buckets
            ),
        }
        self.ks = cfg.eval.ks
        self.full_ranking = cfg.eval.full_ranking
        self._jitted = jax.jit(make_eval_step(model, split.num_items, self.full_ranking))
        self._compiled = {}

    def eval_step(self, params, batch):
        """The jitted eval step, compiled once per batch shape (ahead of use, with our XLA options)."""
        inputs = {k: v for k, v in batch.items() if k != "weight_B"}  # weights stay on the host
        shapes = tuple(sorted((k, v.shape) for k, v in inputs.items()))
        if shapes not in self._compiled:
            self._compiled[shapes] = self._jitted.lower(params, inputs).compile(compiler_options=compiler_options())
        return self._compiled[shapes](params, inputs)

    def evaluate(self, params, which: str) -> dict[str, float]:
        """Mean metrics over the users of `which` ('valid' or 'test'), keys like 'valid/ndcg@10_full'."""
        sums: dict[str, float] = {}
        count = 0.0
        pending = [(batch, self.eval_step(params, batch)) for batch in self.batches[which]]
        for batch, ranks in pending:  # dispatch everything first, then read back
            weight = batch["weight_B"]
            merge(sums, metric_sums(np.asarray(ranks["rank_sampled"]), weight, self.ks, "sampled"))
            if self.full_ranking:
                merge(sums, metric_sums(np.asarray(ranks["rank_full"]), weight, self.ks, "full"))
            count += float(weight.sum())
        return means(sums, count, which)
