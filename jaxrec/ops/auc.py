"""CTR metrics on the host in float64: AUC, GAUC and log loss, with ties handled exactly.

Legend: N examples. AUC is the Mann-Whitney statistic: over all (positive, negative) pairs, 1 when the
positive scores higher, 0.5 on a tie, 0 otherwise, averaged; computed from rank averages in
O(N log N): AUC = (sum of positives' average ranks - P (P + 1) / 2) / (P Q) for P positives and
Q negatives. GAUC (the DIN paper's) is each user's AUC weighted by the user's number of examples;
users whose examples all have one label have no AUC and are left out of both sums.
"""

from __future__ import annotations

import numpy as np


def _average_ranks(scores_N: np.ndarray, groups_N: np.ndarray) -> np.ndarray:
    """1-based rank of each score within its group, ties sharing the average of their ranks."""
    order = np.lexsort((scores_N, groups_N))
    s, g = scores_N[order], groups_N[order]
    n = len(s)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    run_last = np.r_[run_first[1:], n] - 1
    average = (run_first + run_last) / 2.0 - group_start[run_first] + 1.0  # per run, within its group
    ranks = np.empty(n, np.float64)
    ranks[order] = average[run_id]
    return ranks


def _grouped_auc(labels_N, scores_N, groups_N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC per group, examples per group, whether the group has both labels), groups in sorted order."""
    labels = np.asarray(labels_N, np.float64)
    scores = np.asarray(scores_N, np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be matching 1-d arrays, got {labels.shape} and {scores.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    _, group = np.unique(np.asarray(groups_N), return_inverse=True)
    ranks = _average_ranks(scores, group)
    count = np.bincount(group).astype(np.float64)
    positives = np.bincount(group, weights=labels, minlength=len(count))
    negatives = count - positives
    rank_sum = np.bincount(group, weights=ranks * labels, minlength=len(count))
    both = (positives > 0) & (negatives > 0)
    auc = np.where(both, (rank_sum - positives * (positives + 1) / 2) / np.maximum(positives * negatives, 1), np.nan)
    return auc, count, both


def auc(labels_N, scores_N) -> float:
    """Global AUC (ties count one half); NaN when only one label occurs."""
    return float(_grouped_auc(labels_N, scores_N, np.zeros(len(labels_N), np.int64))[0][0])


def gauc(labels_N, scores_N, users_N) -> float:
    """Per-user AUC averaged with each user's number of examples as weight; one-label users skipped.

    NaN when no user has both labels.
    """
    per_user, count, both = _grouped_auc(labels_N, scores_N, users_N)
    if not both.any():
        return float("nan")
    return float(np.sum(per_user[both] * count[both]) / np.sum(count[both]))


def log_loss(labels_N, logits_N) -> float:
    """Mean binary cross-entropy of sigmoid(logits), computed stably from the logits."""
    y = np.asarray(labels_N, np.float64)
    z = np.asarray(logits_N, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def ctr_metrics(labels_N, logits_N, users_N, prefix: str) -> dict[str, float]:
    """{prefix/auc, prefix/gauc, prefix/logloss, prefix/examples, prefix/positive_rate}."""
    labels = np.asarray(labels_N, np.float64)
    return {
        f"{prefix}/auc": auc(labels, logits_N),
        f"{prefix}/gauc": gauc(labels, logits_N, users_N),
        f"{prefix}/logloss": log_loss(labels, logits_N),
        f"{prefix}/examples": float(labels.size),
        f"{prefix}/positive_rate": float(labels.mean()),
    }
