"""The files of a run's --workdir, and the guards that keep a good run from being overwritten.

config.json           resolved config (written once the inputs are known to be good; the folder too)
config_history.jsonl  what each --resume changed: {"step": step resumed from, "changes": {key: [old, new]}}
metrics.jsonl         one JSON object per evaluation
metrics.json          final validation and test metrics of the best checkpoint, plus timings
checkpoints/          orbax checkpoints: latest/ and best/ (one folder per step, named by the step)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax

from jaxrec import config as config_lib

log = logging.getLogger("jaxrec")


class RunDirError(ValueError):
    """A --workdir that cannot be used as asked (it holds another run, or cannot be created)."""


# What a resumed run may change; each change is recorded in config_history.jsonl (`write_config`).
# How a step is computed, not what (equal results to float tolerance, the same parameters): e.g. a
# catalogue chunk that fits the item count better. The mesh (mesh.*) splits the same computation too.
COMPUTE_ONLY = frozenset({"model.ce_chunk", "model.attention"})
# How long the run goes on and how often it logs: the steps already taken stay what they were.
RUN_EXTENDING = frozenset({"train.num_epochs", "train.max_train_seconds", "train.patience_epochs", "train.log_every"})
# When and how the run validates (eval.*), and the devices it runs on (mesh.*).
ALLOWED_SECTIONS = ("eval", "mesh")
# Every other change is refused: what the checkpoint's state depends on (these sections; retrieval.* also
# shapes the frequency state), and the rest of train.*: batch_size, learning_rate, adam_b1, adam_b2,
# weight_decay, seed, loss_normalizer, length_buckets (which users share a batch) and micro_batch (each
# micro-batch draws its own dropout), which would make the run's steps a mix of two recipes.
MODEL_AND_DATA = ("model", "data", "ctr", "retrieval")


# Except the metric that picks the best checkpoint: the run's best value so far is in the old metric, and
# comparing the new one against it would pick a wrong "best" checkpoint.
REFUSED_IN_ALLOWED_SECTIONS = frozenset({"eval.select_metric"})


def _allowed_on_resume(key: str) -> bool:
    if key in REFUSED_IN_ALLOWED_SECTIONS:
        return False
    return key in COMPUTE_ONLY or key in RUN_EXTENDING or key.split(".")[0] in ALLOWED_SECTIONS


def _differences(old: dict, new: dict) -> dict[str, list]:
    """{"section.field": [old, new]} for every field whose value differs."""
    return {
        f"{section}.{k}": [old.get(section, {}).get(k), new.get(section, {}).get(k)]
        for section in sorted(set(old) | set(new))
        for k in sorted(set(old.get(section, {})) | set(new.get(section, {})))
        if old.get(section, {}).get(k) != new.get(section, {}).get(k)
    }


def latest_step(workdir: Path) -> int | None:
    """Step of the newest complete latest/ checkpoint: orbax names each step's folder by its number
    (and writes it under a temporary name first)."""
    folder = workdir / "checkpoints" / "latest"
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


def check_workdir(workdir: Path, cfg: config_lib.Config, resume: bool) -> dict[str, Any] | None:
    """Refuses to start a run over another run, or to resume a run with changes to what is trained.

    Reads only: nothing is written until the inputs are known to be good (`write_config`).
    Returns, for a resumed run with allowed changes (`_allowed_on_resume`), the record
    `write_config` appends to config_history.jsonl: {"step": step resumed from, "changes": {key: [old, new]}}.
    """
    existing = next((p for p in (workdir, *workdir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise RunDirError(f"--workdir {workdir}: {existing} is a file, not a folder; choose another --workdir")
    if existing is not None and not os.access(existing, os.W_OK):
        raise RunDirError(f"--workdir {workdir}: cannot write in {existing}; choose another --workdir")
    config_path = workdir / "config.json"
    has_checkpoints = any(p.is_file() for p in (workdir / "checkpoints").rglob("*"))  # empty folders: no save yet
    if not config_path.exists():
        if has_checkpoints:
            raise RunDirError(f"{workdir} holds checkpoints but no config.json; choose another --workdir")
        return None
    try:
        old = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{config_path} is not valid JSON ({err}); choose another --workdir") from None
    new = config_lib.to_dict(cfg)
    if not resume:
        if has_checkpoints or (workdir / "metrics.json").exists():
            raise RunDirError(
                f"{workdir} already holds a run; pass --resume to continue it or choose another --workdir"
            )
        return None
    try:
        old = config_lib.to_dict(config_lib.from_dict(old))  # fields added since take their defaults
    except (config_lib.ConfigError, TypeError) as err:
        raise RunDirError(
            f"{workdir} cannot be resumed by this version of jaxrec: its config.json does not read ({err}); "
            "start a new --workdir (that folder's metrics stay as they are)"
        ) from None
    changes = _differences(old, new)
    refused = [k for k in changes if not _allowed_on_resume(k)]
    listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
    if any(k.split(".")[0] in MODEL_AND_DATA for k in refused):
        raise RunDirError(
            f"{workdir} holds a run of a different model or data; cannot resume it with this config: {listed}"
        )
    if refused:
        allowed = sorted(COMPUTE_ONLY | RUN_EXTENDING) + [f"{s}.*" for s in ALLOWED_SECTIONS]
        raise RunDirError(
            f"{workdir} holds a run trained with other settings; resuming would change what is trained: {listed}; "
            f"use a new --workdir for these settings (a resumed run may change {', '.join(allowed)})"
        )
    if not changes:
        return None
    return {"step": latest_step(workdir) or 0, "changes": changes}


def write_config(workdir: Path, cfg: config_lib.Config, resumed: dict[str, Any] | None) -> None:
    """Creates `workdir` and writes config.json, after appending what a resumed run changed (`check_workdir`)
    to config_history.jsonl: the old values stay on record, and a log line says what changed."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create --workdir {workdir}: {err.strerror}") from None
    if resumed and is_writer():
        append_jsonl(workdir / "config_history.jsonl", resumed)
        changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in resumed["changes"].items())
        log.info("resumed run changes (recorded in config_history.jsonl): %s", changed)
    write_json(workdir / "config.json", config_lib.to_dict(cfg))


def created_folder(workdir: Path) -> Path | None:
    """The outermost folder of `workdir`'s path that does not exist yet: what a run would create."""
    missing = [p for p in (workdir, *workdir.parents) if not p.exists()]
    return missing[-1] if missing else None


def remove_unused(folder: Path | None) -> None:
    """Removes `folder`, created by a run that was then refused, unless it holds a file of value:
    anything besides config.json (a checkpoint, metrics). A refused run leaves nothing behind."""
    if folder is None or not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if all(p.name in ("config.json", "config.json.tmp") for p in files):
        shutil.rmtree(folder, ignore_errors=True)  # several processes may remove it at once


def is_writer() -> bool:
    """Run files (config, metrics) are written by process 0 only; every process trains and evaluates."""
    return jax.process_index() == 0


def write_json(path: Path, obj: Any) -> None:
    """Writes atomically: a reader never sees half a file, a crash never truncates a good one."""
    if not is_writer():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: Path, obj: Any) -> None:
    if not is_writer():
        return
    with path.open("a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drops records written after the checkpoint a resumed run restarts from."""
    if not is_writer():
        return
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a crash mid-append: the resumed run writes it again
            continue
        if entry.get("step", 0) <= max_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
