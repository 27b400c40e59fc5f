"""Orbax checkpoints of a run: the latest states (for --resume) and the best one (by validation).

Each checkpoint holds the train state and a JSON record (epoch, step, best validation value so far, the
model config). Saves are asynchronous: orbax copies the state to host memory before `save` returns, then
writes it in a background thread while training goes on.

What keeps a fault from losing work:
- Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a crash (kill -9,
  Ctrl-C, full disk) mid-save never replaces a good checkpoint; such leftovers are removed when a run opens
  its checkpoints (one log line), and after a failed save.
- The two newest `latest` checkpoints are kept: when the newest cannot be read (truncated, corrupted),
  `restore_newest_readable` falls back to the one before it, then to `best`, with a warning naming what it
  skipped. Training from an older step repeats the same steps (the data order and every random stream are
  functions of the step), so the run still ends where an uninterrupted one would.
- A save that fails (disk full, permissions) raises `CheckpointError`, naming the checkpoint and the one
  that stays intact, instead of an orbax traceback.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger("jaxrec")

TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a checkpoint still being written
KEEP = {"latest": 2, "best": 1}  # two latest: a fallback when the newest turns out unreadable


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written, or no checkpoint of a run that could be read."""


class _OrbaxWriteErrors(logging.Filter):
    """Drops what orbax's background threads log about a failed write (tracebacks, "Task exception was never
    retrieved"): the failure reaches the run as one CheckpointError naming the checkpoint (`RunCheckpoints`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname + record.getMessage())


def _quiet_closed_loop(unraisable, default=sys.unraisablehook):
    """After a failed write, orbax closes its event loop while tensorstore's other writes still finish; their
    callbacks then report "RuntimeError: Event loop is closed" by the hundred from C++ threads. The failure
    itself is reported as a CheckpointError; these echoes are dropped, everything else printed as usual."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return
    default(unraisable)


for _logger in ("absl", "asyncio"):
    logging.getLogger(_logger).addFilter(_OrbaxWriteErrors())


def unfinished_writes(root: Path) -> list[Path]:
    """Checkpoint folders under `root` that an interrupted save left unfinished."""
    return sorted(p for p in root.glob(f"*/*{TMP_MARKER}*") if p.is_dir()) if root.is_dir() else []


def remove_unfinished_writes(root: Path) -> list[Path]:
    """Deletes what `unfinished_writes` finds (nothing else can use them); returns what it removed."""
    leftovers = unfinished_writes(root)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


class RunCheckpoints:
    def __init__(self, workdir: str | Path):
        self.root = Path(workdir).resolve() / "checkpoints"
        sys.unraisablehook = _quiet_closed_loop
        removed = remove_unfinished_writes(self.root)
        if removed:
            log.warning(
                "removed %d unfinished checkpoint write(s) left by an interrupted run: %s",
                len(removed),
                ", ".join(str(p.relative_to(self.root)) for p in removed),
            )

        def options(which: str):
            # Both managers save asynchronously at once; with several processes their barriers need
            # distinct names, or one manager's finalize barrier collides with the other's.
            multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=which)
            return ocp.CheckpointManagerOptions(
                max_to_keep=KEEP[which], create=True, multiprocessing_options=multiprocessing
            )

        self.managers = {
            which: ocp.CheckpointManager(self.root / which, options=options(which)) for which in ("latest", "best")
        }
        self.last_saved: dict[str, int] = {}  # step of each manager's newest save (maybe still being written)

    def latest_step(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def save(self, which: str, step: int, state, record: dict[str, Any]) -> None:
        manager = self.managers[which]
        self._finish(which)  # orbax waits for the previous write anyway; its failure is reported as its own
        self.last_saved[which] = step
        try:
            manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                force=True,
            )
        except Exception as err:  # noqa: BLE001  (any failure of the write: report it with what stays intact)
            raise self._save_failed(which, step, err) from err

    def _save_failed(self, which: str, step: int, err: Exception) -> CheckpointError:
        remove_unfinished_writes(self.root)
        self.managers[which].reload()
        kept = [s for s in self.managers[which].all_steps() if s != step]
        intact = f"step {max(kept)}" if kept else "none yet"
        return CheckpointError(
            f"could not write the {which} checkpoint of step {step} under {self.root / which} "
            f"({type(err).__name__}: {err}); the previous {which} checkpoint ({intact}) is intact"
        )

    def _restore(self, which: str, step: int, target_state, with_state: bool = True):
        args = {"record": ocp.args.JsonRestore()}
        if with_state:
            args["state"] = ocp.args.StandardRestore(target_state)
        restored = self.managers[which].restore(step, args=ocp.args.Composite(**args))
        return restored.get("state") if with_state else None, dict(restored["record"])

    def restore(self, which: str, target_state) -> tuple[Any, dict[str, Any]]:
        """Restores the newest checkpoint of `which` into the structure of `target_state`."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no {which} checkpoint under {manager.directory}")
        return self._restore(which, step, target_state)

    def restore_newest_readable(self, target_state) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that reads: latest ones newest first, then best; None when there is none.

        Raises CheckpointError when checkpoints exist but none can be read.
        """
        for manager in self.managers.values():
            manager.reload()
        candidates = [("latest", s) for s in sorted(self.managers["latest"].all_steps(), reverse=True)]
        candidates += [("best", s) for s in sorted(self.managers["best"].all_steps(), reverse=True)]
        skipped = []
        for which, step in candidates:
            try:
                state, record = self._restore(which, step, target_state)
            except Exception as err:  # noqa: BLE001  (a damaged checkpoint fails in many ways; try the next)
                reason = (str(err).strip().splitlines() or [""])[0][:200]
                skipped.append(f"{which}/{step} ({type(err).__name__}: {reason})")
                log.warning("checkpoint %s cannot be read, skipped", skipped[-1])
                continue
            if skipped:
                self._set_aside(skipped)
                log.warning("resuming from checkpoint %s/%d instead", which, step)
            self._drop_newer_than(step)
            return state, record
        if skipped:
            raise CheckpointError(f"no checkpoint under {self.root} can be read: {'; '.join(skipped)}")
        return None

    def _set_aside(self, skipped: list[str]) -> None:
        """Moves unreadable checkpoints to checkpoints/unreadable/ (kept for inspection): the run will write
        those steps again, and orbax refuses to save over an existing step."""
        aside = self.root / "unreadable"
        aside.mkdir(exist_ok=True)
        for entry in skipped:
            which, step = entry.split(" ")[0].split("/")
            source = self.root / which / step
            if source.exists():
                shutil.move(source, aside / f"{which}_{step}")
            self.managers[which].reload()
        log.warning("moved the unreadable checkpoints to %s", aside)

    def _drop_newer_than(self, step: int) -> None:
        """Deletes the checkpoints of steps after `step`: the resumed run computes them again, bit for bit, and
        orbax refuses to save over an existing step. (A crash between the best and the latest save of an
        epoch leaves such a best checkpoint; a fallback past an unreadable one leaves newer ones.)"""
        for which, manager in self.managers.items():
            for newer in [s for s in manager.all_steps() if s > step]:
                manager.delete(newer)
                log.info(
                    "deleted checkpoint %s/%d, newer than the resumed step %d: it will be written again",
                    which,
                    newer,
                    step,
                )

    def read_record(self, which: str) -> dict[str, Any] | None:
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        return self._restore(which, step, None, with_state=False)[1]

    def _finish(self, which: str) -> None:
        """Waits for `which`'s write in progress; raises CheckpointError naming its step if it failed."""
        try:
            self.managers[which].wait_until_finished()
        except Exception as err:  # noqa: BLE001  (the background write failed: report it, keep the rest)
            raise self._save_failed(which, self.last_saved.get(which, -1), err) from err

    def wait(self) -> None:
        for which in self.managers:
            self._finish(which)

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
