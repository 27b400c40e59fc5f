"""The epoch loop every trainer shares: resume, train, validate, checkpoint, test the best checkpoint.

A trainer (leave-one-out, two-tower retrieval, CTR) prepares its data, model, compiled step and
evaluation, then hands them to `fit`. The host never waits on a step to dispatch the next one:
losses stay on device and are read once per epoch (and at progress updates).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec import run_dir
from jaxrec.checkpoint import RunCheckpoints
from jaxrec.dispatch import DispatchWindow
from jaxrec.progress import Progress

log = logging.getLogger("jaxrec")


class TrainingDiverged(RuntimeError):
    pass


def restore_latest(checkpoints: RunCheckpoints, state, workdir: Path, resume: bool):
    """(state, record) to start from: the latest checkpoint with --resume, else a fresh record."""
    record = {"epoch": 0, "best_value": -math.inf, "best_epoch": 0, "train_seconds": 0.0}
    if resume and checkpoints.latest_step() is not None:
        state, record = checkpoints.restore("latest", state)
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
    try:
        while epoch < cfg.train.num_epochs:
            epoch += 1
            epoch_start = time.perf_counter()
            losses = []
            for _ in range(steps_per_epoch):
                state, metrics = train_step(state, next(batches))
                window.push(metrics["loss"])
                losses.append(metrics["loss"])
                step += 1
                if progress.enabled and step % cfg.train.log_every == 0:
                    examples = (step - progress.start_step) * cfg.train.batch_size
                    progress.update(step, epoch, float(metrics["loss"]), examples)
            epoch_loss = float(np.mean(jax.device_get(losses)))
            train_seconds += time.perf_counter() - epoch_start
            if not np.isfinite(epoch_loss):
                raise TrainingDiverged(f"training loss is {epoch_loss} at epoch {epoch}; lower train.learning_rate")
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
                value = valid[select] if np.isfinite(valid[select]) else -math.inf
                if value > record["best_value"] or record["best_epoch"] == 0:
                    record.update(best_value=value, best_epoch=epoch)
                    checkpoints.save("best", step, state, record)
                checkpoints.save("latest", step, state, record)
                checkpoints.wait()
                patience = cfg.train.patience_epochs
                stalled = patience > 0 and epoch - record["best_epoch"] >= patience
                run_dir.append_jsonl(workdir / "metrics.jsonl", entry)
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
    finally:
        checkpoints.wait()
        checkpoints.close()
