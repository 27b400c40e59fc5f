"""Per-user chronological event sequences with features, for PinnerFormer-style retrieval.

Legend: U users, I items (dense ids 1..I, 0 is padding), C item categories, B batch, L history length.

An event is (item, timestamp) plus optional features: an action type (ML-1M: the rating), the
surface it happened on, and a duration in seconds. A feature the source lacks is None, and the
model config simply leaves it out of `model.event_features`.

History batches (`history_batch`) are left padded to L, oldest first, and hold:
    item_ids_BxL     int32 dense item ids, 0 = padding
    timestamps_BxL   int32 unix seconds (0 at padding); int32 keeps time arithmetic exact on device
    action_BxL       int32 action ids 1..A-1, 0 = padding          (when the data has actions)
    surface_BxL      int32 surface ids 1..S-1, 0 = padding         (when the data has surfaces)
    duration_BxL     float32 seconds, 0 at padding                  (when the data has durations)
    query_time_B     int32 unix seconds at which the embedding is computed (last event, or a cut-off)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.config import DataConfig
from jaxrec.data.datasets import REGISTRY
from jaxrec.data.preprocess import kcore_filter
from jaxrec.data.synthetic import GENRES, generate_interactions
from jaxrec.data.types import DataError, Interactions

SYNTHETIC_ACTIONS = ("view", "click", "save", "hide")
SYNTHETIC_SURFACES = ("home", "search", "related")
SYNTHETIC_START = 1_000_000_000  # unix seconds of the synthetic horizon's start (September 2001)
SYNTHETIC_DAYS = 60  # length of the synthetic horizon
_INT32_MAX = 2**31 - 1
# The columns of a data file (data.name=file, MovieLens) that become event features when present; synthetic
# data names its action column "action". Time features ("time", "gap", "age") need only the timestamps.
FEATURE_COLUMNS = {"action": "rating", "surface": "surface", "duration": "duration"}


@dataclasses.dataclass
class EventDataset:
    """Per-user chronological events with dense ids; per-user lists are aligned with `items`.

    Attributes:
        name: dataset name.
        items: per user, int32 item ids 1..num_items, oldest first (ties in file order).
        timestamps: per user, int64 unix seconds, non-decreasing.
        action: per user, int32 action ids 1..len(action_names), or None.
        surface: per user, int32 surface ids 1..len(surface_names), or None.
        duration: per user, float32 seconds, or None.
        num_items: catalogue size; items are 1..num_items.
        user_raw_ids: (U,) raw id of each dense user, ascending.
        item_raw_ids: (num_items + 1,) raw id of each dense item; entry 0 is -1.
        item_categories: (num_items + 1, C) bool multi-hot categories (row 0 empty), or None.
        category_names: the C category names, in column order.
        action_names: name of action id a is `action_names[a - 1]`.
        surface_names: name of surface id s is `surface_names[s - 1]`.
    """

    name: str
    items: list[np.ndarray]
    timestamps: list[np.ndarray]
    action: list[np.ndarray] | None
    surface: list[np.ndarray] | None
    duration: list[np.ndarray] | None
    num_items: int
    user_raw_ids: np.ndarray
    item_raw_ids: np.ndarray
    item_categories: np.ndarray | None = None
    category_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    surface_names: tuple[str, ...] = ()

    @property
    def num_users(self) -> int:
        return len(self.items)

    @property
    def num_events(self) -> int:
        return int(sum(len(s) for s in self.items))

    @property
    def action_vocab(self) -> int:
        """Rows an action embedding needs (ids and padding 0): `model.num_actions` must be at least this."""
        return len(self.action_names) + 1 if self.action is not None else 0

    @property
    def surface_vocab(self) -> int:
        """Rows a surface embedding needs: `model.num_surfaces` must be at least this."""
        return len(self.surface_names) + 1 if self.surface is not None else 0

    @property
    def features(self) -> tuple[str, ...]:
        """Event features present, in `model.event_features` names (time features need only timestamps)."""
        present = [n for n in ("action", "surface", "duration") if getattr(self, n) is not None]
        return (*present, "time", "gap", "age")

    def truncate(self, lengths_U: np.ndarray) -> EventDataset:
        """The dataset with each user u cut to its first `lengths_U[u]` events."""

        def cut(seqs):
            return None if seqs is None else [s[:n] for s, n in zip(seqs, lengths_U.tolist())]

        return dataclasses.replace(
            self,
            items=cut(self.items),
            timestamps=cut(self.timestamps),
            action=cut(self.action),
            surface=cut(self.surface),
            duration=cut(self.duration),
        )


def _categorical(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Ids 1..n for the sorted distinct values, and their names."""
    distinct, ids = np.unique(values, return_inverse=True)
    return (ids + 1).astype(np.int32), tuple(str(v) for v in distinct.tolist())


def _multi_hot(raw_item_ids: np.ndarray, raw_genres: dict[int, list[str]]) -> tuple[np.ndarray, tuple[str, ...]]:
    names = tuple(sorted({g for gs in raw_genres.values() for g in gs}))
    column = {g: j for j, g in enumerate(names)}
    table = np.zeros((raw_item_ids.size + 1, len(names)), dtype=bool)
    for dense, raw in enumerate(raw_item_ids.tolist(), start=1):
        for g in raw_genres.get(raw, ()):
            table[dense, column[g]] = True
    return table, names


def from_interactions(
    inter: Interactions,
    name: str,
    raw_item_genres: dict[int, list[str]] | None = None,
    action_col: str = "rating",
    surface_col: str = "surface",
    duration_col: str = "duration",
) -> EventDataset:
    """Groups a timestamped log into per-user event sequences; `extra` columns become features.

    Users get dense ids 0..U-1 and items 1..I in ascending raw-id order (as `to_sequences`);
    within a user events are ordered by timestamp, ties in file order. The action and surface
    columns are categorical (distinct values -> ids 1..n, sorted: ML-1M ratings 1..5 keep their
    value as id); a column missing from `extra` gives a None feature.
    """
    if inter.timestamp is None:
        raise DataError(f"{inter.source}: event sequences need timestamps, and this log has only an order")
    if not len(inter):
        raise DataError(f"{inter.source}: no interactions to build event sequences from")
    lo, hi = int(inter.timestamp.min()), int(inter.timestamp.max())
    if lo < 0 or hi > _INT32_MAX:
        # Batches carry int32 seconds so that time differences stay exact on device.
        raise DataError(f"{inter.source}: timestamps must be unix seconds in [0, 2**31), got {lo}..{hi}")
    user_raw, user = np.unique(inter.user, return_inverse=True)
    item_raw, item = np.unique(inter.item, return_inverse=True)
    order = np.lexsort((inter.timestamp, user))  # stable: user, then time, then file order
    bounds = np.cumsum(np.bincount(user, minlength=len(user_raw)))[:-1]

    def per_user(column, dtype):
        return np.split(np.asarray(column, dtype)[order], bounds)

    action = surface = None
    action_names = surface_names = ()
    if action_col in inter.extra:
        ids, action_names = _categorical(inter.extra[action_col])
        action = per_user(ids, np.int32)
    if surface_col in inter.extra:
        ids, surface_names = _categorical(inter.extra[surface_col])
        surface = per_user(ids, np.int32)
    duration = None
    if duration_col in inter.extra:
        seconds = inter.extra[duration_col]
        if not np.issubdtype(seconds.dtype, np.number):
            raise DataError(f"{inter.source}: the {duration_col!r} column must hold numbers (seconds)")
        with np.errstate(over="ignore"):
            seconds = seconds.astype(np.float32)
        if not np.isfinite(seconds).all():
            raise DataError(
                f"{inter.source}: the {duration_col!r} column has {np.sum(~np.isfinite(seconds))} values that are "
                "not finite float32 seconds (nan, inf or beyond 3.4e38)"
            )
        duration = per_user(seconds, np.float32)
    categories, category_names = (None, ())
    if raw_item_genres is not None:
        categories, category_names = _multi_hot(item_raw, raw_item_genres)
    return EventDataset(
        name=name,
        items=per_user(item + 1, np.int32),
        timestamps=per_user(inter.timestamp, np.int64),
        action=action,
        surface=surface,
        duration=duration,
        num_items=len(item_raw),
        user_raw_ids=user_raw.astype(np.int64),
        item_raw_ids=np.concatenate([[-1], item_raw]).astype(np.int64),
        item_categories=categories,
        category_names=category_names,
        action_names=action_names,
        surface_names=surface_names,
    )


def synthetic_interactions(
    num_users: int, num_items: int, mean_length: int, seed: int
) -> tuple[Interactions, dict[int, list[str]]]:
    """`generate_interactions` (same items, same order) re-timed, plus action, surface and duration columns.

    Timestamps: each user is active over 20-100% of a common `SYNTHETIC_DAYS`-day horizon with
    exponential gaps, so a global time cut-off finds users on both sides of it (the base
    generator gives each user a burst of hours somewhere in three years). An event whose item
    shares a genre with the user's previous item (a successor step of the Markov chain, mostly)
    is more often saved, seen on the "related" surface and watched longer; a jump is more often
    a "home" view or hidden. Names: SYNTHETIC_ACTIONS, SYNTHETIC_SURFACES.
    """
    inter, genres = generate_interactions(num_users, num_items, mean_length, seed)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the items above are unchanged
    lengths = np.bincount(inter.user, minlength=num_users + 1)[1:]  # rows are grouped by user, users 1..U
    horizon = SYNTHETIC_DAYS * 86400.0
    span = horizon * rng.uniform(0.2, 1.0, num_users)
    start = SYNTHETIC_START + rng.uniform(0.0, 1.0, num_users) * (horizon - span)
    elapsed = np.cumsum(rng.exponential(1.0, len(inter)))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    begin, end = np.repeat(elapsed[offsets[:-1]], lengths), np.repeat(elapsed[offsets[1:] - 1], lengths)
    share = (elapsed - begin) / np.maximum(end - begin, 1e-9)  # 0 at a user's first event, 1 at its last
    timestamp = (np.repeat(start, lengths) + share * np.repeat(span, lengths)).astype(np.int64)
    genre_bits = np.zeros(num_items + 1, dtype=np.int64)
    for raw, names in genres.items():
        genre_bits[raw] = sum(1 << GENRES.index(g) for g in names)
    bits = genre_bits[inter.item]
    first = np.concatenate([[True], inter.user[1:] != inter.user[:-1]])  # rows are grouped by user
    related = ~first & ((bits & np.roll(bits, 1)) != 0)
    p_action = np.where(related[:, None], [0.35, 0.3, 0.3, 0.05], [0.6, 0.25, 0.05, 0.1])
    p_surface = np.where(related[:, None], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1])
    action = (rng.random(len(inter))[:, None] > np.cumsum(p_action, axis=1)).sum(axis=1)
    surface = (rng.random(len(inter))[:, None] > np.cumsum(p_surface, axis=1)).sum(axis=1)
    engaged = (action == 1) | (action == 2)  # click or save
    duration = np.exp(rng.normal(np.log(5.0) + 1.5 * engaged, 1.0)).astype(np.float32)
    extra = {
        "action": np.asarray(SYNTHETIC_ACTIONS)[action],
        "surface": np.asarray(SYNTHETIC_SURFACES)[surface],
        "duration": duration,
    }
    return dataclasses.replace(inter, timestamp=timestamp, extra=extra), genres


def _with_synthetic_names(ds: EventDataset) -> EventDataset:
    """Action and surface ids in the order of the fixed name lists (sorted names read worse)."""

    def remap(seqs, got, wanted):
        table = np.array([0] + [wanted.index(n) + 1 for n in got], dtype=np.int32)
        return [table[s] for s in seqs]

    return dataclasses.replace(
        ds,
        action=remap(ds.action, ds.action_names, SYNTHETIC_ACTIONS),
        action_names=SYNTHETIC_ACTIONS,
        surface=remap(ds.surface, ds.surface_names, SYNTHETIC_SURFACES),
        surface_names=SYNTHETIC_SURFACES,
    )


def synthetic_events(num_users: int, num_items: int, mean_length: int, seed: int) -> EventDataset:
    """A synthetic EventDataset with every feature (see `synthetic_interactions`)."""
    inter, genres = synthetic_interactions(num_users, num_items, mean_length, seed)
    return _with_synthetic_names(from_interactions(inter, "synthetic", genres, action_col="action"))


def load_events(cfg: DataConfig) -> EventDataset:
    """Event sequences of registry entry `cfg.name` (k-core filtered as configured).

    `synthetic` has every feature; a MovieLens entry with timestamps (`ml-1m`, `ml-1m-partial`)
    has the rating as action type and genres as item categories, and is found through
    `datasets.default_data_dir` like every registry entry.

    Raises:
        DataError: unknown name, missing files, or a source without timestamps.
    """
    synthetic = cfg.name == "synthetic"
    if synthetic:
        inter, genres = synthetic_interactions(
            cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_mean_length, cfg.seed
        )
    else:
        loader = REGISTRY.get(cfg.name)
        if loader is None:
            raise DataError(f"unknown dataset {cfg.name!r} (data.name); known: {', '.join(REGISTRY)}")
        inter, genres = loader(cfg)
    inter = kcore_filter(inter, cfg.min_user_interactions, cfg.min_item_interactions)
    ds = from_interactions(inter, cfg.name, genres, action_col="action" if synthetic else FEATURE_COLUMNS["action"])
    return _with_synthetic_names(ds) if synthetic else ds


def history_batch(
    ds: EventDataset, users_B: np.ndarray, lengths_B: np.ndarray, query_time_B: np.ndarray, max_len: int
) -> dict[str, np.ndarray]:
    """Left-padded batch of each user's last `max_len` events among its first `lengths_B[b]`.

    Args:
        ds: the events.
        users_B: dense user of each row.
        lengths_B: the history of row b is `ds.items[users_B[b]][:lengths_B[b]]` (0 = empty history).
        query_time_B: unix seconds at which each row's embedding is computed.
        max_len: L, the model's history length.

    Returns:
        The batch keys in the module docstring; absent features are left out.
    """
    size = len(users_B)
    batch = {"item_ids_BxL": np.zeros((size, max_len), np.int32), "timestamps_BxL": np.zeros((size, max_len), np.int32)}
    columns = {"item_ids_BxL": ds.items, "timestamps_BxL": ds.timestamps}
    for key, seqs, dtype in (("action_BxL", ds.action, np.int32), ("surface_BxL", ds.surface, np.int32)):
        if seqs is not None:
            batch[key], columns[key] = np.zeros((size, max_len), dtype), seqs
    if ds.duration is not None:
        batch["duration_BxL"], columns["duration_BxL"] = np.zeros((size, max_len), np.float32), ds.duration
    for b, (u, n) in enumerate(zip(np.asarray(users_B).tolist(), np.asarray(lengths_B).tolist())):
        if not 0 <= n <= len(ds.items[u]):
            raise ValueError(f"history length {n} of row {b} is outside 0..{len(ds.items[u])} (events of user {u})")
        start = max(n - max_len, 0)
        for key, seqs in columns.items():
            batch[key][b, max_len - (n - start) :] = seqs[u][start:n]
    query = np.asarray(query_time_B, np.int64)
    if query.size and not 0 <= query.min() <= query.max() <= _INT32_MAX:
        raise DataError(f"{ds.name}: query times must be unix seconds in [0, 2**31), got {query.min()}..{query.max()}")
    batch["query_time_B"] = query.astype(np.int32)
    return batch
