"""Faults lose nothing: kill -9, a non-finite loss, a corrupted checkpoint, a full disk, malformed input files.

python benchmarks/faults.py [--kill-points 12] [--seed 0] [--fuzz-inputs 1000] [--out FILE] [--smoke] [--keep]

Every training run is `train.py` in a subprocess with the production SASRec config (`configs/sasrec_ml1m.py`:
automatic length buckets, micro-batches of 16, the per-epoch loss normaliser, the default devices) on a small
synthetic dataset, compared with one uninterrupted run of the same settings:
- kill points: each starts a fresh run and kills it with SIGKILL at a point drawn by a seeded generator: a
  moment during training, or while the n-th checkpoint is being written (as soon as its temporary folder
  appears); then `--resume` runs it to the end. Identical: every final metric equals the uninterrupted run's
  (relative difference <= 1e-6) and no unfinished checkpoint folder is left.
- non-finite: the step function is wrapped to return a NaN loss from a chosen step on; the run must stop with
  one `error:` line naming that step, and `--resume` without the fault must then end like the reference.
- corrupted checkpoint: a run killed after two `latest` checkpoints has its newest one's data truncated;
  `--resume` must warn, name what it skipped, and still end like the reference.
- full disk: from the third checkpoint on, the process may write no file over 16 KB (RLIMIT_FSIZE, the OS
  refusing the write as a full disk would); the run must stop with one `error:` line, the previous
  checkpoint intact, and `--resume` must end like the reference.
- fuzz: `benchmarks/fuzz_readers.py`, every malformed input loads or raises DataError.
Writes benchmarks/results/reliability/faults.json (or --out). `--smoke` runs a small version for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jaxrec.engine.checkpoint import unfinished_writes  # noqa: E402

# The production config on small generated data: a few steps an epoch, a validation every two epochs.
DATA = [
    "data.name=synthetic",
    "data.synthetic_users=600",
    "data.synthetic_items=200",
    "data.synthetic_mean_length=40",
    "train.num_epochs=6",
    "eval.every_epochs=2",
    "eval.num_negatives=50",
]
SMOKE_DATA = [s.replace("train.num_epochs=6", "train.num_epochs=4") for s in DATA]


def train_command(workdir: Path, settings: list[str], resume: bool, inject: str = "") -> list[str]:
    """train.py (or this script as a wrapper that injects a fault first) on the production config."""
    head = [sys.executable, str(Path(__file__).resolve()), "--inject", inject, "--"] if inject else [sys.executable]
    head += [] if inject else [str(REPO / "train.py")]
    args = ["--config", str(REPO / "configs/sasrec_ml1m.py"), "--workdir", str(workdir)]
    for setting in settings:
        args += ["--set", setting]
    return head + args + (["--resume"] if resume else [])


def environment(cache: Path) -> dict[str, str]:
    """The user's environment, with a compilation cache shared by the runs (restarts compile in seconds)."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(command: list[str], env: dict, log: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        out.write(proc.stdout + proc.stderr + f"[exit {proc.returncode}]\n")
    return proc


def final_metrics(workdir: Path) -> dict[str, float]:
    """metrics.json without the timings (they differ between any two runs)."""
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def same_metrics(a: dict, b: dict, rtol: float = 1e-6) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) or isinstance(y, float):
            if abs(x - y) > rtol * max(abs(x), abs(y), 1e-12):
                return False
        elif x != y:
            return False
    return True


def unfinished(workdir: Path) -> list[str]:
    return [str(p) for p in unfinished_writes(workdir / "checkpoints")]


def finished_steps(workdir: Path, which: str = "latest") -> list[int]:
    folder = workdir / "checkpoints" / which
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def kill_when(command: list[str], env: dict, log: Path, trigger, timeout: float = 600) -> bool:
    """Starts `command`, polls `trigger(elapsed_since_compiled)` every millisecond, SIGKILLs when it is true.
    Returns whether the kill landed (False: the run ended first)."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}  # to be killed\n")
        out.flush()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        start, compiled_at = time.monotonic(), None
        while proc.poll() is None and time.monotonic() - start < timeout:
            if compiled_at is None and "compiled" in log.read_text().rsplit("$ ", 1)[-1]:
                compiled_at = time.monotonic()
            if compiled_at is not None and trigger(time.monotonic() - compiled_at):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                out.write("[killed with SIGKILL]\n")
                return True
            time.sleep(0.001)
        proc.wait()
        return False


def kill_points(count: int, seed: int, settings: list[str], reference: dict, train_span: float, root, env, log):
    """Each point: a fresh run, SIGKILL at the drawn point, `--resume` to the end, compared with the reference."""
    rng = np.random.default_rng(seed)
    results = []
    saves = int(re.search(r"num_epochs=(\d+)", " ".join(settings)).group(1))  # one latest save an epoch
    for index in range(count):
        workdir = root / f"kill_{index}"
        if index % 3 == 2:  # every third point: while a checkpoint is being written
            nth = int(rng.integers(1, saves))
            seen = set()

            def trigger(_, workdir=workdir, nth=nth, seen=seen):
                seen.update(unfinished(workdir))
                return len(seen) >= nth

            point = f"while checkpoint write {nth} is under way"
        else:
            delay = float(rng.uniform(0.0, train_span))
            trigger, point = (lambda elapsed, delay=delay: elapsed >= delay), f"{delay:.2f} s after compiling"
        landed = kill_when(train_command(workdir, settings, resume=False), env, log, trigger)
        leftover_after_kill = unfinished(workdir)
        resumed = run(train_command(workdir, settings, resume=True), env, log)
        identical = (
            resumed.returncode == 0 and same_metrics(final_metrics(workdir), reference) and not unfinished(workdir)
        )
        results.append(
            {
                "point": point,
                "killed": landed,
                "left_unfinished_write": bool(leftover_after_kill),
                "resume_exit": resumed.returncode,
                "identical": bool(identical),
            }
        )
        print(json.dumps(results[-1]), flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def nonfinite(settings, reference, root, env, log, at_step: int) -> dict:
    workdir = root / "nonfinite"
    proc = run(train_command(workdir, settings, resume=False, inject=f"nan@{at_step}"), env, log)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    one_line = len(lines) == 1 and f"step {at_step}" in lines[0] and "Traceback" not in proc.stderr
    checkpoint_before = finished_steps(workdir)
    resumed = run(train_command(workdir, settings, resume=True), env, log)
    ok = (
        proc.returncode == 2
        and one_line
        and resumed.returncode == 0
        and same_metrics(final_metrics(workdir), reference)
    )
    return {"stops_cleanly": bool(ok), "error": lines[0] if lines else proc.stderr[-500:], "kept": checkpoint_before}


def corrupt_checkpoint(settings, reference, root, env, log) -> dict:
    workdir = root / "corrupt"
    landed = kill_when(
        train_command(workdir, settings, resume=False), env, log, lambda _: len(finished_steps(workdir)) >= 2
    )
    newest = max(finished_steps(workdir))
    files = sorted((workdir / "checkpoints/latest" / str(newest)).rglob("*"), key=lambda p: p.stat().st_size)
    damaged = [p for p in files if p.is_file()][-1]  # the largest file: the state's data
    with damaged.open("r+b") as f:  # truncate it to half
        f.truncate(damaged.stat().st_size // 2)
    resumed = run(train_command(workdir, settings, resume=True), env, log)
    warned = f"latest/{newest}" in resumed.stderr and "skipped" in resumed.stderr
    ok = landed and resumed.returncode == 0 and warned and same_metrics(final_metrics(workdir), reference)
    return {"recovers": bool(ok), "damaged": str(damaged.relative_to(workdir)), "warned": warned}


def full_disk(settings, reference, root, env, log) -> dict:
    workdir = root / "full_disk"
    proc = run(train_command(workdir, settings, resume=False, inject="fsize@3"), env, log)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    kept = finished_steps(workdir)
    intact = bool(kept) and not unfinished(workdir)
    resumed = run(train_command(workdir, settings, resume=True), env, log)
    ok = (
        proc.returncode == 1
        and len(lines) == 1
        and "Traceback" not in proc.stderr
        and intact
        and resumed.returncode == 0
        and same_metrics(final_metrics(workdir), reference)
    )
    return {"keeps_previous": bool(ok), "error": lines[0] if lines else proc.stderr[-500:], "kept": kept}


# ---- fault injection: this script wraps train.py when called with --inject ----


def inject(fault: str, train_args: list[str]) -> int:
    """Runs train.main(train_args) with `fault`: `nan@N` (the loss is NaN from step N on) or `fsize@K` (from the
    K-th checkpoint save on, no file over 16 KB may be written: the OS refuses the write, as on a full disk)."""
    kind, _, value = fault.partition("@")
    if kind == "nan":
        import jax.numpy as jnp

        from jaxrec.engine import train as engine_train

        make = engine_train.make_train_step

        def make_with_nan(*args, **kwargs):
            step_fn = make(*args, **kwargs)

            def step(state, batch):
                new_state, metrics = step_fn(state, batch)
                bad = new_state.step >= int(value)
                return new_state, {**metrics, "loss": jnp.where(bad, jnp.nan, metrics["loss"])}

            return step

        engine_train.make_train_step = make_with_nan
    elif kind == "fsize":
        import resource

        from jaxrec.engine import checkpoint

        save, calls = checkpoint.RunCheckpoints.save, {"n": 0}

        def save_on_a_full_disk(self, which, step, state, record):
            calls["n"] += which == "latest"
            if calls["n"] >= int(value):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write then fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
            return save(self, which, step, state, record)

        checkpoint.RunCheckpoints.save = save_on_a_full_disk
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    import train

    return train.main(train_args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-points", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fuzz-inputs", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/reliability/faults.json"))
    parser.add_argument("--smoke", action="store_true", help="two kill points, fewer epochs and fuzz inputs")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folder (its path is printed)")
    parser.add_argument("--inject", default="", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.inject:
        return inject(args.inject, [a for a in rest if a != "--"])
    settings = SMOKE_DATA if args.smoke else DATA
    kill_count = 2 if args.smoke else args.kill_points
    fuzz_count = 50 if args.smoke else args.fuzz_inputs
    root = Path(tempfile.mkdtemp(prefix="jaxrec_faults_"))
    env, log = environment(root / "xla_cache"), root / "runs.log"
    try:
        start = time.perf_counter()
        reference_proc = run(train_command(root / "reference", settings, resume=False), env, log)
        if reference_proc.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed:\n{reference_proc.stderr[-3000:]}")
        reference = final_metrics(root / "reference")
        span = json.loads((root / "reference/metrics.json").read_text())["train/seconds"]
        steps_per_epoch = int(re.search(r"(\d+) steps/epoch", reference_proc.stderr).group(1))
        kills = kill_points(kill_count, args.seed, settings, reference, span, root, env, log)
        at_step = steps_per_epoch + 2  # in the second epoch: the first epoch's checkpoint must stay the latest
        nan = nonfinite(settings, reference, root, env, log, at_step)
        corrupt = corrupt_checkpoint(settings, reference, root, env, log)
        disk = full_disk(settings, reference, root, env, log)
        print(json.dumps({"nonfinite": nan, "corrupt_checkpoint": corrupt, "full_disk": disk}, indent=1), flush=True)
        from benchmarks.fuzz_readers import fuzz_readers

        fuzz = fuzz_readers(fuzz_count, args.seed)
        landed = [k for k in kills if k["killed"]]
        result = {
            "kill_points": len(landed),
            "kill_points_identical": sum(k["identical"] for k in landed),
            "nonfinite_stops_cleanly": nan["stops_cleanly"],
            "corrupt_checkpoint_recovers": corrupt["recovers"],
            "full_disk_keeps_previous": disk["keeps_previous"],
            "fuzz_inputs": fuzz["fuzz_inputs"],
            "fuzz_tracebacks": fuzz["fuzz_tracebacks"],
            "details": {
                "kills": kills,
                "nonfinite": nan,
                "corrupt_checkpoint": corrupt,
                "full_disk": disk,
                "fuzz": {k: v for k, v in fuzz.items() if k != "tracebacks"},
                "fuzz_tracebacks_first": fuzz.get("tracebacks", [])[:3],
                "settings": settings,
                "seed": args.seed,
                "seconds": round(time.perf_counter() - start, 1),
            },
        }
        print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if not args.smoke:
            shutil.copy(log, out.with_name("faults_runs.log"))
        return 0
    finally:
        if args.keep:
            print(f"runs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
