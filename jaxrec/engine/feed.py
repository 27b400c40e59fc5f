"""The training input: a prefetching grain iterator over a task's batches, from any step on (resume)."""

from __future__ import annotations

from typing import Any

import grain

from jaxrec.engine.task import Batches


class ProcessRows:
    """grain transform: the rows of step's batch that this process feeds (picklable, unlike a lambda)."""

    def __init__(self, plan, rows: slice | None):
        self.plan, self.rows = plan, rows

    def __call__(self, step: int) -> dict[str, Any]:
        # Tasks fed by one process (multi_process = False) build whole batches: their plans take the step only.
        return self.plan(step) if self.rows is None else self.plan(step, self.rows)


def train_iterator(plan: Batches, start_step: int, num_steps: int, prefetch: int = 4, rows: slice | None = None):
    """A prefetching grain iterator over steps [start_step, num_steps) of `plan`.

    `rows`: the share of each batch this process builds (multi-host data parallelism: every process
    walks the same steps and produces only its devices' rows; see `jaxrec.engine.mesh.process_rows`).
    """
    dataset = grain.MapDataset.range(num_steps).map(ProcessRows(plan, rows))[start_step:]
    # One host thread builds batches ahead of the step; the other core stays with XLA.
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))
