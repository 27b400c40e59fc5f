"""Host-side batch helpers every task uses: left padding and negatives drawn outside a user's history."""

from __future__ import annotations

import numpy as np


def left_pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """Last `length` items of each sequence, left padded with 0: len(seqs) x length int32."""
    out = np.zeros((len(seqs), length), np.int32)
    for row, seq in enumerate(seqs):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


def sample_negatives(rng: np.random.Generator, exclude_sorted: np.ndarray, num_items: int, shape) -> np.ndarray:
    """Uniform items in 1..num_items not in `exclude_sorted` (rejection sampling, vectorised)."""
    out = rng.integers(1, num_items + 1, size=shape, dtype=np.int32)
    if len(exclude_sorted) >= num_items:
        return out  # nothing to exclude from: the user saw the whole catalogue
    while True:
        pos = np.searchsorted(exclude_sorted, out)
        bad = exclude_sorted[np.minimum(pos, len(exclude_sorted) - 1)] == out
        if not bad.any():
            return out
        out[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()), dtype=np.int32)
