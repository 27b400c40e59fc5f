"""Data containers shared by the readers, preprocessing and splits.

Legend: N = interactions, U = users, I = items (dense ids 1..I, 0 is padding).
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Bad or missing input data; the message names the file, line or value at fault."""


@dataclasses.dataclass
class Interactions:
    """A raw interaction log, as read from a file.

    Attributes:
        user: (N,) int64 raw user ids.
        item: (N,) int64 raw item ids.
        timestamp: (N,) int64 timestamps, or None when the format only has an order
            (then the row order is the chronological order within a user).
        extra: other columns, kept as read: (N,) int64, float64 or str arrays.
        source: file path (or a description), used in error messages.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray | None
    extra: dict[str, np.ndarray]
    source: str

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def select(self, mask: np.ndarray) -> Interactions:
        """Returns the rows where `mask` is true, keeping their order."""
        return Interactions(
            user=self.user[mask],
            item=self.item[mask],
            timestamp=None if self.timestamp is None else self.timestamp[mask],
            extra={k: v[mask] for k, v in self.extra.items()},
            source=self.source,
        )


@dataclasses.dataclass
class SequenceDataset:
    """Per-user chronological item sequences with dense ids.

    Attributes:
        name: dataset name (registry entry or file name).
        sequences: one int32 array per dense user (user u is `sequences[u]`), item ids in
            1..num_items, oldest first.
        num_items: dense item ids are 1..num_items; 0 is padding.
        user_raw_ids: (U,) raw id of each dense user, ascending.
        item_raw_ids: (num_items + 1,) raw id of each dense item, ascending; entry 0 is -1.
        timestamps: int64 arrays aligned with `sequences`, or None when the source has none.
        item_genres: dense item id -> genre names, when known (MovieLens movies.dat).
    """

    name: str
    sequences: list[np.ndarray]
    num_items: int
    user_raw_ids: np.ndarray
    item_raw_ids: np.ndarray
    timestamps: list[np.ndarray] | None
    item_genres: dict[int, list[str]] | None = None

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))
