"""The contract between the engine and a task (next-item, retrieval, CTR, or one of yours).

A `Task` knows its config section, its data, split, batches, loss and evaluation; the engine
(`jaxrec.engine.train.run`) knows the rest: mesh, sharded init, optimizer, the step, compilation, the loop,
checkpoints and the run folder. The engine imports no task: a task reaches it through `jaxrec.tasks.TASKS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax


class Batches(Protocol):
    """Random access to the training batches: batch `step` (of the global batch, or a process's `rows`)."""

    steps_per_epoch: int

    def __call__(self, step: int, *rows: slice) -> dict[str, Any]: ...


@dataclasses.dataclass
class TaskRun:
    """What a task prepares for one run; the engine trains it.

    init_variables(key) -> the model's variables, as `model.init` returns them (logical axes boxed).
    loss(params, model_state, task_state, batch, key) -> (summed loss, (count, model_state, metrics)); see
        `jaxrec.engine.step`.
    evaluate(state, "valid" | "test") -> metrics named "<split>/...".
    example_batches: one batch (global shape) per batch shape the step must be compiled for.
    """

    model: Any
    batches: Batches
    example_batches: list[dict[str, Any]]
    init_variables: Callable[[jax.Array], dict]
    loss: Callable
    evaluate: Callable[[Any, str], dict[str, float]]
    init_task_state: Callable[[], Any] = lambda: None
    update_task_state: Callable | None = None
    loss_divisor: float | None = None  # the gradient's divisor instead of the batch's count (epoch normaliser)
    entry_extras: Callable[[dict], dict] = lambda metrics: {}  # more figures per metrics.jsonl line


class Task(Protocol):
    """A kind of training problem. Instances live in `jaxrec.tasks.TASKS` under `name`."""

    name: str
    section: str  # its own config section ("" for none): keys of other tasks' sections are refused
    unused_keys: tuple[str, ...]  # shared config keys it does not read: refused when set (not default)
    multi_process: bool  # every process feeds its rows of each batch (False: one process only)
    one_cpu_device: bool  # gains nothing from splitting the CPU into devices (mesh.configure_cpu_devices)

    def select_metrics(self, cfg) -> list[str]:
        """The validation metrics `eval.select_metric` may name."""
        ...

    def setup(self, cfg, mesh) -> TaskRun:
        """Loads the data, builds the model, batches and evaluation (logs what it found)."""
        ...
