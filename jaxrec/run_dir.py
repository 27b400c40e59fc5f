"""The files of a run's --workdir, and the guards that keep a good run from being overwritten.

config.json    resolved config (written once the inputs are known to be good)
metrics.jsonl  one JSON object per evaluation
metrics.json   final validation and test metrics of the best checkpoint, plus timings
checkpoints/   orbax checkpoints: latest/ and best/
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax

from jaxrec import config as config_lib


class RunDirError(ValueError):
    """A --workdir that cannot be used as asked (it holds another run)."""


# Fields that choose how a step is computed, not what it computes (equal results to float tolerance, the
# same parameters): a resumed run may change them, e.g. a catalogue chunk that fits the item count better.
COMPUTE_ONLY = frozenset({"model.ce_chunk", "model.attention"})


def _diff(old: dict, new: dict, prefix: str) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        f"{prefix}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k) and f"{prefix}.{k}" not in COMPUTE_ONLY
    ]


def check_workdir(workdir: Path, cfg: config_lib.Config, resume: bool) -> None:
    """Refuses to start a run over another run, or to resume a run of a different model or data."""
    config_path = workdir / "config.json"
    has_checkpoints = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").rglob("*"))
    if not config_path.exists():
        if has_checkpoints:
            raise RunDirError(f"{workdir} holds checkpoints but no config.json; choose another --workdir")
        return
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
        return
    try:
        old = config_lib.to_dict(config_lib.from_dict(old))  # fields added since take their defaults
    except (config_lib.ConfigError, TypeError) as err:
        raise RunDirError(f"{config_path} is not a config of this version of jaxrec ({err})") from None
    differences = []
    # What the checkpoint's state depends on (the retrieval section also shapes the frequency state).
    for section in ("model", "data", "ctr", "retrieval"):
        differences += _diff(old[section], new[section], section)
    if differences:
        raise RunDirError(
            f"{workdir} holds a run of a different model or data; cannot resume it with this config: "
            + "; ".join(differences)
        )


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
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= max_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
