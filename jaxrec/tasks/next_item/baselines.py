"""Non-learned baselines evaluated with the same leave-one-out protocol as the models."""

from __future__ import annotations

import numpy as np

from jaxrec.ops.ranking import means, metric_sums


def popularity_metrics(split, eval_negatives, ks) -> dict[str, float]:
    """Most-popular (training counts) ranked exactly as the models are: sampled and full, ties against."""
    counts = np.bincount(np.concatenate(split.train), minlength=split.num_items + 1).astype(np.float64)
    counts[0] = -np.inf
    out = {}
    for which, targets, negatives, histories in (
        ("valid", split.valid_target, eval_negatives[0], split.train),
        ("test", split.test_target, eval_negatives[1], split.test_histories()),
    ):
        users = np.flatnonzero(targets > 0)
        sampled, full = [], []
        for u in users:
            history = histories[u]
            target = targets[u]
            t = counts[target]
            sampled.append(int((counts[negatives[u]] >= t).sum()))
            excluded = np.setdiff1d(history, [target])
            beats = counts[1:] >= t
            beats[target - 1] = False
            full.append(int(beats.sum() - (counts[excluded] >= t).sum()))
        weight = np.ones(len(users))
        out.update(means(metric_sums(np.array(sampled), weight, ks, "sampled"), len(users), which))
        out.update(means(metric_sums(np.array(full), weight, ks, "full"), len(users), which))
    return out
