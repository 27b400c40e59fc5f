"""Ranking metrics from ranks, kept as sums so batches (and shards) merge by addition.

A rank is the 0-based position of the target among its candidates: the number of candidates
scoring strictly higher plus the number tying with it (ties count against the target, never
in its favour). HR@K = [rank < K], NDCG@K = [rank < K] / log2(rank + 2), MRR = 1 / (rank + 1).
"""

from __future__ import annotations

import numpy as np


def rank_of_target(target_score_B, scores_BxC, valid_BxC=None):
    """Pessimistic 0-based rank of each target among the candidate scores (target not among them)."""
    beats = scores_BxC >= target_score_B[:, None]
    if valid_BxC is not None:
        beats = beats & valid_BxC
    return beats.sum(axis=-1)


def metric_sums(ranks_B: np.ndarray, weight_B: np.ndarray, ks: tuple[int, ...], suffix: str) -> dict[str, float]:
    """Weighted sums of HR@K, NDCG@K and MRR (divide by the weight sum for means)."""
    ranks = np.asarray(ranks_B, np.float64)
    weight = np.asarray(weight_B, np.float64)
    sums = {f"mrr_{suffix}": float((weight / (ranks + 1.0)).sum())}
    for k in ks:
        hit = (ranks < k) * weight
        sums[f"hr@{k}_{suffix}"] = float(hit.sum())
        sums[f"ndcg@{k}_{suffix}"] = float((hit / np.log2(ranks + 2.0)).sum())
    return sums


def merge(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value
    return total


def means(sums: dict[str, float], count: float, prefix: str) -> dict[str, float]:
    return {f"{prefix}/{key}": value / count for key, value in sorted(sums.items())}
