import numpy as np
import pytest

from jaxrec.data.negatives import left_pad
from jaxrec.engine.feed import train_iterator
from jaxrec.tasks.next_item.batches import TrainBatches, eval_batches, parse_buckets


def _seqs(num_users=50, num_items=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.permutation(num_items)[: rng.integers(2, 30)].astype(np.int32) + 1 for _ in range(num_users)]


def test_parse_buckets():
    assert parse_buckets("none", 200) == (200,)
    assert parse_buckets("auto", 200) == (40, 72, 104, 136, 168, 200)
    assert parse_buckets("32, 64", 50) == (32, 50)
    with pytest.raises(ValueError, match="length_buckets"):
        parse_buckets("short", 50)


def test_left_pad_keeps_the_most_recent_items():
    out = left_pad([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [5, 6, 7, 8]])


def test_batches_are_fixed_shape_left_padded_shifted_and_exclude_history():
    seqs = _seqs()
    plan = TrainBatches(seqs, 40, max_len=16, batch_size=8, buckets=(8, 16), seed=0)
    seen_users = []
    for step in range(plan.steps_per_epoch):
        length, users = plan.epoch_plan(0)[step]
        batch = plan(step)
        assert {v.shape for v in batch.values()} == {(8, length)}
        seen_users += list(users)
        for row, u in enumerate(users):
            seq = seqs[u]
            n = min(len(seq) - 1, length)
            np.testing.assert_array_equal(batch["inputs_BxL"][row, length - n :], seq[:-1][-n:])
            np.testing.assert_array_equal(batch["positives_BxL"][row, length - n :], seq[1:][-n:])
            assert not batch["positives_BxL"][row, : length - n].any()
            negatives = batch["negatives_BxL"][row]
            assert np.all((negatives > 0) == (batch["positives_BxL"][row] > 0))
            assert not np.isin(negatives[negatives > 0], seq).any()
        assert not batch["positives_BxL"][len(users) :].any()  # padding rows of a partial batch
    assert sorted(seen_users) == list(range(len(seqs)))  # every user exactly once per epoch


def test_batches_are_a_pure_function_of_step_and_epochs_differ():
    plan = TrainBatches(_seqs(), 40, max_len=16, batch_size=8, buckets=(8, 16), seed=0)
    again = TrainBatches(_seqs(), 40, max_len=16, batch_size=8, buckets=(8, 16), seed=0)
    for step in (0, 5, plan.steps_per_epoch + 1):
        for key, value in plan(step).items():
            np.testing.assert_array_equal(value, again(step)[key])
    first = [tuple(u) for _, u in plan.epoch_plan(0)]
    second = [tuple(u) for _, u in plan.epoch_plan(1)]
    assert first != second


def test_grain_iterator_resumes_mid_stream():
    plan = TrainBatches(_seqs(), 40, max_len=16, batch_size=8, buckets=(16,), seed=3)
    full = list(train_iterator(plan, 0, 10))
    resumed = list(train_iterator(plan, 6, 10))
    assert len(full) == 10 and len(resumed) == 4
    for a, b in zip(full[6:], resumed):
        np.testing.assert_array_equal(a["negatives_BxL"], b["negatives_BxL"])


def test_no_trainable_user_is_an_error():
    with pytest.raises(ValueError, match="nothing to train on"):
        TrainBatches([np.array([1])], 5, 8, 4, (8,), 0)


def test_eval_batches_cover_every_user_with_a_target_once():
    seqs = _seqs(30)
    targets = np.array([0 if i % 7 == 0 else 1 + i % 40 for i in range(30)], np.int32)
    negatives = np.ones((30, 5), np.int32)
    batches = eval_batches(seqs, targets, {"sampled": negatives}, seqs, max_len=16, batch_size=8, buckets=(8, 16))
    weights = np.concatenate([b["weight_B"] for b in batches])
    got = np.concatenate([b["targets_B"] for b in batches])[weights > 0]
    assert sorted(got.tolist()) == sorted(targets[targets > 0].tolist())
    for b in batches:
        assert b["history_BxH"].shape[1] == max(len(s) for s in seqs)


def test_a_process_builds_exactly_its_rows_of_the_global_batch():
    """Multi-host data parallelism: each process's rows equal the same rows of the one-process batch."""
    from jaxrec.engine.feed import ProcessRows

    plan = TrainBatches(_seqs(), 40, max_len=16, batch_size=8, buckets=(8, 16), seed=0)
    for step in range(3):
        whole = plan(step)
        halves = [ProcessRows(plan, slice(0, 4))(step), ProcessRows(plan, slice(4, 8))(step)]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    assert ProcessRows(plan, None)(0)["inputs_BxL"].shape[0] == 8


def test_mean_positions_per_batch_counts_target_positions_up_to_max_len():
    seqs = [np.arange(1, n + 1) for n in (3, 5, 30)]  # 2, 4 and 29 -> 16 target positions
    plan = TrainBatches(seqs, 40, max_len=16, batch_size=8, buckets=(8, 16), seed=0)
    assert plan.mean_positions_per_batch == pytest.approx(8 * (2 + 4 + 16) / 3)


def test_a_single_training_item_trains_as_a_whole_sequence_not_as_a_pair():
    seqs = [np.array([3], np.int32), np.array([1, 2], np.int32)]
    pairs = TrainBatches(seqs, 40, max_len=8, batch_size=4, buckets=(8,), seed=0)
    whole = TrainBatches(seqs, 40, max_len=8, batch_size=4, buckets=(8,), seed=0, whole_sequence=True)
    assert list(pairs.users) == [1] and list(whole.users) == [0, 1]
    assert (pairs.target_positions, whole.target_positions) == (1, 3)
    assert 3 in whole(0)["positives_BxL"]
    with pytest.raises(ValueError, match="no user has 2 or more training interactions"):
        TrainBatches(seqs[:1], 40, max_len=8, batch_size=4, buckets=(8,), seed=0)


def test_whole_sequence_batches_hold_every_training_item_first_included():
    # BERT4Rec's cloze: a sequence of n items fills n positions (pairs would give n - 1 and lose the first).
    seqs = [np.arange(1, n + 1, dtype=np.int32) for n in (8, 9, 3, 30)]
    plan = TrainBatches(seqs, 40, max_len=16, batch_size=4, buckets=(8, 16), seed=0, whole_sequence=True)
    # Bucketed by n: 8 items fit the length-8 bucket; 9 need 16 (as pairs, 9 items would fit 8).
    assert [plan.buckets[b] for b in plan.user_bucket] == [8, 16, 8, 16]
    assert plan.mean_positions_per_batch == pytest.approx(4 * (8 + 9 + 3 + 16) / 4)
    for step in range(plan.steps_per_epoch):
        length, users = plan.epoch_plan(0)[step]
        batch = plan(step)
        np.testing.assert_array_equal(batch["positives_BxL"], batch["inputs_BxL"])
        for row, u in enumerate(users):
            n = min(len(seqs[u]), length)
            np.testing.assert_array_equal(batch["inputs_BxL"][row], left_pad([seqs[u]], length)[0])
            assert (
                batch["inputs_BxL"][row, length - n] == seqs[u][-n] and not batch["inputs_BxL"][row, : length - n].any()
            )
            assert np.all((batch["negatives_BxL"][row] > 0) == (batch["inputs_BxL"][row] > 0))
