"""The entry point train.py uses: a config in, a trained and evaluated run folder out.

`run` validates the config against its model and task, then hands the task to the engine. Any model in
`jaxrec.models.MODELS` trains through here; adding one takes its module plus a registry line
(docs/adding_a_model.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxrec import config as config_lib
from jaxrec.engine import train
from jaxrec.engine.loop import TrainingDiverged  # noqa: F401  (re-exported: train.py reports it)
from jaxrec.engine.task import Task
from jaxrec.models import model_class
from jaxrec.tasks import TASKS

SECTION_KEYS = ("retrieval", "ctr")  # task sections: a task reads its own, the others must stay at their defaults


def task_of(cfg: config_lib.Config) -> Task:
    """The task that trains `cfg.model.name`."""
    return TASKS[model_class(cfg.model.name).task]


def _value(cfg: config_lib.Config, key: str):
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def validate(cfg: config_lib.Config) -> Task:
    """Checks `cfg` (ranges, the model's own checks, the task sections') and refuses settings its task does not read;
    returns the task. Raises ConfigError naming the key."""
    config_lib.validate(cfg)
    task = task_of(cfg)
    ignored = list(task.unused_keys)
    for section in SECTION_KEYS:
        if section != task.section:
            ignored += [f"{section}.{field.name}" for field in dataclasses.fields(getattr(cfg, section))]
    unused = config_lib.unused_settings(cfg, ignored)
    if unused:
        listed = ", ".join(f"{key}={_value(cfg, key)!r}" for key in unused)
        raise config_lib.ConfigError(
            f"{listed}: not used by model {cfg.model.name} (the {task.name} task); leave at the default"
        )
    known = task.select_metrics(cfg)
    if cfg.eval.select_metric not in known:
        raise config_lib.ConfigError(
            f"eval.select_metric {cfg.eval.select_metric!r} is not computed; choose one of {known}"
        )
    return task


def run(
    cfg: config_lib.Config, workdir: str | Path, resume: bool = False, interrupt_after_epoch: int | None = None
) -> dict[str, float]:
    """Trains and evaluates `cfg` in `workdir` (resuming with `resume`); returns the final metrics (also in
    metrics.json). `interrupt_after_epoch` simulates a crash after that epoch's checkpoint (for tests)."""
    task = validate(cfg)
    return train.run(task, cfg, workdir, resume, interrupt_after_epoch)
