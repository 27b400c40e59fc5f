"""CTR examples from timestamped interaction logs: the history before a time, a candidate item, a label.

Legend: N examples, B batch, L history length (model.max_len), C item categories (genres), F user
fields, E events (every user's events, concatenated user by user), V item rows (num_items + 1).

An example is (user, time, candidate, label); its history is the user's events strictly before
`time` (events of the same second are never history: ML-1M users rate many films within one second).
Labels (`ctr.labels`):
  explicit  every event with at least `ctr.min_history` earlier events is an example: the candidate is
            its item, the label 1 when its action is in `ctr.positive_actions` (ML-1M: rating >= 4).
  implicit  every such event is a positive, and `ctr.num_negatives` items the user never interacted
            with, drawn uniformly once from `data.seed`, are negatives with the same time and history.
Split: global time quantiles of the examples, train < valid cut-off <= valid < test cut-off <= test,
so no validation or test example is earlier than a training one.

Batch keys (`CTRData.batch`):
  history_BxL        int32 item ids, oldest first, left padded with 0
  history_time_BxL   int32 unix seconds (0 at padding)
  candidate_B        int32 item id
  time_B             int32 unix seconds of the recommendation
  user_BxF           int32 user-field ids in one joint vocabulary, 0 = unknown   (with user features)
  history_action_BxL int32 each history event's action id 1..A (ML-1M: its rating), 0 at padding
                     (only with ctr.history_actions, when the data has actions)
  label_B            float32 0 / 1
  weight_B           float32 1 for examples, 0 for the rows that pad a batch
  user_B             int32 dense user id (GAUC's groups; not a model input)
Genre multi-hots are gathered on device from `CTRData.categories_VxC` (see jaxrec.tasks.ctr.loss).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from jaxrec.config import Config
from jaxrec.data.datasets import default_data_dir
from jaxrec.data.events import EventDataset, load_events
from jaxrec.data.negatives import sample_negatives
from jaxrec.data.readers import read_movielens_users
from jaxrec.data.types import DataError

log = logging.getLogger("jaxrec")

DEFAULT_POSITIVE_ACTIONS = {"synthetic": ("click", "save")}  # any other data: ratings 4 and 5
USER_FIELDS = ("gender", "age", "occupation")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class CTRData:
    """Examples as indices into the flat event arrays; histories are cut out when a batch is built.

    Attributes:
        name: dataset name.
        num_items: items are 1..num_items.
        items_E, times_E: every event's item and unix seconds, user by user, oldest first.
        offsets_U1: user u's events are [offsets_U1[u], offsets_U1[u + 1]).
        user_N, end_N: example n's history is events [offsets_U1[user_N[n]], end_N[n]) (last L of them).
        candidate_N, label_N, time_N: the candidate item, 0/1 label and unix seconds of each example.
        splits: "train" / "valid" / "test" -> example indices, in time order.
        categories_VxC: float32 multi-hot genres per item (row 0 empty; C = 0 without genres).
        user_fields_UxF: int32 joint-vocabulary ids of each user's fields, or None.
        user_vocab: rows of the user-field embedding (0 without user fields).
        actions_E: every event's action id 1..A (ML-1M: the rating), or None when the data has none.
        action_vocab: A + 1 (ids and padding 0), 0 without actions.
        batch_actions: whether batches carry history_action_BxL (`ctr.history_actions`: only a model
            that embeds actions reads it, so the others skip the gather).
    """

    name: str
    num_items: int
    items_E: np.ndarray
    times_E: np.ndarray
    offsets_U1: np.ndarray
    user_N: np.ndarray
    end_N: np.ndarray
    candidate_N: np.ndarray
    label_N: np.ndarray
    time_N: np.ndarray
    splits: dict[str, np.ndarray]
    categories_VxC: np.ndarray
    user_fields_UxF: np.ndarray | None
    user_vocab: int
    actions_E: np.ndarray | None = None
    action_vocab: int = 0
    batch_actions: bool = True

    @property
    def num_categories(self) -> int:
        return int(self.categories_VxC.shape[1])

    def batch(self, rows: np.ndarray, max_len: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """The batch keys of the module docstring for examples `rows`, padded to `pad_to` rows (weight 0)."""
        rows = np.asarray(rows, np.int64)
        size = max(pad_to or 0, len(rows))
        take = np.concatenate([rows, np.full(size - len(rows), rows[0])])
        user, end = self.user_N[take], self.end_N[take]
        start = np.maximum(end - max_len, self.offsets_U1[user])
        idx_BxL = end[:, None] - max_len + np.arange(max_len)
        valid_BxL = idx_BxL >= start[:, None]
        idx_BxL = np.where(valid_BxL, idx_BxL, 0)
        batch = {
            "history_BxL": np.where(valid_BxL, self.items_E[idx_BxL], 0).astype(np.int32),
            "history_time_BxL": np.where(valid_BxL, self.times_E[idx_BxL], 0).astype(np.int32),
            "candidate_B": self.candidate_N[take].astype(np.int32),
            "time_B": self.time_N[take].astype(np.int32),
            "label_B": self.label_N[take].astype(np.float32),
            "weight_B": (np.arange(size) < len(rows)).astype(np.float32),
            "user_B": user.astype(np.int32),
        }
        if self.user_fields_UxF is not None:
            batch["user_BxF"] = self.user_fields_UxF[user]
        if self.actions_E is not None and self.batch_actions:
            batch["history_action_BxL"] = np.where(valid_BxL, self.actions_E[idx_BxL], 0).astype(np.int32)
        return batch

    def row_counts(self, max_len: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """n_j of mini-batch aware L2: in how many training examples (history window or candidate) row j appears.

        Returns (item counts (V,), genre counts (C,)); a genre counts once per item occurrence.
        """
        counts_V = np.zeros(self.num_items + 1, np.int64)
        train = self.splits["train"]
        for s in range(0, len(train), chunk):
            b = self.batch(train[s : s + chunk], max_len)
            counts_V += np.bincount(b["history_BxL"].ravel(), minlength=self.num_items + 1)
            counts_V += np.bincount(b["candidate_B"], minlength=self.num_items + 1)
        counts_V[0] = 0
        return counts_V, counts_V @ self.categories_VxC.astype(np.int64)


class CTRBatches:
    """Training batches: every training example once per epoch, shuffled; a pure function of (seed, step)."""

    def __init__(self, data: CTRData, max_len: int, batch_size: int, seed: int):
        self.data, self.max_len, self.batch_size, self.seed = data, max_len, batch_size, seed
        self.rows = data.splits["train"]
        self.steps_per_epoch = -(-len(self.rows) // batch_size)
        self._order: tuple[int, np.ndarray] | None = None

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, index = divmod(step, self.steps_per_epoch)
        cached = self._order
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, epoch, 2]).permutation(self.rows))
            self._order = cached  # one assignment: safe for grain's reader thread
        rows = cached[1][index * self.batch_size : (index + 1) * self.batch_size]
        return self.data.batch(rows, self.max_len, pad_to=self.batch_size)


def eval_batches(data: CTRData, split: str, max_len: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Fixed-size batches over the examples of `split` (the last one padded with weight-0 rows)."""
    rows = data.splits[split]
    return [data.batch(rows[s : s + batch_size], max_len, pad_to=batch_size) for s in range(0, len(rows), batch_size)]


def _users_file(cfg: Config) -> Path | None:
    candidates = [Path(cfg.data.path).parent / "users.dat"] if cfg.data.path else []
    data_dir = default_data_dir(cfg.data.data_dir)
    if data_dir:
        candidates.append(Path(data_dir) / "ml-1m" / "users.dat")
    return next((p for p in candidates if p.is_file()), None)


def _joint_ids(columns: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per field, sorted distinct values -> ids, offset so that all fields share one vocabulary (0 = unknown)."""
    ids, offset = [], 1
    for column in columns:
        distinct, index = np.unique(column, return_inverse=True)
        ids.append(index + offset)
        offset += len(distinct)
    return np.stack(ids, axis=1).astype(np.int32), offset


def user_fields(cfg: Config, events: EventDataset) -> tuple[np.ndarray | None, int]:
    """(U, F) joint ids of gender, age and occupation, and the vocabulary size; (None, 0) when absent."""
    if not cfg.ctr.user_features:
        return None, 0
    if cfg.data.name == "synthetic":  # random profiles: no signal, but every code path runs
        rng = np.random.default_rng([cfg.data.seed, 11])
        return _joint_ids([rng.integers(n, size=events.num_users) for n in (2, 7, 21)])
    path = _users_file(cfg) if cfg.data.name in ("ml-1m", "ml-1m-partial") else None
    if path is None:
        log.info("ctr.user_features: no users.dat for %s; training without user features", cfg.data.name)
        return None, 0
    table = read_movielens_users(path)
    fields, vocab = _joint_ids([table[f] for f in USER_FIELDS])
    order = np.argsort(table["user"], kind="stable")
    raw = table["user"][order]
    where = np.minimum(np.searchsorted(raw, events.user_raw_ids), len(raw) - 1)
    found = raw[where] == events.user_raw_ids
    where = order[where]
    out = np.zeros((events.num_users, len(USER_FIELDS)), np.int32)
    out[found] = fields[where[found]]
    return out, vocab


def _split(time_N: np.ndarray, valid_fraction: float, test_fraction: float, source: str) -> dict[str, np.ndarray]:
    ordered = np.sort(time_N, kind="stable")
    cut_valid = ordered[int((1.0 - valid_fraction - test_fraction) * len(ordered))]
    cut_test = ordered[int((1.0 - test_fraction) * len(ordered))]
    masks = {
        "train": time_N < cut_valid,
        "valid": (time_N >= cut_valid) & (time_N < cut_test),
        "test": time_N >= cut_test,
    }
    splits = {}
    for name, mask in masks.items():
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            raise DataError(
                f"{source}: the time split left no {name} example; change ctr.valid_fraction / ctr.test_fraction"
            )
        splits[name] = rows[np.argsort(time_N[rows], kind="stable")]
    return splits


def build_ctr_data(cfg: Config) -> CTRData:
    """Loads `cfg.data`'s events and builds the CTR examples and split of the module docstring."""
    ctr = cfg.ctr
    events = load_events(cfg.data)
    source = cfg.data.path or events.name  # messages name the file when there is one
    lengths = np.array([len(s) for s in events.items], np.int64)
    offsets_U1 = np.concatenate([[0], np.cumsum(lengths)])
    items_E = np.concatenate(events.items).astype(np.int32)
    times_E = np.concatenate(events.timestamps).astype(np.int64)
    actions_E = None if events.action is None else np.concatenate(events.action).astype(np.int32)
    user_E = np.repeat(np.arange(events.num_users, dtype=np.int64), lengths)
    key_E = (user_E << 32) | times_E  # sorted: users in order, times non-decreasing within a user
    end_E = np.searchsorted(key_E, key_E, side="left")  # first event of the same user at the same second
    keep = np.flatnonzero(end_E - offsets_U1[user_E] >= ctr.min_history)
    if keep.size == 0:
        raise DataError(f"{source}: no event has ctr.min_history={ctr.min_history} earlier events")
    if ctr.labels == "explicit":
        if events.action is None:
            raise DataError(f"{source}: explicit labels need actions (ratings); use ctr.labels=implicit")
        wanted = ctr.positive_actions or DEFAULT_POSITIVE_ACTIONS.get(cfg.data.name, ("4", "5"))
        unknown = sorted(set(wanted) - set(events.action_names))
        if unknown:
            raise DataError(f"ctr.positive_actions: {unknown} not among {source}'s actions {events.action_names}")
        positive_ids = np.array([events.action_names.index(a) + 1 for a in wanted])
        label_E = np.isin(actions_E, positive_ids).astype(np.float32)
        example_E, candidate, label = keep, items_E[keep], label_E[keep]
    else:
        k = ctr.num_negatives
        rng = np.random.default_rng([cfg.data.seed, 7])
        negatives = np.zeros((keep.size, k), np.int32)
        bounds = np.searchsorted(user_E[keep], np.arange(events.num_users + 1))
        for u in range(events.num_users):
            if bounds[u + 1] > bounds[u]:
                seen = np.unique(events.items[u])
                negatives[bounds[u] : bounds[u + 1]] = sample_negatives(
                    rng, seen, events.num_items, (int(bounds[u + 1] - bounds[u]), k)
                )
        example_E = np.repeat(keep, k + 1)
        candidate = np.concatenate([items_E[keep][:, None], negatives], axis=1).ravel()
        label = np.tile(np.r_[1.0, np.zeros(k)], keep.size).astype(np.float32)
    time_N = times_E[example_E]
    fields, vocab = user_fields(cfg, events)
    categories = events.item_categories
    if categories is None:
        categories = np.zeros((events.num_items + 1, 0), bool)
    data = CTRData(
        name=events.name,
        num_items=events.num_items,
        items_E=items_E,
        times_E=times_E,
        offsets_U1=offsets_U1,
        user_N=user_E[example_E].astype(np.int32),
        end_N=end_E[example_E],
        candidate_N=candidate.astype(np.int32),
        label_N=label,
        time_N=time_N,
        splits=_split(time_N, ctr.valid_fraction, ctr.test_fraction, source),
        categories_VxC=categories.astype(np.float32),
        user_fields_UxF=fields,
        user_vocab=vocab,
        actions_E=actions_E,
        action_vocab=events.action_vocab,
        batch_actions=ctr.history_actions,
    )
    return data
