"""Faults lose nothing: unreadable or unwritable checkpoints, a non-finite loss, Ctrl-C, a torn metrics line.

The whole-run versions (kill -9 at random points, a truncated checkpoint, a full disk, through train.py on the
production config) are `benchmarks/faults.py`, whose smoke mode runs in the slow set here.
"""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.engine import loop, run_dir
from jaxrec.engine.checkpoint import CheckpointError, RunCheckpoints, unfinished_writes
from tests.conftest import REPO, RecordingCheckpoints, fit_on_fakes, replace


def tiny_state(value: float):
    return {"w": jnp.full((4, 3), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def saved_run(tmp_path, steps=(1, 2)):
    checkpoints = RunCheckpoints(tmp_path)
    for step in steps:
        checkpoints.save("latest", step, tiny_state(step), {"epoch": step})
        checkpoints.wait()
    checkpoints.save("best", steps[0], tiny_state(steps[0]), {"epoch": steps[0]})
    checkpoints.wait()
    checkpoints.close()
    return tmp_path / "checkpoints"


def largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_resume_skips_a_truncated_newest_checkpoint_with_a_warning(tmp_path, caplog):
    root = saved_run(tmp_path)
    damaged = largest_file(root / "latest" / "2")
    with damaged.open("r+b") as f:
        f.truncate(damaged.stat().st_size // 2)
    checkpoints = RunCheckpoints(tmp_path)
    with caplog.at_level("WARNING", logger="jaxrec"):
        state, record = checkpoints.restore_newest_readable(tiny_state(0))
    assert record["epoch"] == 1 and float(state["w"][0, 0]) == 1.0
    assert "latest/2" in caplog.text and "skipped" in caplog.text
    assert (root / "unreadable" / "latest_2").is_dir() and not (root / "latest" / "2").exists()
    checkpoints.save("latest", 2, tiny_state(2), {"epoch": 2})  # the run writes that step again
    checkpoints.wait()
    checkpoints.close()


def test_resume_falls_back_to_best_and_fails_clearly_when_nothing_reads(tmp_path):
    root = saved_run(tmp_path)
    for step in ("1", "2"):
        for path in (root / "latest" / step).rglob("*"):
            if path.is_file():
                path.write_bytes(b"\x00garbage")
    state, record = RunCheckpoints(tmp_path).restore_newest_readable(tiny_state(0))
    assert record["epoch"] == 1  # best/1
    for path in (root / "best" / "1").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="no checkpoint .* can be read: best/1"):
        RunCheckpoints(tmp_path).restore_newest_readable(tiny_state(0))


def test_an_unfinished_write_left_by_a_crash_is_removed_when_the_run_opens(tmp_path, caplog):
    root = saved_run(tmp_path, steps=(1,))
    leftover = root / "latest" / "2.orbax-checkpoint-tmp-1733443200"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "half").write_bytes(b"x" * 100)
    with caplog.at_level("WARNING", logger="jaxrec"):
        RunCheckpoints(tmp_path).close()
    assert not leftover.exists() and not unfinished_writes(root)
    assert "unfinished checkpoint write" in caplog.text and (root / "latest" / "1").is_dir()


def test_a_failed_write_raises_checkpoint_error_and_keeps_the_previous(tmp_path, monkeypatch):
    saved_run(tmp_path, steps=(1,))
    checkpoints = RunCheckpoints(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.managers["latest"], "save", disk_full)
    with pytest.raises(
        CheckpointError, match=r"step 2 .*No space left.*previous latest checkpoint \(step 1\) is intact"
    ):
        checkpoints.save("latest", 2, tiny_state(2), {"epoch": 2})
    monkeypatch.undo()
    _, record = checkpoints.restore("latest", tiny_state(0))
    assert record["epoch"] == 1
    checkpoints.close()


def fit_with(cfg, tmp_path, checkpoints, loss_of_step, steps_per_epoch=5):
    def train_step(state, batch):
        return SimpleNamespace(step=state.step + 1), {"loss": jnp.asarray(loss_of_step(state.step + 1))}

    return fit_on_fakes(cfg, tmp_path, train_step, steps_per_epoch, checkpoints)


def test_a_non_finite_loss_stops_naming_its_step_before_checkpointing_it(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=4), eval=dict(every_epochs=4))
    checkpoints = RecordingCheckpoints()
    with pytest.raises(loop.TrainingDiverged, match=r"loss is nan at step 12 \(epoch 3\).*checkpoint \(step 10\)"):
        fit_with(cfg, tmp_path, checkpoints, lambda step: np.nan if step >= 12 else 1.0)
    assert checkpoints.saves == [("latest", 5), ("latest", 10)]  # epoch 3 (steps 11-15) never saved


def test_first_ctrl_c_stops_at_the_next_step_after_pending_writes(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=4), eval=dict(every_epochs=4))
    checkpoints = RecordingCheckpoints()

    def loss(step):
        if step == 7:  # arrives while step 7 runs: the loop finishes it, then stops
            os.kill(os.getpid(), signal.SIGINT)
        return 1.0

    with pytest.raises(loop.Interrupted, match=r"step 7 \(epoch 2\).*checkpoint \(step 5\) is complete"):
        fit_with(cfg, tmp_path, checkpoints, loss)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_a_metrics_line_torn_by_a_crash_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        json.dumps({"step": 5, "x": 1}) + "\n" + json.dumps({"step": 10, "x": 2}) + "\n" + '{"step": 15, "x'
    )
    run_dir.truncate_jsonl(path, 10)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow
def test_ctrl_c_during_training_prints_one_line_and_leaves_a_resumable_run(tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(REPO / "configs/sasrec_synthetic.py"),
        "--workdir",
        str(workdir),
        *("--set", "train.num_epochs=200", "--set", "eval.every_epochs=50"),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    while not list((workdir / "checkpoints" / "latest").glob("[0-9]*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch's checkpoint exists: training is under way
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped by Ctrl-C at step") and "--resume" in last
    assert not unfinished_writes(workdir / "checkpoints")
    # A cap of 1 s: the resumed run trains one more epoch, validates and ends (ended_by "cap").
    resumed = subprocess.run(
        [*command, "--set", "train.max_train_seconds=1", "--resume"], capture_output=True, text=True, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    assert "not finalized" not in resumed.stderr and "Traceback" not in resumed.stderr
    assert (workdir / "metrics.json").exists()


@pytest.mark.slow
def test_fault_benchmark_smoke(tmp_path):
    out = tmp_path / "faults.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/faults.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kill_points"] >= 1 and result["kill_points_identical"] == result["kill_points"]
    assert result["nonfinite_stops_cleanly"] and result["corrupt_checkpoint_recovers"]
    assert result["full_disk_keeps_previous"]
    assert result["fuzz_inputs"] == 50 and result["fuzz_tracebacks"] == 0
    assert jax.devices()  # the subprocess ran on its own devices; this process is untouched
