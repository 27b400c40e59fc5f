"""Synthetic interaction logs with popularity skew and learnable sequential structure.

Each item has a few favoured successors within its genre (a sparse Markov chain). A user
starts from a popularity draw and at every step either follows a successor of the current
item (probability `follow`) or jumps to a popularity draw. Popularity is Zipf-like, so a
most-popular baseline gets some hits, while a model that reads the last items wins clearly.
"""

from __future__ import annotations

import numpy as np

from jaxrec.data.preprocess import to_sequences
from jaxrec.data.types import DataError, Interactions, SequenceDataset

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Documentary")
_MIN_LENGTH = 5
_SUCCESSOR_WEIGHTS = np.array([0.6, 0.25, 0.15])  # favoured successors, strongest first


def _draw_popular(rng: np.random.Generator, pop_cdf: np.ndarray, size: int) -> np.ndarray:
    """`size` item indices drawn by popularity (inverse-cdf sampling)."""
    return np.minimum(np.searchsorted(pop_cdf, rng.random(size) * pop_cdf[-1]), pop_cdf.size - 1)


def generate_interactions(
    num_users: int,
    num_items: int,
    mean_length: int,
    seed: int,
    zipf_exponent: float = 1.0,
    follow: float = 0.7,
) -> tuple[Interactions, dict[int, list[str]]]:
    """Generates a raw log (user ids 1..num_users, item ids 1..num_items) and item genres.

    Args:
        num_users: users; each gets one sequence.
        num_items: catalogue size (items never drawn do not appear in the log).
        mean_length: mean sequence length; lengths are 5 + lognormal, so at least 5.
        seed: numpy seed; the same arguments give the same log.
        zipf_exponent: popularity of the item of rank r is proportional to r**-exponent.
        follow: probability that the next item is a successor of the current one.

    Returns:
        (interactions with increasing timestamps, raw item id -> genres).
    """
    if num_users < 1 or num_items < 2 or mean_length < 1:
        raise DataError(
            f"synthetic data needs users >= 1, items >= 2, mean_length >= 1; got "
            f"{num_users}, {num_items}, {mean_length}"
        )
    rng = np.random.default_rng(seed)
    rank = rng.permutation(num_items) + 1  # popularity rank, unrelated to the item id
    popularity = rank.astype(np.float64) ** -zipf_exponent
    popularity /= popularity.sum()
    pop_cdf = np.cumsum(popularity)

    genre = rng.integers(len(GENRES), size=num_items)
    second = np.where(rng.random(num_items) < 0.3, rng.integers(len(GENRES), size=num_items), genre)
    # Successors come from the item's own genre, weighted by popularity: genres then carry signal.
    successors = rng.choice(num_items, size=(num_items, len(_SUCCESSOR_WEIGHTS)), p=popularity)
    for g in range(len(GENRES)):
        members = np.flatnonzero(genre == g)
        if members.size > 1:
            p = popularity[members] / popularity[members].sum()
            successors[members] = rng.choice(members, size=(members.size, len(_SUCCESSOR_WEIGHTS)), p=p)
    loops = successors == np.arange(num_items)[:, None]
    successors[loops] = (successors[loops] + 1) % num_items

    extra_mean = max(mean_length - _MIN_LENGTH, 0.5)
    sigma = 0.75
    lengths = _MIN_LENGTH + np.round(rng.lognormal(np.log(extra_mean) - sigma**2 / 2, sigma, num_users))
    lengths = np.minimum(lengths, 20 * max(mean_length, _MIN_LENGTH)).astype(np.int64)

    # Flat layout, user by user; users sorted longest first so the ones still active at step t
    # are a prefix, and memory stays O(interactions) however long the longest sequence is.
    by_length = np.argsort(-lengths, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    slots = offsets[by_length]
    active = num_users - np.cumsum(np.bincount(lengths, minlength=int(lengths.max()) + 1))
    items = np.empty(int(lengths.sum()), dtype=np.int64)
    current = _draw_popular(rng, pop_cdf, num_users)
    items[slots] = current
    for t in range(1, int(lengths.max())):
        k = int(active[t])  # users with more than t items
        current = current[:k]
        which = rng.choice(len(_SUCCESSOR_WEIGHTS), size=k, p=_SUCCESSOR_WEIGHTS)
        jump = _draw_popular(rng, pop_cdf, k)
        current = np.where(rng.random(k) < follow, successors[current, which], jump)
        items[slots[:k] + t] = current

    gaps = 1 + rng.exponential(3600.0, size=items.size).astype(np.int64)
    start = rng.integers(1_000_000_000, 1_100_000_000, size=num_users)
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[offsets] - gaps[offsets], lengths)  # restart the sum at each user
    inter = Interactions(
        user=np.repeat(np.arange(1, num_users + 1, dtype=np.int64), lengths),
        item=items + 1,
        timestamp=np.repeat(start, lengths) + elapsed,
        extra={},
        source=f"synthetic(users={num_users}, items={num_items}, mean_length={mean_length}, seed={seed})",
    )
    genres = {
        i + 1: [GENRES[a]] if a == b else [GENRES[a], GENRES[b]]
        for i, (a, b) in enumerate(zip(genre.tolist(), second.tolist(), strict=True))
    }
    return inter, genres


def generate(num_users: int, num_items: int, mean_length: int, seed: int) -> SequenceDataset:
    """A synthetic `SequenceDataset`; see `generate_interactions`."""
    inter, genres = generate_interactions(num_users, num_items, mean_length, seed)
    return to_sequences(inter, "synthetic", raw_item_genres=genres)
