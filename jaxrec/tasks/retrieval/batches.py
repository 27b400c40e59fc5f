"""Training batches of the two-tower objectives (PinnerFormer, section 3.3), built on the host.

Legend: B users per batch, L history length, P examples per user (set by the objective).

A batch holds one user per row. Each row picks an anchor a uniformly in 1..n-1 of the user's n
training events: the input is the history before a (its last `max_len` events, left padded) and
the future starts at a, never past the training events. The query time is the time of the last
input event, so no feature reveals when the future happens. Examples (query position, positive):
    next              the last position predicts event a
    dense_next        every position predicts the event after it (SASRec-style)
    all_action        the last position predicts up to P distinct items of the next `window` events
    dense_all_action  P sampled positions each predict one item from their own next `window` events
Positives of 0 are padding (absent examples). Batches are a pure function of (seed, step), so a
resumed run sees the same data.
"""

from __future__ import annotations

import numpy as np

from jaxrec.data.events import EventDataset, history_batch


def examples_per_user(objective: str, max_len: int, all_action_positives: int, dense_positions: int) -> int:
    return {"next": 1, "dense_next": max_len, "all_action": all_action_positives}.get(objective, dense_positions)


class RetrievalBatches:
    def __init__(
        self,
        ds: EventDataset,
        train_length: np.ndarray,
        objective: str,
        max_len: int,
        batch_size: int,
        seed: int,
        window: int = 10,
        all_action_positives: int = 8,
        dense_positions: int = 16,
    ):
        """`train_length[u]`: user u's first events that may be trained on (the rest is held out)."""
        self.ds, self.train_length = ds, np.asarray(train_length)
        self.objective, self.max_len, self.batch_size, self.seed, self.window = (
            objective,
            max_len,
            batch_size,
            seed,
            window,
        )
        self.num_examples = examples_per_user(objective, max_len, all_action_positives, dense_positions)
        self.users = np.flatnonzero(self.train_length >= 2)
        if self.users.size == 0:
            raise ValueError("no user has 2 training events: nothing to train on (check the split fractions)")
        self.steps_per_epoch = -(-self.users.size // batch_size)

    def rows(self, step: int):
        """(users_B, anchors_B, query_time_B, positions_BxP, positives_BxP) of a step; padding rows have anchor 0."""
        epoch, index = divmod(int(step), self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.users)
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        users = np.zeros(self.batch_size, np.int64)
        anchors = np.zeros(self.batch_size, np.int64)
        query_time = np.zeros(self.batch_size, np.int64)
        positions = np.zeros((self.batch_size, self.num_examples), np.int32)
        positives = np.zeros((self.batch_size, self.num_examples), np.int32)
        for b, u in enumerate(chosen):
            n = int(self.train_length[u])
            a = int(rng.integers(1, n))
            users[b], anchors[b], query_time[b] = u, a, self.ds.timestamps[u][a - 1]
            positions[b], positives[b] = self._examples(rng, self.ds.items[u][:n], a)
        return users, anchors, query_time, positions, positives

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        users, anchors, query_time, positions, positives = self.rows(step)
        batch = history_batch(self.ds, users, anchors, query_time, self.max_len)
        batch["positions_BxP"] = positions
        batch["positives_BxP"] = positives
        return batch

    def _examples(self, rng, items: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """(L positions, positive items) of one row; event j of the input sits at position L - a + j."""
        p, length = self.num_examples, self.max_len
        positions = np.full(p, length - 1, np.int32)
        positives = np.zeros(p, np.int32)
        n = len(items)
        if self.objective == "next":
            positives[0] = items[a]
        elif self.objective == "dense_next":
            positions = np.arange(length, dtype=np.int32)
            j = a - length + positions  # the input event at each position (< 0: padding)
            real = j >= 0
            positives[real] = items[j[real] + 1]
        elif self.objective == "all_action":
            future = np.unique(items[a : min(n, a + self.window)])
            chosen = rng.choice(future, min(p, future.size), replace=False)
            positives[: chosen.size] = chosen
        else:  # dense_all_action
            first = max(0, a - length)
            j = rng.integers(first, a, size=p)  # input events, with replacement when fewer than p
            ends = np.minimum(n, j + 1 + self.window)
            picked = j + 1 + (rng.random(p) * (ends - j - 1)).astype(np.int64)
            positions = (length - a + j).astype(np.int32)
            positives = items[picked].astype(np.int32)
        return positions, positives
