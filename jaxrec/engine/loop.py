"""The epoch loop every trainer shares: resume, train, validate, checkpoint, test the best checkpoint.

A trainer (leave-one-out, two-tower retrieval, CTR) prepares its data, model, compiled step and
evaluation, then hands them to `fit`. The host never waits on the step it just dispatched: losses stay on
device and are read once per epoch (and at progress updates), and a `DispatchWindow` keeps at most a few
steps in flight.

Faults: a non-finite epoch loss stops the run before that epoch is checkpointed (`TrainingDiverged` names
the first bad step); Ctrl-C stops at the next step boundary, after pending checkpoint writes complete
(`Interrupted`; a second Ctrl-C stops at once); a failed checkpoint write raises `CheckpointError`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec.engine import run_dir
from jaxrec.engine.checkpoint import CheckpointError, RunCheckpoints
from jaxrec.engine.dispatch import DispatchWindow
from jaxrec.engine.progress import Progress

log = logging.getLogger("jaxrec")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C at a step boundary; the message says which checkpoint to resume from."""


class StopOnSignal:
    """While active, the first SIGINT (Ctrl-C) only asks the loop to stop at the next step boundary, so it never
    cuts a checkpoint write or a collective in half; a second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("stopped at once by a second Ctrl-C")
        self.requested = True
        log.warning("Ctrl-C: stopping after this step (press again to stop at once)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _latest_saved(checkpoints: RunCheckpoints) -> str:
    step = checkpoints.latest_step()
    return "none yet" if step is None else f"step {step}"


def restore_latest(checkpoints: RunCheckpoints, state, workdir: Path, resume: bool):
    """(state, record) to start from: with --resume the newest readable checkpoint (an unreadable newest one
    is skipped with a warning, see `RunCheckpoints.restore_newest_readable`), else a fresh record."""
    record = {"epoch": 0, "best_value": -math.inf, "best_epoch": 0, "train_seconds": 0.0}
    restored = checkpoints.restore_newest_readable(state) if resume else None
    if restored is not None:
        state, record = restored
        run_dir.truncate_jsonl(workdir / "metrics.jsonl", int(state.step))
        log.info("resumed from step %d (epoch %d)", int(state.step), record["epoch"])
    elif resume:
        log.info("--resume: no checkpoint in %s, starting from scratch", workdir)
    return state, record


def fit(
    cfg,
    workdir: Path,
    checkpoints: RunCheckpoints,
    state,
    record: dict[str, Any],
    train_step: Callable[[Any, dict], tuple[Any, dict]],
    batches: Iterator[dict],
    steps_per_epoch: int,
    evaluate: Callable[[Any, str], dict[str, float]],
    select: str,
    compile_seconds: float,
    interrupt_after_epoch: int | None = None,
    entry_extras: Callable[[dict], dict] = lambda metrics: {},
) -> dict[str, float]:
    """Trains to `train.num_epochs` (or the wall-clock cap) from `state`; returns the final metrics.

    Args:
        train_step: (state, batch) -> (state, metrics with a "loss").
        batches: the training batches from the state's step on.
        evaluate: (state, "valid" | "test") -> metrics named "<split>/...".
        select: the validation metric that picks the best checkpoint (higher is better; NaN never wins).
        entry_extras: more figures for each metrics.jsonl line, from the epoch's last step metrics.
    Validation runs every `eval.every_epochs`, after the last epoch and when capped; training stops
    early once `train.patience_epochs` epochs have passed without a better validation metric (checked
    at validation epochs). metrics.json holds the best checkpoint's validation and test metrics, and
    what ended training ("ended_by": epochs, cap or patience). `interrupt_after_epoch` simulates a
    crash after that epoch's checkpoint (for tests).
    """
    step = int(state.step)
    total_steps = cfg.train.num_epochs * steps_per_epoch
    progress = Progress(total_steps, step)
    train_seconds, epoch = float(record["train_seconds"]), record["epoch"]
    ended_by = "epochs"
    window = DispatchWindow()  # the host stays at most a few steps ahead (XLA:CPU deadlocks at 32)
    stop = StopOnSignal()
    try:
        stop.__enter__()
        while epoch < cfg.train.num_epochs:
            epoch += 1
            epoch_start = time.perf_counter()
            losses = []
            for _ in range(steps_per_epoch):
                state, metrics = train_step(state, next(batches))
                window.push(metrics["loss"])
                losses.append(metrics["loss"])
                step += 1
                if stop.requested:
                    checkpoints.wait()
                    raise Interrupted(
                        f"stopped by Ctrl-C at step {step} (epoch {epoch}); the latest checkpoint "
                        f"({_latest_saved(checkpoints)}) is complete: --resume continues from it"
                    )
                if progress.enabled and step % cfg.train.log_every == 0:
                    examples = (step - progress.start_step) * cfg.train.batch_size
                    progress.update(step, epoch, float(metrics["loss"]), examples)
            step_losses = np.asarray(jax.device_get(losses), np.float64)
            epoch_loss = float(step_losses.mean())
            train_seconds += time.perf_counter() - epoch_start
            if not np.isfinite(epoch_loss):  # this epoch is not checkpointed: the last good one stays the latest
                first_bad = int(np.flatnonzero(~np.isfinite(step_losses))[0])
                checkpoints.wait()
                raise TrainingDiverged(
                    f"training loss is {step_losses[first_bad]} at step {step - len(step_losses) + first_bad + 1} "
                    f"(epoch {epoch}); stopped before checkpointing it, the latest checkpoint "
                    f"({_latest_saved(checkpoints)}) is intact; lower train.learning_rate in a new --workdir"
                )
            record.update(epoch=epoch, train_seconds=train_seconds)
            capped = 0 < cfg.train.max_train_seconds <= train_seconds
            stalled = False
            if epoch % cfg.eval.every_epochs == 0 or epoch == cfg.train.num_epochs or capped:
                eval_start = time.perf_counter()
                valid = evaluate(state, "valid")
                entry = {
                    "epoch": epoch,
                    "step": step,
                    "train/loss": epoch_loss,
                    **entry_extras(metrics),
                    "train/seconds": train_seconds,
                    "eval/seconds": time.perf_counter() - eval_start,
                    **valid,
                }
                # The line goes first: a resume from an earlier checkpoint drops it (truncate_jsonl), while a
                # checkpoint without its line would leave a hole in the curve.
                run_dir.append_jsonl(workdir / "metrics.jsonl", entry)
                value = valid[select] if np.isfinite(valid[select]) else -math.inf
                if value > record["best_value"] or record["best_epoch"] == 0:
                    record.update(best_value=value, best_epoch=epoch)
                    checkpoints.save("best", step, state, record)
                checkpoints.save("latest", step, state, record)
                checkpoints.wait()
                patience = cfg.train.patience_epochs
                stalled = patience > 0 and epoch - record["best_epoch"] >= patience
                log.info(
                    "epoch %d loss %.4f %s %.4f (best %.4f @ %d)",
                    epoch,
                    epoch_loss,
                    select,
                    valid[select],
                    record["best_value"],
                    record["best_epoch"],
                )
            else:
                checkpoints.save("latest", step, state, record)
            if interrupt_after_epoch == epoch:
                checkpoints.wait()
                raise KeyboardInterrupt(f"simulated interruption after epoch {epoch}")
            if capped:
                log.info("train.max_train_seconds=%s reached after epoch %d", cfg.train.max_train_seconds, epoch)
                ended_by = "cap"
                break
            if stalled:
                log.info("train.patience_epochs: no better %s since epoch %d", select, record["best_epoch"])
                ended_by = "patience"
                break
        progress.close()
        checkpoints.wait()
        best_state, best_record = checkpoints.restore("best", state)
        final = {
            "best_epoch": best_record["best_epoch"],
            "epochs": epoch,
            "ended_by": ended_by,
            "train/seconds": train_seconds,
            "compile/seconds": compile_seconds,
        }
        eval_start = time.perf_counter()
        final.update(evaluate(best_state, "valid"))
        final.update(evaluate(best_state, "test"))
        final["eval/seconds"] = time.perf_counter() - eval_start
        run_dir.write_json(workdir / "metrics.json", final)
        return final
    except BaseException as err:
        try:  # let pending writes complete, so the latest checkpoint is whole; a second error would hide the first
            checkpoints.wait()
        except CheckpointError as second:
            if not isinstance(err, CheckpointError):  # (a failed write fails its sibling too: one report)
                log.warning("%s", second)
        raise
    finally:
        stop.__exit__()
        checkpoints.close()
