"""Temporal split and evaluation: the cut-off, windows, modes, and metrics against brute force."""

import dataclasses

import numpy as np
import pytest

from jaxrec.data import Interactions
from jaxrec.data.events import from_interactions, history_batch, synthetic_events
from jaxrec.tasks.retrieval.temporal import (
    DAY,
    TemporalEvalConfig,
    TemporalSplit,
    evaluate,
    evaluation_points,
    p90_coverage,
    score_points,
    temporal_split,
)

HOUR = 3600
T0 = 1_000_000_000 // DAY * DAY  # a UTC midnight


def _events(sequences, actions=None):
    """Users 1.. with (item, hour after T0) events; optional per-event actions."""
    user, item, time = [], [], []
    for u, seq in enumerate(sequences, start=1):
        for i, h in seq:
            user.append(u), item.append(i), time.append(T0 + h * HOUR)
    extra = {} if actions is None else {"rating": np.concatenate(actions)}
    inter = Interactions(np.array(user), np.array(item), np.array(time), extra, "hand-made")
    return from_interactions(inter, "hand-made")


def _split_at(ds, cutoff_hours):
    cutoff = T0 + cutoff_hours * HOUR
    train_length = np.array([np.searchsorted(t, cutoff) for t in ds.timestamps])
    has_test = np.array([len(t) for t in ds.timestamps]) > train_length
    return TemporalSplit(ds, cutoff, train_length, np.flatnonzero(has_test))


def _positives(points):
    return [sorted(points.items[a:b].tolist()) for a, b in zip(points.offsets[:-1], points.offsets[1:])]


# User 1: items 1..6 then 2 again; the cut-off (47 h) falls after the second event.
HOURS = [0, 1, 48, 49, 72, 240, 241]
USER = [(i, h) for i, h in zip([1, 2, 3, 4, 5, 6, 2], HOURS)]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_respects_the_quantile_and_never_leaks(fraction):
    ds = synthetic_events(num_users=200, num_items=50, mean_length=20, seed=1)
    split = temporal_split(ds, test_fraction=fraction)
    times = np.concatenate(ds.timestamps)
    num_test = round(fraction * times.size)
    # The cut-off is the time of the num_test-th latest event; ties with it go to test.
    assert np.sort(times)[times.size - num_test] == split.cutoff
    assert (times >= split.cutoff).sum() >= num_test > (times > split.cutoff).sum()
    train = split.train
    assert sum(len(s) for s in train.items) == (times < split.cutoff).sum()
    for u in range(ds.num_users):
        n = split.train_length[u]
        assert np.all(train.timestamps[u] < split.cutoff) and np.all(ds.timestamps[u][n:] >= split.cutoff)
        np.testing.assert_array_equal(train.items[u], ds.items[u][:n])
    assert set(split.test_users.tolist()) == {u for u in range(ds.num_users) if ds.timestamps[u][-1] >= split.cutoff}
    unseen = temporal_split(ds, test_fraction=fraction, unseen_users_only=True)
    assert set(unseen.test_users.tolist()) <= set(split.test_users.tolist())
    assert np.all(unseen.train_length[unseen.test_users] == 0)


def test_windows_by_events_and_by_days():
    split = _split_at(_events([USER]), 47)
    once = TemporalEvalConfig(mode="once")
    points = evaluation_points(split, dataclasses.replace(once, window_size=3))
    assert points.length.tolist() == [2] and points.time.tolist() == [split.cutoff]
    assert _positives(points) == [[3, 4, 5]]
    for days, expected in ((1, [3, 4]), (2, [3, 4, 5]), (8.5, [3, 4, 5, 6])):
        points = evaluation_points(split, dataclasses.replace(once, window_unit="days", window_size=days))
        assert _positives(points) == [expected], days
    # Without exclusion the repeat of item 2 (seen before the cut-off) becomes a positive.
    points = evaluation_points(split, dataclasses.replace(once, window_size=10, exclude_seen=False))
    assert _positives(points) == [[2, 3, 4, 5, 6]]


def test_realtime_and_daily_points():
    split = _split_at(_events([USER]), 47)
    realtime = evaluation_points(split, TemporalEvalConfig(mode="realtime", window_size=2))
    assert realtime.length.tolist() == [2, 3, 4, 5]  # after the repeat of 2 nothing new is left
    assert realtime.time.tolist() == [split.cutoff] + [T0 + h * HOUR for h in (48, 49, 72)]
    assert _positives(realtime) == [[3, 4], [4, 5], [5, 6], [6]]
    np.testing.assert_allclose(realtime.weight, 0.25)
    kept = evaluation_points(split, TemporalEvalConfig(mode="realtime", window_size=2, exclude_seen=False))
    assert _positives(kept)[-2:] == [[2, 6], [2]]
    # A 1.5 h window: from the cut-off (47 h) it holds the 48 h event, from 48 h the 49 h one, later nothing new.
    by_time = evaluation_points(split, TemporalEvalConfig(mode="realtime", window_unit="days", window_size=1 / 16))
    assert by_time.length.tolist() == [2, 3] and _positives(by_time) == [[3], [4]]
    # Daily: the cut-off, then the ends of days 2 (72 h) and 3 (96 h); day 10's end has nothing after it.
    daily = evaluation_points(split, TemporalEvalConfig(mode="daily", window_size=10, weighting="point"))
    assert daily.length.tolist() == [2, 4, 5]
    assert daily.time.tolist() == [split.cutoff, T0 + 3 * DAY, T0 + 4 * DAY]
    assert _positives(daily) == [[3, 4, 5, 6], [5, 6], [6]] and daily.weight.tolist() == [1.0, 1.0, 1.0]


def test_positive_actions_and_duplicates_in_the_window():
    ds = _events([[(1, 0), (2, 50), (2, 51), (3, 52)]], actions=[np.array([5, 2, 4, 5])])
    split = _split_at(ds, 47)
    cfg = TemporalEvalConfig(window_size=3, exclude_seen=False)
    assert _positives(evaluation_points(split, cfg)) == [[2, 3]]  # 2 counted once
    ids = [ds.action_names.index(str(r)) + 1 for r in (4, 5)]
    liked = evaluation_points(split, dataclasses.replace(cfg, positive_actions=tuple(ids)))
    assert _positives(liked) == [[2, 3]] and liked.offsets.tolist() == [0, 2]  # the 2 rated 4 counts
    only_5 = evaluation_points(split, dataclasses.replace(cfg, positive_actions=(ids[1],)))
    assert _positives(only_5) == [[3]]


def _next_item_model(num_items):
    """Scores item (last + 1) highest: identity item embeddings, user = one-hot of the next id."""
    eye = np.eye(num_items + 1, dtype=np.float32)

    def embed(batch):
        return eye[np.minimum(batch["item_ids_BxL"][:, -1] + 1, num_items)]

    return embed, eye


def test_once_and_realtime_differ_where_they_should():
    ds = _events([[(i, h) for i, h in zip([1, 2, 3, 4, 5], [0, 1, 48, 49, 50])]])
    split = _split_at(ds, 47)
    embed, items = _next_item_model(ds.num_items)
    cfg = TemporalEvalConfig(window_size=3, ks=(1,))
    once = evaluate(embed, items, split, cfg, max_len=4)
    realtime = evaluate(embed, items, split, dataclasses.replace(cfg, mode="realtime"), max_len=4)
    # Once: predicts 3 of {3, 4, 5}. Realtime: 3 of {3, 4, 5}, 4 of {4, 5}, 5 of {5}.
    assert once["recall@1"] == pytest.approx(1 / 3) and once["points"] == 1
    assert realtime["recall@1"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3) and realtime["points"] == 3
    assert "entropy@50" not in once  # no item categories


def _random_setup(seed=0):
    ds = synthetic_events(num_users=60, num_items=40, mean_length=12, seed=seed)
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(ds.num_items + 1, 8)).astype(np.float32)
    items = rng.normal(size=(ds.num_items + 1, 8)).astype(np.float32)

    def embed(batch):  # depends on the history and on the query time
        return table[batch["item_ids_BxL"]].sum(axis=1) + np.sin(batch["query_time_B"] / 977.0)[:, None]

    return ds, embed, items


def _brute_force(embed, items, split, cfg, max_len):
    ds, points = split.data, evaluation_points(split, cfg)
    recall = {k: 0.0 for k in cfg.ks}
    entropy, impressions, weight = 0.0, np.zeros(ds.num_items + 1), 0.0
    for q in range(len(points)):
        u, n, w = points.user[q], points.length[q], points.weight[q]
        one = history_batch(ds, np.array([u]), np.array([n]), np.array([points.time[q]]), max_len)
        scores = items[1:] @ embed(one)[0]
        candidates = [i + 1 for i in np.argsort(-scores) if not (cfg.exclude_seen and i + 1 in ds.items[u][:n])]
        positives = set(points.items[points.offsets[q] : points.offsets[q + 1]].tolist())
        for k in cfg.ks:
            recall[k] += w * len(positives & set(candidates[:k])) / len(positives)
        counts = ds.item_categories[candidates[:50]].sum(axis=0)
        p = counts[counts > 0] / counts.sum()
        entropy += w * -(p * np.log(p)).sum()
        for i in candidates[:10]:
            impressions[i] += w
        weight += w
    needed, covered, total = 0, 0.0, impressions.sum()
    for c in sorted(impressions[1:], reverse=True):
        needed, covered = needed + 1, covered + c
        if covered >= 0.9 * total:
            break
    out = {f"recall@{k}": v / weight for k, v in recall.items()}
    return {**out, "entropy@50": entropy / weight, "p90_coverage@10": needed / ds.num_items, "points": len(points)}


@pytest.mark.parametrize(
    "mode, exclude_seen, weighting", [("once", True, "user"), ("realtime", True, "user"), ("daily", False, "point")]
)
def test_metrics_match_brute_force(mode, exclude_seen, weighting):
    ds, embed, items = _random_setup()
    split = temporal_split(ds, test_fraction=0.3)
    cfg = TemporalEvalConfig(mode=mode, exclude_seen=exclude_seen, weighting=weighting, ks=(1, 5, 10), batch_size=32)
    got = evaluate(embed, items, split, cfg, max_len=6)
    expected = _brute_force(embed, items, split, cfg, max_len=6)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_chunks_merge_to_the_same_sums():
    ds, embed, items = _random_setup(seed=2)
    split = temporal_split(ds, test_fraction=0.3)
    cfg = TemporalEvalConfig(mode="realtime", ks=(3,))
    points = evaluation_points(split, cfg)
    whole = score_points(embed, items, ds, points, dataclasses.replace(cfg, batch_size=len(points)), 5)
    chunked = score_points(embed, items, ds, points, dataclasses.replace(cfg, batch_size=7), 5)
    np.testing.assert_allclose(chunked.impressions, whole.impressions)
    assert chunked.sums.keys() == whole.sums.keys()
    for key in whole.sums:
        assert chunked.sums[key] == pytest.approx(whole.sums[key]), key


def test_p90_coverage_by_hand():
    assert p90_coverage(np.array([0, 0, 0, 10])) == 0.25
    assert p90_coverage(np.array([5, 5, 0, 0])) == 0.5  # 5 < 9, 10 >= 9
    assert p90_coverage(np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])) == 0.9
    assert p90_coverage(np.zeros(4)) == 0.0


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(mode="hourly"), "mode must be one of"),
        (dict(window_unit="weeks"), "window_unit"),
        (dict(window_size=2.5), "whole number"),
        (dict(weighting="item"), "weighting"),
    ],
)
def test_bad_config_is_named(change, message):
    split = _split_at(_events([USER]), 47)
    with pytest.raises(ValueError, match=message):
        evaluation_points(split, TemporalEvalConfig(**change))
