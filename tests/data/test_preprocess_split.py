"""k-core, dense remapping, chronological order, leave-one-out, eval negatives, synthetic data."""

import numpy as np
import pytest

from jaxrec.data import (
    DataError,
    Interactions,
    SequenceDataset,
    generate,
    kcore_filter,
    to_sequences,
)
from jaxrec.tasks.next_item.split import leave_one_out, sample_eval_negatives


def _ints(x):
    return np.asarray(x, dtype=np.int64)


def _log(user, item, timestamp=None, **extra):
    ts = None if timestamp is None else _ints(timestamp)
    extra = {k: np.asarray(v) for k, v in extra.items()}
    return Interactions(user=_ints(user), item=_ints(item), timestamp=ts, extra=extra, source="test.log")


def _pairs(inter):
    return sorted(zip(inter.user.tolist(), inter.item.tolist(), strict=True))


def test_kcore_iterates_to_fixed_point():
    # One pass drops user 4 only; that leaves item 12 with one rating, then user 3 with one.
    inter = _log([1, 1, 2, 2, 3, 3, 4], [10, 11, 10, 11, 11, 12, 12], rating=[1, 2, 3, 4, 5, 6, 7])
    out = kcore_filter(inter, 2, 2)
    assert _pairs(out) == [(1, 10), (1, 11), (2, 10), (2, 11)]
    np.testing.assert_array_equal(out.extra["rating"], [1, 2, 3, 4])
    assert _pairs(kcore_filter(out, 2, 2)) == _pairs(out)


def test_kcore_sides_can_be_disabled():
    inter = _log([1, 1, 2], [10, 11, 10])
    assert kcore_filter(inter, 0, 0) is inter
    assert _pairs(kcore_filter(inter, 2, 0)) == [(1, 10), (1, 11)]
    assert _pairs(kcore_filter(inter, 0, 2)) == [(1, 10), (2, 10)]


def test_kcore_that_empties_says_which_filter():
    with pytest.raises(DataError, match=r"test.log: the k-core filter \(data.min_user_interactions=5"):
        kcore_filter(_log([1, 2], [3, 4]), 5, 0)


def test_to_sequences_remaps_with_padding_reserved():
    ds = to_sequences(_log([30, 10, 30, 20], [100, 7, 55, 7]), "x")
    assert ds.num_users == 3 and ds.num_items == 3 and ds.num_interactions == 4
    np.testing.assert_array_equal(ds.user_raw_ids, [10, 20, 30])
    np.testing.assert_array_equal(ds.item_raw_ids, [-1, 7, 55, 100])
    assert [s.tolist() for s in ds.sequences] == [[1], [1], [3, 2]]
    assert all(s.dtype == np.int32 for s in ds.sequences) and ds.timestamps is None


def test_to_sequences_orders_by_time_with_stable_ties():
    items = [1, 2, 3, 4, 5, 6, 7]
    times = [50, 30, 30, 10, 30, 90, 30]
    ds = to_sequences(_log([1, 1, 1, 1, 1, 1, 2], items, times), "x")
    assert ds.sequences[0].tolist() == [4, 2, 3, 5, 1, 6]  # the three ties at t=30 keep file order
    assert ds.timestamps[0].tolist() == [10, 30, 30, 30, 50, 90]
    many = to_sequences(_log([1] * 200, np.arange(200, 0, -1), [7] * 200), "x")
    assert many.sequences[0].tolist() == list(range(200, 0, -1))


def test_to_sequences_genres_and_empty():
    ds = to_sequences(_log([1, 1], [20, 10]), "x", raw_item_genres={10: ["Drama"], 99: ["War"]})
    assert ds.item_genres == {1: ["Drama"]}
    with pytest.raises(DataError, match="test.log: no interactions"):
        to_sequences(_log([], []), "x")


def _dataset(sequences, num_items):
    return SequenceDataset(
        name="t",
        sequences=[np.asarray(s, dtype=np.int32) for s in sequences],
        num_items=num_items,
        user_raw_ids=np.arange(len(sequences)),
        item_raw_ids=np.arange(-1, num_items),
        timestamps=None,
    )


def test_leave_one_out_like_sasrec():
    split = leave_one_out(_dataset([[1, 2, 3, 4], [5, 6], [7, 8, 9], [2]], 9))
    assert [t.tolist() for t in split.train] == [[1, 2], [5, 6], [7], [2]]
    assert split.valid_target.tolist() == [3, 0, 8, 0]
    assert split.test_target.tolist() == [4, 0, 9, 0]
    assert split.valid_target.dtype == np.int32 and split.num_items == 9


def test_leave_one_out_validation_sample_trains_the_other_users_on_their_second_to_last_item():
    sequences = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [2]] + [[u % 9 + 1, 3, 5, u % 7 + 1] for u in range(20)]
    full = leave_one_out(_dataset(sequences, 9))
    split = leave_one_out(_dataset(sequences, 9), validation_users=5, seed=1)
    validated = np.flatnonzero(split.valid_target > 0)
    assert len(validated) == 5 and set(validated) <= set(np.flatnonzero(full.valid_target > 0))
    np.testing.assert_array_equal(split.test_target, full.test_target)
    for u, seq in enumerate(sequences):
        expected = seq if len(seq) < 3 else seq[:-2] if u in validated else seq[:-1]
        assert split.train[u].tolist() == expected, u
        assert split.train[u].dtype == np.int32
    np.testing.assert_array_equal(split.valid_target[validated], full.valid_target[validated])
    # The draw follows the seed; asking for more users than can validate keeps SASRec's split.
    again = leave_one_out(_dataset(sequences, 9), validation_users=5, seed=1)
    np.testing.assert_array_equal(again.valid_target, split.valid_target)
    other = leave_one_out(_dataset(sequences, 9), validation_users=5, seed=2)
    assert not np.array_equal(other.valid_target, split.valid_target)
    everyone = leave_one_out(_dataset(sequences, 9), validation_users=100)
    np.testing.assert_array_equal(everyone.valid_target, full.valid_target)


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_eval_negatives_avoid_history_and_are_deterministic(distribution):
    ds = generate(300, 120, 30, seed=1)
    split = leave_one_out(ds)
    valid, test = sample_eval_negatives(split, 50, seed=3, distribution=distribution)
    assert valid.shape == test.shape == (300, 50) and valid.dtype == np.int32
    for u, seq in enumerate(ds.sequences):
        history = set(seq.tolist())
        for row in (valid[u], test[u]):
            assert row.min() >= 1 and row.max() <= ds.num_items
            if len(history) + 50 <= ds.num_items:
                assert len(set(row.tolist())) == 50
            assert not history & set(row.tolist())
    again = sample_eval_negatives(split, 50, seed=3, distribution=distribution)
    np.testing.assert_array_equal(valid, again[0])
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(valid, sample_eval_negatives(split, 50, seed=4, distribution=distribution)[0])


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_eval_negatives_small_catalogue(distribution):
    split = leave_one_out(_dataset([[1, 2, 3], [4, 5, 6, 1, 2]], 6))
    valid, test = sample_eval_negatives(split, 4, seed=0, distribution=distribution)
    assert set(valid[0].tolist()) <= {4, 5, 6}  # 3 left for 4 draws: with repeats
    assert set(test[1].tolist()) == {3}
    with pytest.raises(DataError, match="user 0 interacted with all 6 items"):
        sample_eval_negatives(leave_one_out(_dataset([[1, 2, 3, 4, 5, 6]], 6)), 4, seed=0, distribution=distribution)


def test_popularity_negatives_follow_item_counts():
    # One draw per user is an exact categorical over the user's unseen items, weight = count.
    ds = generate(300, 60, 12, seed=2)
    split = leave_one_out(ds)
    counts = np.bincount(np.concatenate(ds.sequences), minlength=61).astype(float)
    expected = np.zeros(61)
    for seq in ds.sequences:
        weight = counts.copy()
        weight[0] = 0
        weight[np.asarray(seq)] = 0
        expected += 2 * weight / weight.sum()  # valid and test draws
    seeds = 40
    drawn = np.zeros(61)
    for seed in range(seeds):
        valid, test = sample_eval_negatives(split, 1, seed=seed, distribution="popularity")
        drawn += np.bincount(np.r_[valid[:, 0], test[:, 0]], minlength=61)
    total_variation = 0.5 * np.abs(drawn / drawn.sum() - expected / expected.sum()).sum()
    uniform_variation = 0.5 * np.abs(1 / 60 - expected[1:] / expected.sum()).sum()
    assert total_variation < 0.03 < uniform_variation, (total_variation, uniform_variation)


def test_eval_negatives_reject_unknown_distribution():
    split = leave_one_out(_dataset([[1, 2, 3]], 6))
    with pytest.raises(DataError, match="distribution"):
        sample_eval_negatives(split, 4, seed=0, distribution="zipf")


def test_synthetic_is_deterministic_skewed_and_sequential():
    ds = generate(500, 200, 20, seed=0)
    again = generate(500, 200, 20, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(ds.sequences, again.sequences, strict=True))
    other = generate(500, 200, 20, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(ds.sequences, other.sequences, strict=True))
    lengths = np.array([len(s) for s in ds.sequences])
    assert ds.num_users == 500 and lengths.min() >= 5 and 15 < lengths.mean() < 25 and lengths.std() > 3
    counts = np.bincount(np.concatenate(ds.sequences), minlength=ds.num_items + 1)[1:]
    top = np.sort(counts)[::-1][: ds.num_items // 10]
    assert top.sum() > 0.3 * counts.sum()  # top 10% of items: > 30% of interactions
    assert all((np.diff(t) > 0).all() for t in ds.timestamps)
    assert ds.item_genres and all(ds.item_genres.get(i) for i in range(1, ds.num_items + 1))
    # Sequential signal: the most frequent successor of the previous item beats the most popular item.
    pairs = np.concatenate([np.stack([s[:-1], s[1:]], axis=1) for s in ds.sequences])
    bigram = np.zeros((ds.num_items + 1, ds.num_items + 1), dtype=np.int64)
    np.add.at(bigram, (pairs[:, 0], pairs[:, 1]), 1)
    markov_hits = (bigram.argmax(axis=1)[pairs[:, 0]] == pairs[:, 1]).mean()
    popular_hits = (pairs[:, 1] == counts.argmax() + 1).mean()
    assert markov_hits > 2.5 * popular_hits
