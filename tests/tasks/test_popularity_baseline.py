"""The most-popular baseline against plain-Python counting and ranking.

`popularity_metrics` ranks each target by its training count among the sampled negatives and among the
whole catalogue minus the user's history (the target itself always a candidate), ties counted against
the target, as the models are ranked (`jaxrec.ops.ranking`). Here the counts, ranks and metrics are
recomputed with loops over the users and items, on a hand-made split and on random ones.
"""

import math

import numpy as np
import pytest

from jaxrec.data.types import SequenceDataset
from jaxrec.tasks.next_item.baselines import popularity_metrics
from jaxrec.tasks.next_item.split import LeaveOneOutSplit, leave_one_out, sample_eval_negatives

KS = (1, 2, 5)


def _brute_force(split: LeaveOneOutSplit, negatives, ks) -> tuple[dict[str, float], dict[str, list[int]]]:
    """(metrics, {"valid_sampled": ranks, ...}) by loops; ranks in user order."""
    counts = {item: 0 for item in range(1, split.num_items + 1)}
    for seq in split.train:
        for item in seq:
            counts[int(item)] += 1
    metrics, all_ranks = {}, {}
    for which, targets, negs in (
        ("valid", split.valid_target, negatives[0]),
        ("test", split.test_target, negatives[1]),
    ):
        ranks = {"sampled": [], "full": []}
        for u in range(split.num_users):
            target = int(targets[u])
            if target == 0:
                continue
            history = [int(i) for i in split.train[u]]
            if which == "test" and split.valid_target[u] > 0:
                history.append(int(split.valid_target[u]))  # the test target follows the validation item
            t = counts[target]
            ranks["sampled"].append(sum(1 for n in negs[u] if n > 0 and counts[int(n)] >= t))
            ranks["full"].append(sum(1 for i in counts if i != target and i not in history and counts[i] >= t))
        for protocol, rs in ranks.items():
            all_ranks[f"{which}_{protocol}"] = rs
            n = len(rs)
            metrics[f"{which}/mrr_{protocol}"] = sum(1 / (r + 1) for r in rs) / n
            for k in ks:
                metrics[f"{which}/hr@{k}_{protocol}"] = sum(1 for r in rs if r < k) / n
                metrics[f"{which}/ndcg@{k}_{protocol}"] = sum(1 / math.log2(r + 2) for r in rs if r < k) / n
    return metrics, all_ranks


def _assert_same_metrics(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-12 * max(abs(value), 1.0), (key, got[key], value)


def _hand_made_split() -> tuple[LeaveOneOutSplit, tuple[np.ndarray, np.ndarray]]:
    """Six items; training counts 1: 4, 2: 4, 3: 3, 4: 1, 5: 0, 6: 0 (ties at the top and at zero)."""
    split = LeaveOneOutSplit(
        train=[
            np.array([1, 2, 3, 1], np.int32),  # a repeated item; its test target (2) is in its history
            np.array([2, 3], np.int32),
            np.array([1, 2], np.int32),  # fewer than 3 items: neither validated nor tested
            np.array([3, 2, 1], np.int32),  # outside a validation sample: tested only
            np.array([4], np.int32),  # validation and test target the same item (3)
        ],
        valid_target=np.array([4, 1, 0, 0, 3], np.int32),
        test_target=np.array([2, 5, 0, 6, 3], np.int32),
        num_items=6,
    )
    valid_negatives = np.array([[5, 6], [4, 6], [0, 0], [0, 0], [1, 5]], np.int32)
    test_negatives = np.array([[5, 6], [4, 6], [0, 0], [4, 5], [1, 5]], np.int32)
    return split, (valid_negatives, test_negatives)


def test_hand_made_split_gives_the_hand_computed_ranks():
    split, negatives = _hand_made_split()
    expected, ranks = _brute_force(split, negatives, KS)
    # By hand: user 4 validates on item 3 (count 3) behind the unseen items 1 and 2 (count 4): full rank 2;
    # user 1's test item 5 (count 0) ties with item 6 and trails item 4: rank 2 (ties count against it);
    # user 0 saw items 1-3, so its targets lead the unseen 5 and 6: rank 0.
    assert ranks == {
        "valid_sampled": [0, 0, 1],
        "valid_full": [0, 0, 2],
        "test_sampled": [0, 2, 2, 1],
        "test_full": [0, 2, 2, 2],
    }
    assert expected["test/hr@1_full"] == 0.25 and expected["valid/mrr_full"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    _assert_same_metrics(popularity_metrics(split, negatives, KS), expected)


@pytest.mark.parametrize("validation_users", [0, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_splits_match_brute_force(seed, validation_users):
    rng = np.random.default_rng(seed)
    num_items = 15
    # Skewed item draws with repeats, lengths 1..12 (some users too short to validate or test).
    weights = 1.0 / np.arange(1, num_items + 1)
    sequences = [
        rng.choice(np.arange(1, num_items + 1), size=int(rng.integers(1, 13)), p=weights / weights.sum())
        for _ in range(40)
    ]
    dataset = SequenceDataset(
        name="random",
        sequences=[s.astype(np.int32) for s in sequences],
        num_items=num_items,
        user_raw_ids=np.arange(len(sequences)),
        item_raw_ids=np.arange(-1, num_items),
        timestamps=None,
    )
    split = leave_one_out(dataset, validation_users, seed)
    negatives = sample_eval_negatives(split, 4, seed)
    expected, ranks = _brute_force(split, negatives, KS)
    assert len(set(ranks["test_full"])) > 3  # ranks spread over the catalogue
    _assert_same_metrics(popularity_metrics(split, negatives, KS), expected)
