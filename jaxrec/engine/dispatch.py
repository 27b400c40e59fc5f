"""A bound on how many dispatched programs the host leaves unfinished: what keeps XLA:CPU meshes from deadlocking.

XLA:CPU (jax 0.10 and 0.11) admits at most 32 programs in flight per device
(`max_inflight_computations_per_device`). A multi-device program takes its slot on one of the client's worker
threads, and that pool has only max(cores, devices) threads: two on a 2-core machine with two devices. Once
the host has dispatched 32 programs that have not finished, one worker blocks waiting for a slot while the
other runs device 0's part of a program whose collective waits at its rendezvous for device 1's part, which
no thread is left to run. XLA aborts the process 40 s later ("Termination timeout for `all-reduce
RendezvousKey{...}`", exit code 134). A training epoch dispatched without waiting, or an evaluation that
dispatches every batch before reading any, runs that far ahead whenever the devices are slower than the host.

Every loop that dispatches programs to a mesh pushes each program's outputs into a `DispatchWindow`, which
waits for the oldest once more than `MAX_IN_FLIGHT` are unfinished. Eight keep the devices fed (the host
never waits for the step just dispatched) and stay far below 32, leaving room for the eager ops, transfers
and checkpoint copies that share the same slots.
"""

from __future__ import annotations

import collections
from typing import Any

import jax

# Programs a loop may leave unfinished; XLA:CPU deadlocks at 32 per device (see the module docstring).
MAX_IN_FLIGHT = 8


class DispatchWindow:
    """Remembers the outputs of the last `depth` dispatched programs and waits for older ones to finish."""

    def __init__(self, depth: int = MAX_IN_FLIGHT):
        if depth < 1:
            raise ValueError(f"a dispatch window needs depth >= 1, got {depth}")
        self.depth = depth
        self._pending: collections.deque[Any] = collections.deque()

    def push(self, outputs: Any) -> None:
        """Records a just-dispatched program's outputs (any pytree of arrays); waits for the oldest once more
        than `depth` are unfinished. One output per program is enough: a program's outputs finish together."""
        self._pending.append(outputs)
        while len(self._pending) > self.depth:
            jax.block_until_ready(self._pending.popleft())

    def drain(self) -> None:
        """Waits for every recorded program."""
        while self._pending:
            jax.block_until_ready(self._pending.popleft())

    def __len__(self) -> int:
        return len(self._pending)
