"""Leave-one-out splits and sampled evaluation negatives (SASRec protocol).

Legend: U = users, N = negatives per user.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.types import DataError, SequenceDataset


@dataclasses.dataclass
class LeaveOneOutSplit:
    """Per-user train prefix, validation item and test item.

    Attributes:
        train: per user, all but the last two items (SASRec `data_partition`); users
            with fewer than 3 items keep all of them, and users outside a validation sample
            (`leave_one_out(validation_users=N)`) all but the last one.
        valid_target: (U,) int32, the second-to-last item; 0 = user not validated.
        test_target: (U,) int32, the last item; 0 = user not evaluated.
        num_items: item ids are 1..num_items.
    """

    train: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray
    num_items: int

    @property
    def num_users(self) -> int:
        return len(self.train)

    def test_histories(self) -> list[np.ndarray]:
        """Per user, what the test target follows: the training items, then the validation item if it has one."""
        return [np.append(seq, v) if v > 0 else seq for seq, v in zip(self.train, self.valid_target)]


def leave_one_out(ds: SequenceDataset, validation_users: int = 0, seed: int = 0) -> LeaveOneOutSplit:
    """Splits every sequence into train / valid / test as SASRec's `data_partition` does.

    `validation_users` > 0 is gSASRec's protocol (its reference validates on 512 users): only that many
    users, drawn with `seed` from those with 3 or more items, keep their second-to-last item for
    validation; every other user trains on it. An N at least the number of such users keeps them all
    validating (SASRec's split). Test targets are the same either way.
    """
    num_users = ds.num_users
    valid = np.zeros(num_users, dtype=np.int32)
    test = np.zeros(num_users, dtype=np.int32)
    train = []
    for u, seq in enumerate(ds.sequences):
        if len(seq) < 3:
            train.append(np.asarray(seq, dtype=np.int32))
            continue
        train.append(np.asarray(seq[:-2], dtype=np.int32))
        valid[u] = seq[-2]
        test[u] = seq[-1]
    if validation_users > 0:
        eligible = np.flatnonzero(valid > 0)
        if validation_users < len(eligible):
            chosen = np.random.default_rng(seed).choice(eligible, size=validation_users, replace=False)
            for u in np.setdiff1d(eligible, chosen):
                train[u] = np.append(train[u], valid[u]).astype(np.int32)
                valid[u] = 0
    return LeaveOneOutSplit(train=train, valid_target=valid, test_target=test, num_items=ds.num_items)


def _history_keys(split: LeaveOneOutSplit) -> np.ndarray:
    """Sorted unique `user * (num_items + 1) + item` over train, valid and test."""
    stride = split.num_items + 1
    lengths = np.array([len(t) for t in split.train], dtype=np.int64)
    users = np.arange(split.num_users, dtype=np.int64)
    parts = [np.repeat(users, lengths) * stride + np.concatenate(split.train or [np.zeros(0)]).astype(np.int64)]
    for target in (split.valid_target, split.test_target):
        has = target > 0
        parts.append(users[has] * stride + target[has].astype(np.int64))
    # Sort-and-compare: np.unique's hash path is several times slower on 1M keys.
    keys = np.sort(np.concatenate(parts))
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys


def _first_unique_per_row(values: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Keeps, per row, the first `num` distinct positive values in column order.

    Returns:
        (rows x num) int64 values, -1 where a row has fewer; (rows,) count kept.
    """
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    repeat_sorted = np.zeros_like(ordered, dtype=bool)
    repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    keep = (values > 0) & ~repeat
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= num
    out = np.full((values.shape[0], num), -1, dtype=np.int64)
    rows, cols = np.nonzero(keep)
    out[rows, rank[rows, cols] - 1] = values[rows, cols]
    return out, keep.sum(axis=1)


def _draw(
    rng: np.random.Generator, keys: np.ndarray, split: LeaveOneOutSplit, num: int, weight: np.ndarray | None = None
) -> np.ndarray:
    """One (U x num) matrix of negatives; see `sample_eval_negatives`.

    `weight` (per item 1..n; None = uniform) is the proposal: draws come from it and are
    rejected when seen by the user or already taken, which is sequential weighted sampling
    without replacement (the same law as Gumbel top-k).
    """
    n, stride, num_users = split.num_items, split.num_items + 1, split.num_users
    bounds = np.searchsorted(keys, np.arange(num_users + 1, dtype=np.int64) * stride)
    prob = np.full(n, 1.0 / n) if weight is None else weight / weight.sum()
    cdf = np.cumsum(prob)
    seen_prob = np.r_[0.0, np.cumsum(prob[(keys % stride - 1).astype(np.int64)])]
    avail_mass = np.maximum(1.0 - (seen_prob[bounds[1:]] - seen_prob[bounds[:-1]]), 0.0)
    avail = n - np.diff(bounds)
    out = np.zeros((num_users, num), dtype=np.int64)

    def draw_from_complement(users):
        for u in users:
            complement = np.setdiff1d(np.arange(1, n + 1), keys[bounds[u] : bounds[u + 1]] - u * stride)
            if complement.size:
                p = prob[complement - 1]
                replace = complement.size < num or (p > 0).sum() < num
                out[u] = rng.choice(complement, num, replace=replace, p=p / p.sum() if p.sum() > 0 else None)
            elif split.test_target[u] > 0:
                raise DataError(f"user {u} interacted with all {n} items: no evaluation negatives can be drawn")

    # Rejection sampling stalls when little is left; those rows draw from the complement.
    explicit = (avail < 2 * num) | (avail_mass < 0.25)
    draw_from_complement(np.flatnonzero(explicit))
    rows = np.flatnonzero(~explicit)
    accepted = np.full((rows.size, num), -1, dtype=np.int64)
    have = np.zeros(rows.size, dtype=np.int64)
    for _ in range(50):
        if not rows.size:
            break
        # Size the batch of draws for a typical row; the unlucky rows go round again.
        reject_rate = np.median(1.0 / avail_mass[rows]) * (1.0 + num / np.median(avail[rows]))
        width = int(np.ceil((num - have).max() * reject_rate * 1.2)) + 8
        uniform = rng.random(size=(rows.size, width)) * cdf[-1]
        candidates = np.minimum(np.searchsorted(cdf, uniform, side="right"), n - 1) + 1
        cand_keys = rows[:, None] * stride + candidates
        pos = np.minimum(np.searchsorted(keys, cand_keys), max(keys.size - 1, 0))
        seen = keys[pos] == cand_keys if keys.size else np.zeros(cand_keys.shape, dtype=bool)
        merged = np.concatenate([accepted, np.where(seen, -1, candidates)], axis=1)
        accepted, have = _first_unique_per_row(merged, num)
        done = have == num
        out[rows[done]] = accepted[done]
        rows, accepted, have = rows[~done], accepted[~done], have[~done]
    draw_from_complement(rows)  # mass left in a few items: finish exactly (same law, numpy's sequential draw)
    return out.astype(np.int32)


def sample_eval_negatives(
    split: LeaveOneOutSplit, num_negatives: int, seed: int, distribution: str = "uniform"
) -> tuple[np.ndarray, np.ndarray]:
    """Draws negatives for a sampled-metric protocol.

    `uniform` is SASRec's protocol (100 per user, uniform over items); `popularity` is
    BERT4Rec's (100 per user, in proportion to each item's interaction count over the whole
    dataset, as the BERT4Rec code counts them). Each row holds `num_negatives` items from
    1..num_items that the user never interacted with (train, valid or test), without repeats
    when enough such items exist (else with repeats). Validation and test get independent
    draws. Deterministic for a seed.

    Args:
        split: the leave-one-out split.
        num_negatives: N, negatives per user.
        seed: numpy seed.
        distribution: 'uniform' or 'popularity'.

    Returns:
        (valid_negatives_UxN, test_negatives_UxN), int32. Rows of users with target 0 are
        drawn too but not meant to be used.

    Raises:
        DataError: if an evaluated user has interacted with every item.
    """
    if num_negatives < 1:
        raise DataError(f"num_negatives must be >= 1, got {num_negatives}")
    if distribution not in ("uniform", "popularity"):
        raise DataError(f"distribution must be 'uniform' or 'popularity', got {distribution!r}")
    rng = np.random.default_rng(seed)
    keys = _history_keys(split)
    weight = None
    if distribution == "popularity":
        every_interaction = np.concatenate([*split.train, split.valid_target, split.test_target]).astype(np.int64)
        weight = np.bincount(every_interaction, minlength=split.num_items + 1)[1:].astype(np.float64)
    return _draw(rng, keys, split, num_negatives, weight), _draw(rng, keys, split, num_negatives, weight)
