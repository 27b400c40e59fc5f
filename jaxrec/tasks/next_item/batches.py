"""The next-item task's batches: fixed-shape, left-padded training batches and evaluation batches.

Batch keys (all int32):
  inputs_BxL     item history, left padded with 0
  positives_BxL  next item at each position (0 = no target: padding)
  negatives_BxL  one item per position drawn uniformly from items outside the user's training history
  user_BxF       only with `user_table` (models with per-user inputs, e.g. MF): the users' rows of it
                 (`jaxrec.data.datasets.user_inputs`: column 0 = user id + 1, 0 on padding rows)

With `whole_sequence` (models that build their own targets from the sequence, e.g. BERT4Rec's cloze)
`inputs_BxL` and `positives_BxL` both hold the user's last L training items, the first one included.

Batches are padded to one of a few static lengths ("length buckets"), each compiled once: users
are grouped by history length so a batch of short histories is not padded to max_len. Because a
slot's position does not depend on the padding before it (`jaxrec.layers.embeddings.position_rows`), a
bucketed batch computes what the same batch padded to max_len would; only the grouping of users into
batches changes.
Every batch is a pure function of (seed, step), so training resumes with the same data order.
"""

from __future__ import annotations

import numpy as np

from jaxrec.data.negatives import left_pad, sample_negatives


def parse_buckets(spec: str, max_len: int) -> tuple[int, ...]:
    """Static batch lengths: 'auto' (sixths of max_len, multiples of 8), 'none', or '32,64,200'.

    Six rather than four: less padding (9.6% of ML-1M's positions at max_len 200 against 14.4%) for
    two more compiles. Its time gain is within this CPU's drift (`benchmarks/train_throughput.py`'s
    four_buckets row came out 0.7 s faster in its committed run). Many more buckets stop paying:
    each adds a part-filled batch per epoch.
    """
    if spec == "none":
        return (max_len,)
    if spec == "auto":
        lengths = {min(max_len, -(-(max_len * q // 6) // 8) * 8) for q in range(1, 6)} | {max_len}
    else:
        try:
            lengths = {int(x) for x in spec.split(",") if x.strip()}
        except ValueError:
            raise ValueError(f"train.length_buckets: expected auto, none or integers, got {spec!r}") from None
        if not lengths or min(lengths) < 1:
            raise ValueError(f"train.length_buckets: lengths must be positive, got {spec!r}")
        lengths = {min(x, max_len) for x in lengths} | {max_len}
    return tuple(sorted(lengths))


def bucket_of(lengths: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """Index of the smallest bucket that holds each length."""
    return np.searchsorted(np.asarray(buckets), np.minimum(lengths, buckets[-1]), side="left")


class TrainBatches:
    """Random-access plan of training batches, one sequence per user per epoch.

    By default SASRec-style (input, next item) pairs. `whole_sequence`: the training items themselves
    (input = target = the last L items), so a sequence of n items fills n positions, not n - 1. On short
    histories (Amazon Beauty's median user has 4 training items) the pairs would drop 15% of the cloze's
    targets and never show a user's first item (`benchmarks/split_stats.py`).
    """

    def __init__(
        self,
        train_seqs: list[np.ndarray],
        num_items: int,
        max_len: int,
        batch_size: int,
        buckets: tuple[int, ...],
        seed: int,
        user_table: np.ndarray | None = None,
        whole_sequence: bool = False,
    ):
        self.whole_sequence = whole_sequence
        self.user_table = user_table  # (num users, F) per-user inputs, or None: no user_BxF key
        # A pair needs two items; a whole sequence trains from one (a lone item masked by the cloze).
        min_items = 1 if whole_sequence else 2
        self.users = np.array([u for u, s in enumerate(train_seqs) if len(s) >= min_items], np.int64)
        if len(self.users) == 0:
            raise ValueError(f"no user has {min_items} or more training interactions: nothing to train on")
        self.train_seqs = train_seqs
        self.exclude = [np.unique(s) for s in train_seqs]
        self.num_items = num_items
        self.max_len = max_len
        self.batch_size = batch_size
        self.buckets = buckets
        self.seed = seed
        self._plan_cache: tuple[int, list] | None = None
        # Target positions per user: n - 1 (input, next item) pairs, or n items with whole_sequence.
        target_lengths = np.array([len(train_seqs[u]) - (not whole_sequence) for u in self.users])
        self.user_bucket = bucket_of(target_lengths, buckets)
        counts = np.bincount(self.user_bucket, minlength=len(buckets))
        self.steps_per_epoch = int(sum(-(-c // batch_size) for c in counts))
        self.target_positions = int(target_lengths.clip(max=max_len).sum())  # an epoch's positions with a target
        # What a batch of random users holds on average: the normaliser of train.loss_normalizer=epoch.
        self.mean_positions_per_batch = float(batch_size * self.target_positions / len(self.users))
        self.padding_fraction = 1.0 - self.target_positions / float(
            sum(counts[b] * buckets[b] for b in range(len(buckets)))
        )

    def epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(bucket length, users) of every batch of `epoch`, in training order (cached per epoch)."""
        cached = self._plan_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng([self.seed, epoch, 0])
        order = rng.permutation(len(self.users))
        plan = []
        for b, length in enumerate(self.buckets):
            members = self.users[order[self.user_bucket[order] == b]]
            for start in range(0, len(members), self.batch_size):
                plan.append((length, members[start : start + self.batch_size]))
        plan = [plan[i] for i in rng.permutation(len(plan))]
        self._plan_cache = (epoch, plan)  # one tuple assignment: safe for grain's reader threads
        return plan

    def __call__(self, step: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """Batch `step`; with `rows`, only those rows of it (a process's share of a multi-host batch).

        Each row's negatives come from its own generator (seed, step, row), so a row is the same
        whichever process builds it.
        """
        length, users = self.epoch_plan(step // self.steps_per_epoch)[step % self.steps_per_epoch]
        rows = slice(0, self.batch_size) if rows is None else rows
        row_ids = range(self.batch_size)[rows]
        # Rows past len(users) stay all-zero: the epoch's last batch of a bucket is padded, not dropped.
        users = users[row_ids.start : row_ids.stop]
        shape = (len(row_ids), length)
        batch = {k: np.zeros(shape, np.int32) for k in ("inputs_BxL", "positives_BxL", "negatives_BxL")}
        if self.whole_sequence:
            batch["inputs_BxL"][: len(users)] = left_pad([self.train_seqs[u] for u in users], length)
            batch["positives_BxL"][: len(users)] = batch["inputs_BxL"][: len(users)]
        else:
            batch["inputs_BxL"][: len(users)] = left_pad([self.train_seqs[u][:-1] for u in users], length)
            batch["positives_BxL"][: len(users)] = left_pad([self.train_seqs[u][1:] for u in users], length)
        if self.user_table is not None:
            batch["user_BxF"] = np.zeros((len(row_ids), self.user_table.shape[1]), np.int32)
            batch["user_BxF"][: len(users)] = self.user_table[users]
        for row, u in enumerate(users):
            valid = batch["positives_BxL"][row] > 0
            rng = np.random.default_rng([self.seed, step, 1, row_ids[row]])
            batch["negatives_BxL"][row, valid] = sample_negatives(
                rng, self.exclude[u], self.num_items, int(valid.sum())
            )
        return batch


def eval_batches(
    inputs: list[np.ndarray],
    targets: np.ndarray,
    negatives: dict[str, np.ndarray],
    histories: list[np.ndarray],
    max_len: int,
    batch_size: int,
    buckets: tuple[int, ...],
    user_table: np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Evaluation batches over users with a target, grouped by history length.

    Keys: inputs_BxL, targets_B, negatives ({protocol: BxN}), history_BxH (items excluded from full ranking,
    padded with 0 to the longest history), weight_B (1 for real rows, 0 for padding rows), and with
    `user_table` (per-user inputs, see TrainBatches) user_BxF.
    """
    users = np.flatnonzero(targets > 0)
    if len(users) == 0:
        raise ValueError("no user has a target to evaluate (every user has fewer than 3 interactions)")
    lengths = np.array([min(len(inputs[u]), max_len) for u in users])
    users = users[np.argsort(lengths, kind="stable")]
    width = max(1, max(len(h) for h in histories))
    batches = []
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        length = buckets[bucket_of(np.array([max(len(inputs[u]) for u in chunk)]), buckets)[0]]
        pad = batch_size - len(chunk)
        rows = list(chunk) + [chunk[0]] * pad
        batch = {
            "inputs_BxL": left_pad([inputs[u] for u in rows], length),
            "targets_B": targets[rows].astype(np.int32),
            "negatives": {name: n[rows].astype(np.int32) for name, n in negatives.items()},
            "history_BxH": left_pad([histories[u] for u in rows], width),
            "weight_B": np.r_[np.ones(len(chunk)), np.zeros(pad)].astype(np.float32),
        }
        if user_table is not None:
            batch["user_BxF"] = user_table[rows].astype(np.int32)
        batches.append(batch)
    return batches
