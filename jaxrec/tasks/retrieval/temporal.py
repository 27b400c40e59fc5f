"""Temporal split and evaluation of two-tower retrieval (PinnerFormer's offline protocol).

Legend: U users, Q evaluation points (a user, a history length and a query time), B points per
chunk, L history length, I items (ids 1..I; row 0 of an item table is padding), D embedding width,
K top-K depth, C item categories, S seen items per point.

Split: one global cut-off at the (1 - test_fraction) quantile of all interaction times; events
before it are training, events at or after it are test (ties at the cut-off all go to test), so no
training event is later than any test event. ML-1M users mostly rated everything within a day and
the last months hold few ratings: hence a quantile of interactions rather than a date, and windows
counted in events.

Evaluation points of a test user (`mode`):
    once      at the cut-off: history = the events before it, query time = the cut-off
    daily     at the cut-off, then at the end (UTC midnight) of every day with test events of the user
    realtime  at the cut-off, then after every test event (query time = that event's time)
The positives of a point are the distinct items among the events after it within the window: the
next `window_size` events, or those less than `window_size` days after the point. With
`exclude_seen` (default) items the user interacted with before the point are neither ranked nor
positives (ML-1M users never re-rate a movie). Points without positives are dropped.

Metrics, averaged over points (by default each user weighs 1, its points sharing that weight,
so modes with more points stay comparable):
    recall@K         |top-K and positives| / |positives|, ranked against the whole catalogue
    entropy@50       entropy (nats) of the category distribution of the top 50 (each item-category pair counts)
    p90_coverage@10  smallest number of items making up 90% of all top-10 impressions, over the catalogue size
Sums, weights and impression counts are kept in `MetricSums`, which merge by addition.

Cost: every point is one user-tower pass over L events plus a BxI score block (top-K on device by
`jaxrec.ops.topk.top_k_scores`, in chunks of B points): Q = test users (once), + user-days with test
events (daily), + test events (realtime; ~49k on the partial ML-1M). The BxI block suits catalogues
up to ~10^6 items; beyond that, score in item chunks or use approximate retrieval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.events import EventDataset, history_batch
from jaxrec.ops.topk import top_k_scores

DAY = 86400  # seconds
MODES = ("once", "daily", "realtime")


@dataclasses.dataclass(frozen=True)
class TemporalEvalConfig:
    mode: str = "once"  # once | daily | realtime: when user embeddings are (re)computed
    window_unit: str = "events"  # events | days: how the window of positives after each point is counted
    window_size: float = 10.0  # length of that window in window_unit (events: a whole number)
    exclude_seen: bool = True  # items the user had before the point are neither ranked nor positives
    positive_actions: tuple[int, ...] = ()  # action ids that count as positives (e.g. ratings 4, 5); () = all
    weighting: str = "user"  # user: a user's points share weight 1 | point: every point weighs 1
    ks: tuple[int, ...] = (10, 50, 100)  # Recall@K cut-offs
    batch_size: int = 256  # points per user-tower call and per top-K chunk (a static shape)


@dataclasses.dataclass
class TemporalSplit:
    """A global time cut-off.

    Attributes:
        data: every event; histories at evaluation time are prefixes of it.
        cutoff: unix seconds; events at t < cutoff are training, the others test.
        train_length: (U,) events of each user before the cut-off.
        test_users: (T,) users with test events (only users without training events if so asked).
    """

    data: EventDataset
    cutoff: int
    train_length: np.ndarray
    test_users: np.ndarray

    @property
    def train(self) -> EventDataset:
        """The training events: each user's events before the cut-off (possibly none)."""
        return self.data.truncate(self.train_length)


def temporal_split(ds: EventDataset, test_fraction: float = 0.1, unseen_users_only: bool = False) -> TemporalSplit:
    """Cuts at the time before which a (1 - test_fraction) share of all interactions happened."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    times = np.sort(np.concatenate(ds.timestamps))
    cutoff = int(times[times.size - max(1, round(test_fraction * times.size))])
    train_length = np.array([np.searchsorted(t, cutoff, side="left") for t in ds.timestamps], dtype=np.int64)
    has_test = np.array([len(t) for t in ds.timestamps]) > train_length
    if unseen_users_only:
        has_test &= train_length == 0
    return TemporalSplit(data=ds, cutoff=cutoff, train_length=train_length, test_users=np.flatnonzero(has_test))


@dataclasses.dataclass
class Points:
    """Evaluation points, positives in CSR layout: those of point q are `items[offsets[q]:offsets[q + 1]]`."""

    user: np.ndarray  # (Q,) dense user
    length: np.ndarray  # (Q,) the history is the user's first `length` events
    time: np.ndarray  # (Q,) int64 query time
    weight: np.ndarray  # (Q,) float64
    offsets: np.ndarray  # (Q + 1,) int64
    items: np.ndarray  # (P,) int32 positives

    def __len__(self) -> int:
        return int(self.user.size)


def _check(cfg: TemporalEvalConfig) -> None:
    problems = [
        (cfg.mode in MODES, f"mode must be one of {MODES}, got {cfg.mode!r}"),
        (cfg.window_unit in ("events", "days"), f"window_unit must be events or days, got {cfg.window_unit!r}"),
        (cfg.window_size > 0, f"window_size must be > 0, got {cfg.window_size}"),
        (cfg.window_unit == "days" or cfg.window_size == int(cfg.window_size), "an events window is a whole number"),
        (cfg.weighting in ("user", "point"), f"weighting must be user or point, got {cfg.weighting!r}"),
        (bool(cfg.ks) and min(cfg.ks) >= 1, f"ks must be positive, got {cfg.ks}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ValueError(f"temporal evaluation: {message}")


def _first_occurrence(items: np.ndarray) -> np.ndarray:
    """(n,) index of the first event with the same item."""
    _, first, inverse = np.unique(items, return_index=True, return_inverse=True)
    return first[inverse]


def evaluation_points(split: TemporalSplit, cfg: TemporalEvalConfig) -> Points:
    """The points of every test user (module docstring), with their positives; points without any are dropped."""
    _check(cfg)
    ds = split.data
    if cfg.positive_actions and ds.action is None:
        raise ValueError(f"temporal evaluation: positive_actions is set but {ds.name} has no action feature")
    users, lengths, times, weights, positives = [], [], [], [], []
    for u in split.test_users.tolist():
        t, items, p0 = ds.timestamps[u], ds.items[u], int(split.train_length[u])
        length = np.array([p0])
        if cfg.mode == "realtime":
            length = np.arange(p0, t.size)
        elif cfg.mode == "daily":
            day_ends = np.unique((t[p0:] // DAY + 1) * DAY)
            length = np.concatenate([length, np.searchsorted(t, day_ends, side="left")])
        time = np.where(length == p0, split.cutoff, t[np.maximum(length - 1, 0)])
        if cfg.mode == "daily":
            time[1:] = day_ends
        if cfg.window_unit == "events":
            end = np.minimum(length + int(cfg.window_size), t.size)
        else:
            end = np.searchsorted(t, time + round(cfg.window_size * DAY), side="left")
        first = _first_occurrence(items)
        keep = np.isin(ds.action[u], cfg.positive_actions) if cfg.positive_actions else np.ones(t.size, bool)
        found = []
        for p, e in zip(length.tolist(), end.tolist()):
            # first >= p: the item has no event before the point, i.e. is not seen.
            fresh = keep[p:e] & (first[p:e] >= p) if cfg.exclude_seen else keep[p:e]
            found.append(np.unique(items[p:e][fresh]))
        has = np.array([f.size > 0 for f in found], dtype=bool)
        if not has.any():
            continue
        users.append(np.full(has.sum(), u))
        lengths.append(length[has])
        times.append(time[has])
        weights.append(np.full(has.sum(), 1.0 / has.sum() if cfg.weighting == "user" else 1.0))
        positives += [f for f, h in zip(found, has) if h]
    if not users:
        raise ValueError(f"temporal evaluation: no test user of {ds.name} has a positive after the cut-off")
    counts = np.array([p.size for p in positives], dtype=np.int64)
    return Points(
        user=np.concatenate(users),
        length=np.concatenate(lengths),
        time=np.concatenate(times).astype(np.int64),
        weight=np.concatenate(weights),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        items=np.concatenate(positives).astype(np.int32),
    )


@dataclasses.dataclass
class MetricSums:
    """Weighted metric sums and top-10 impression counts; `merge` adds, `result` divides."""

    sums: dict[str, float]
    impressions: np.ndarray  # (I + 1,) weighted top-10 impressions per item

    def merge(self, other: MetricSums) -> MetricSums:
        keys = set(self.sums) | set(other.sums)
        sums = {k: self.sums.get(k, 0.0) + other.sums.get(k, 0.0) for k in keys}
        return MetricSums(sums=sums, impressions=self.impressions + other.impressions)

    def result(self) -> dict[str, float]:
        out = {k: v / self.sums["weight"] for k, v in self.sums.items() if "@" in k}
        out["p90_coverage@10"] = p90_coverage(self.impressions[1:])
        out["points"] = self.sums["points"]
        return dict(sorted(out.items()))


def p90_coverage(impressions_I: np.ndarray, share: float = 0.9) -> float:
    """Smallest number of items holding `share` of all impressions, over the catalogue size."""
    counts = np.sort(np.asarray(impressions_I, np.float64))[::-1]
    total = counts.sum()
    if total <= 0:
        return 0.0
    return float((np.argmax(np.cumsum(counts) >= share * total) + 1) / counts.size)


def category_entropy(top_BxK: np.ndarray, valid_BxK: np.ndarray, categories_IxC: np.ndarray) -> np.ndarray:
    """(B,) entropy in nats of the categories of each row's valid items (0 where none has a category)."""
    counts_BxC = (categories_IxC[top_BxK] & valid_BxK[..., None]).sum(axis=1).astype(np.float64)
    p_BxC = counts_BxC / np.maximum(counts_BxC.sum(axis=-1, keepdims=True), 1.0)
    return -(p_BxC * np.log(np.where(p_BxC > 0, p_BxC, 1.0))).sum(axis=-1)


def chunk_sums(
    top_BxK: np.ndarray, valid_BxK: np.ndarray, points: Points, rows: np.ndarray, ks, categories_IxC, num_items: int
) -> MetricSums:
    """Metric sums of points `rows`, whose ranked items (best first) are `top_BxK` (`valid_BxK` false = no item)."""
    weight_B = points.weight[rows]
    lo, hi = points.offsets[rows], points.offsets[rows + 1]
    owner = np.repeat(np.arange(rows.size), hi - lo)
    stride = num_items + 1
    positive_keys = owner * stride + points.items[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])]
    hits_BxK = np.isin(np.arange(rows.size)[:, None] * stride + top_BxK, positive_keys) & valid_BxK
    sums = {"weight": float(weight_B.sum()), "points": float(rows.size)}
    for k in ks:
        sums[f"recall@{k}"] = float((weight_B * hits_BxK[:, :k].sum(axis=1) / (hi - lo)).sum())
    if categories_IxC is not None:
        sums["entropy@50"] = float(
            (weight_B * category_entropy(top_BxK[:, :50], valid_BxK[:, :50], categories_IxC)).sum()
        )
    top10, valid10 = top_BxK[:, :10], valid_BxK[:, :10]
    impressions = np.bincount(
        top10[valid10], weights=np.broadcast_to(weight_B[:, None], top10.shape)[valid10], minlength=stride
    )
    return MetricSums(sums=sums, impressions=impressions)


# Jitted once for the module, not per `score_points` call: each evaluation reuses the compiled chunk shapes.
_top_k_scores = jax.jit(top_k_scores, static_argnames=("k", "num_items"))


def _seen_matrix(ds: EventDataset, users: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """BxS item ids of each history (0-padded), S a power of two so few shapes compile."""
    width = 1 << max(4, int(lengths.max(initial=1) - 1).bit_length())
    seen = np.zeros((users.size, width), np.int32)
    for b, (u, n) in enumerate(zip(users.tolist(), lengths.tolist())):
        seen[b, :n] = ds.items[u][:n]
    return seen


def evaluate(
    embed_users: Callable[[dict[str, np.ndarray]], np.ndarray],
    item_embeddings: np.ndarray,
    split: TemporalSplit,
    cfg: TemporalEvalConfig,
    max_len: int,
) -> dict[str, float]:
    """Recall@K, Entropy@50 and P90 Coverage@10 of `split`'s test users at the points `cfg.mode` asks for.

    Args:
        embed_users: a `history_batch` (B rows, histories up to each point) -> BxD user embeddings.
        item_embeddings: (>= I + 1)xD; row i embeds item i (row 0 and rows past I are ignored).
        split: the temporal split.
        cfg: mode, window, exclusion, weighting and cut-offs.
        max_len: L, the history length of the user tower.

    Returns:
        recall@K per K, entropy@50 (when the data has item categories), p90_coverage@10, points.
    """
    points = evaluation_points(split, cfg)
    return score_points(embed_users, item_embeddings, split.data, points, cfg, max_len).result()


def score_points(embed_users, item_embeddings, ds: EventDataset, points: Points, cfg, max_len: int) -> MetricSums:
    """The metric sums of `points`, in chunks of `cfg.batch_size` (the last one padded with empty histories)."""
    # Scored in float32 whatever the towers' dtype: a bfloat16 tower would tie many near-equal items.
    items_IxD = jnp.asarray(item_embeddings)[: ds.num_items + 1].astype(jnp.float32)
    k = min(max((*cfg.ks, 50 if ds.item_categories is not None else 10, 10)), ds.num_items)
    total = MetricSums(sums={}, impressions=np.zeros(ds.num_items + 1))
    size = cfg.batch_size
    for start in range(0, len(points), size):
        rows = np.arange(start, min(start + size, len(points)))
        pad = size - rows.size
        users = np.pad(points.user[rows], (0, pad))
        lengths = np.pad(points.length[rows], (0, pad))
        batch = history_batch(ds, users, lengths, np.pad(points.time[rows], (0, pad)), max_len)
        seen = _seen_matrix(ds, users, lengths) if cfg.exclude_seen else np.zeros((size, 1), np.int32)
        users_BxD = jnp.asarray(embed_users(batch), jnp.float32)
        _, top_BxK = _top_k_scores(users_BxD, items_IxD, k=k, num_items=ds.num_items, exclude_BxH=jnp.asarray(seen))
        top_BxK = np.asarray(top_BxK)[: rows.size]
        valid_BxK = top_BxK >= 0  # -1: fewer than k items left after excluding the seen ones
        part = chunk_sums(top_BxK, valid_BxK, points, rows, cfg.ks, ds.item_categories, ds.num_items)
        total = total.merge(part)
    return total


def user_embedder(model, params) -> Callable[[dict[str, np.ndarray]], jax.Array]:
    """`embed_users` for `evaluate` from a PinnerFormer-like module (its `encode_users`), jitted once."""
    fn = jax.jit(lambda p, batch: model.apply({"params": p}, batch, method="encode_users"))
    return lambda batch: fn(params, batch)
