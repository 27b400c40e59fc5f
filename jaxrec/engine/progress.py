"""A dependency-free progress line for terminals (steps, loss, throughput); silent otherwise."""

from __future__ import annotations

import sys
import time

import jax


class Progress:
    def __init__(self, total_steps: int, start_step: int = 0, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and jax.process_index() == 0
        self.total = total_steps
        self.start_step = start_step
        self.start_time = time.perf_counter()

    def update(self, step: int, epoch: int, loss: float, sequences: int) -> None:
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start_time, 1e-9)
        done = step / max(self.total, 1)
        bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
        rate = sequences / elapsed
        self.stream.write(f"\r[{bar}] step {step}/{self.total} epoch {epoch} loss {loss:.4f} {rate:,.0f} seq/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
