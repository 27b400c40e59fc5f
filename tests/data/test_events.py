"""Event sequences: grouping and features, synthetic events, history batches, loading ML-1M ratings."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from jaxrec.config import DataConfig
from jaxrec.data import DataError, Interactions, default_data_dir
from jaxrec.data.datasets import ML1M_PARTIAL_FILE
from jaxrec.data.events import (
    SYNTHETIC_ACTIONS,
    SYNTHETIC_SURFACES,
    from_interactions,
    history_batch,
    load_events,
    synthetic_events,
)


def _log(**extra):
    return Interactions(
        user=np.array([7, 3, 7, 7, 3]),
        item=np.array([50, 10, 20, 10, 50]),
        timestamp=np.array([300, 100, 100, 100, 200]),
        extra={k: np.asarray(v) for k, v in extra.items()},
        source="hand-made",
    )


def test_groups_by_user_in_time_order_with_features():
    inter = _log(rating=[5, 3, 1, 4, 3], surface=["b", "a", "a", "b", "b"], duration=[1.0, 2.0, 3.0, 4.0, 5.0])
    ds = from_interactions(inter, "toy", {10: ["Drama"], 50: ["Comedy", "Drama"]})
    assert ds.num_users == 2 and ds.num_items == 3 and ds.num_events == 5
    # Raw items 10, 20, 50 -> 1, 2, 3; user 7's ties at t=100 keep file order (20 then 10).
    assert [s.tolist() for s in ds.items] == [[1, 3], [2, 1, 3]]
    assert [s.tolist() for s in ds.timestamps] == [[100, 200], [100, 100, 300]]
    assert ds.action_names == ("1", "3", "4", "5") and [s.tolist() for s in ds.action] == [[2, 2], [1, 3, 4]]
    assert ds.surface_names == ("a", "b") and [s.tolist() for s in ds.surface] == [[1, 2], [1, 2, 2]]
    assert [s.tolist() for s in ds.duration] == [[2.0, 5.0], [3.0, 4.0, 1.0]]
    assert ds.category_names == ("Comedy", "Drama")
    np.testing.assert_array_equal(ds.item_categories, [[0, 0], [0, 1], [0, 0], [1, 1]])
    assert ds.action_vocab == 5 and ds.surface_vocab == 3
    assert ds.features == ("action", "surface", "duration", "time", "gap", "age")


def test_absent_features_are_none_and_timestamps_are_required():
    ds = from_interactions(_log(), "toy")
    assert ds.action is None and ds.surface is None and ds.duration is None and ds.item_categories is None
    assert ds.action_vocab == 0 and ds.features == ("time", "gap", "age")
    untimed = _log()
    untimed.timestamp = None
    with pytest.raises(DataError, match="hand-made: event sequences need timestamps"):
        from_interactions(untimed, "toy")
    millis = _log()
    millis.timestamp = millis.timestamp * 10**10
    with pytest.raises(DataError, match="unix seconds"):
        from_interactions(millis, "toy")


def test_truncate_keeps_prefixes_of_every_feature():
    ds = from_interactions(_log(rating=[5, 3, 1, 4, 3]), "toy")
    cut = ds.truncate(np.array([0, 2]))
    assert [s.tolist() for s in cut.items] == [[], [2, 1]]
    assert [s.tolist() for s in cut.action] == [[], [1, 3]] and cut.surface is None


def test_synthetic_events_have_every_feature_aligned_and_seeded():
    ds = synthetic_events(num_users=40, num_items=30, mean_length=15, seed=3)
    assert ds.action_names == SYNTHETIC_ACTIONS and ds.surface_names == SYNTHETIC_SURFACES
    assert ds.features == ("action", "surface", "duration", "time", "gap", "age")
    for u in range(ds.num_users):
        n = len(ds.items[u])
        assert n >= 5 and len(ds.timestamps[u]) == len(ds.action[u]) == len(ds.surface[u]) == len(ds.duration[u]) == n
        assert np.all(np.diff(ds.timestamps[u]) >= 0)
    actions = np.concatenate(ds.action)
    assert set(actions.tolist()) <= {1, 2, 3, 4} and np.all(np.concatenate(ds.duration) > 0)
    assert ds.item_categories.shape == (ds.num_items + 1, 8) and ds.item_categories[1:].any(axis=1).all()
    again = synthetic_events(num_users=40, num_items=30, mean_length=15, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(ds.action, again.action))
    # Longer durations for clicks and saves: the features carry signal.
    duration = np.concatenate(ds.duration)
    assert np.median(duration[(actions == 2) | (actions == 3)]) > 2 * np.median(duration[actions == 1])


def test_history_batch_left_pads_truncates_and_omits_absent_features():
    ds = from_interactions(_log(rating=[5, 3, 1, 4, 3]), "toy")
    batch = history_batch(ds, np.array([1, 0, 1]), np.array([3, 0, 2]), np.array([400, 150, 100]), max_len=2)
    assert set(batch) == {"item_ids_BxL", "timestamps_BxL", "action_BxL", "query_time_B"}
    np.testing.assert_array_equal(batch["item_ids_BxL"], [[1, 3], [0, 0], [2, 1]])  # last 2 of 3; empty; first 2
    np.testing.assert_array_equal(batch["timestamps_BxL"], [[100, 300], [0, 0], [100, 100]])
    np.testing.assert_array_equal(batch["action_BxL"], [[3, 4], [0, 0], [1, 3]])
    assert batch["timestamps_BxL"].dtype == np.int32 and batch["query_time_B"].tolist() == [400, 150, 100]
    with pytest.raises(ValueError, match="history length 4 of row 0"):
        history_batch(ds, np.array([1]), np.array([4]), np.array([0]), max_len=2)


def test_load_events_synthetic_and_a_clear_error_without_the_partial_ml1m(tmp_path):
    ds = load_events(DataConfig(name="synthetic", synthetic_users=20, synthetic_items=30, synthetic_mean_length=10))
    assert ds.num_users == 20 and ds.action_names == SYNTHETIC_ACTIONS
    with pytest.raises(DataError, match=f"ml-1m-partial: {ML1M_PARTIAL_FILE} not found in .*empty"):
        load_events(DataConfig(name="ml-1m-partial", data_dir=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_events(DataConfig(name="nope"))


def test_partial_ml1m_from_a_small_copy(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / ML1M_PARTIAL_FILE).write_bytes(gzip.compress(b"2::20::5::30\n1::10::3::20\n1::20::4::10\n"))
    (folder / "movies.dat").write_bytes(
        "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n".encode("latin-1")
    )
    ds = load_events(DataConfig(name="ml-1m-partial", data_dir=str(tmp_path)))
    assert [s.tolist() for s in ds.items] == [[2, 1], [2]]
    assert ds.action_names == ("3", "4", "5") and [s.tolist() for s in ds.action] == [[2, 1], [3]]  # ratings 4 3, 5
    assert ds.category_names == ("Action", "Comedy", "Romance")


def test_real_partial_ml1m():
    found = default_data_dir("")
    if found is None or not (Path(found) / "ml-1m" / ML1M_PARTIAL_FILE).is_file():
        pytest.skip(f"{ML1M_PARTIAL_FILE} not found: set JAXREC_DATA to the shared data folder")
    ds = load_events(DataConfig(name="ml-1m-partial", data_dir=found))
    assert (ds.num_users, ds.num_items, ds.num_events) == (2999, 3615, 487_650)
    assert ds.user_raw_ids.tolist() == list(range(1, 3000))
    # Ratings are the action type: ids 1..5 are ratings 1..5. User 1's first line is 1::1193::5::978300760.
    assert ds.action_names == ("1", "2", "3", "4", "5") and ds.action_vocab == 6
    first = np.flatnonzero((ds.item_raw_ids[ds.items[0]] == 1193) & (ds.timestamps[0] == 978300760))
    assert first.size == 1 and ds.action[0][first[0]] == 5
    assert ds.surface is None and ds.duration is None
    assert len(ds.category_names) == 18 and ds.item_categories[1:].any(axis=1).all()
    assert all(np.all(np.diff(t) >= 0) for t in ds.timestamps)
