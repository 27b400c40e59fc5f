"""From a raw interaction log to dense, chronological per-user sequences."""

from __future__ import annotations

import numpy as np

from jaxrec.data.types import DataError, Interactions, SequenceDataset


def _occurrences(ids: np.ndarray) -> np.ndarray:
    """(N,) number of rows sharing each row's id."""
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return counts[inverse]


def kcore_filter(inter: Interactions, min_user: int, min_item: int) -> Interactions:
    """Keeps the largest subset where every user and every item has enough interactions.

    Dropping a user can push an item under its threshold and vice versa, so both sides
    are filtered until nothing changes (the k-core is unique, whatever the order).

    Args:
        inter: the log.
        min_user: minimum interactions per user; 0 (or 1) disables the user side.
        min_item: minimum interactions per item; 0 (or 1) disables the item side.

    Returns:
        The filtered log, rows in their original order.

    Raises:
        DataError: if the filter removes every interaction.
    """
    if min_user <= 1 and min_item <= 1:
        return inter
    current = inter
    while len(current):
        keep = np.ones(len(current), dtype=bool)
        if min_user > 1:
            keep &= _occurrences(current.user) >= min_user
        if min_item > 1:
            keep &= _occurrences(current.item) >= min_item
        if keep.all():
            break
        current = current.select(keep)
    if len(inter) and not len(current):
        raise DataError(
            f"{inter.source}: the k-core filter (data.min_user_interactions={min_user}, "
            f"data.min_item_interactions={min_item}) removed all {len(inter)} interactions"
        )
    return current


def to_sequences(
    inter: Interactions, name: str, raw_item_genres: dict[int, list[str]] | None = None
) -> SequenceDataset:
    """Remaps ids densely and groups each user's items in chronological order.

    Users get ids 0..U-1 and items 1..I, both in ascending raw-id order; 0 is padding.
    Within a user, items are ordered by timestamp, ties kept in file order (a stable
    sort); without timestamps the file order is the order.

    Args:
        inter: the (filtered) log.
        name: dataset name to record.
        raw_item_genres: optional raw item id -> genres, remapped to dense ids.

    Returns:
        The sequence dataset.

    Raises:
        DataError: if `inter` is empty.
    """
    if not len(inter):
        raise DataError(f"{inter.source}: no interactions to build sequences from")
    user_raw, user = np.unique(inter.user, return_inverse=True)
    item_raw, item = np.unique(inter.item, return_inverse=True)
    dense_item = (item + 1).astype(np.int32)
    if inter.timestamp is None:
        order = np.argsort(user, kind="stable")
    else:
        # lexsort is stable and sorts by the last key first: user, then time, then file order.
        order = np.lexsort((inter.timestamp, user))
    bounds = np.cumsum(np.bincount(user, minlength=len(user_raw)))[:-1]
    sequences = np.split(dense_item[order], bounds)
    timestamps = None
    if inter.timestamp is not None:
        timestamps = np.split(inter.timestamp.astype(np.int64)[order], bounds)
    genres = None
    if raw_item_genres is not None:
        genres = {
            dense: raw_item_genres[raw]
            for dense, raw in enumerate(item_raw.tolist(), start=1)
            if raw in raw_item_genres
        }
    return SequenceDataset(
        name=name,
        sequences=sequences,
        num_items=len(item_raw),
        user_raw_ids=user_raw.astype(np.int64),
        item_raw_ids=np.concatenate([[-1], item_raw]).astype(np.int64),
        timestamps=timestamps,
        item_genres=genres,
    )
