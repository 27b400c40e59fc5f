"""20-step training-loss trajectories of every registered model on synthetic data: a refactoring's witness.

Each model trains through the same entry point as train.py (`jaxrec.experiment.run`), on one device and on a
(data=2, model=2) mesh of host devices, with dropout on, so the step rng, the init, the optimizer, the batches
and the loss all enter the figures. A restructuring that changes none of them leaves every trajectory equal
to the recorded one up to float rounding.

    python -m benchmarks.trajectories --out benchmarks/results/trajectories/trajectories.json   # record
    python -m benchmarks.trajectories --check benchmarks/results/trajectories/trajectories.json  # compare

Each mesh runs in its own process (the host's device count is fixed when JAX starts). `--check` compares step
by step, |new - recorded| <= rtol * |recorded| (default 1e-6), and exits 1 on any difference; float rounding
differs between CPU models, so a check is meaningful on the CPU that recorded (the file names it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = 20
MESHES = {"1": (1, 1), "2x2": (2, 2)}

SYNTHETIC = [
    "data.name=synthetic",
    "data.synthetic_users=400",
    "data.synthetic_items=150",
    "data.synthetic_mean_length=20",
    "train.batch_size=32",
    "train.learning_rate=0.003",
    "train.num_epochs=100",
    "eval.batch_size=64",
]
SEQUENTIAL = ["model.max_len=20", "model.hidden=16", "model.num_blocks=2", "model.num_heads=2", "model.dropout=0.2"]
CTR = ["model.max_len=10", "model.hidden=16", "model.dropout=0.2", "ctr.mlp=32,16", "eval.select_metric=valid/auc"]

# name -> the --set list after SYNTHETIC; each list starts with model.name.
MODELS: dict[str, list[str]] = {
    "sasrec_bce": ["model.name=sasrec", *SEQUENTIAL, "model.loss=bce"],
    "sasrec_ce_chunked": ["model.name=sasrec", *SEQUENTIAL, "model.loss=ce_chunked", "model.ce_chunk=64"],
    # the micro-batch scan (its per-micro-batch rng) and the epoch normaliser
    "sasrec_micro_batch": [
        "model.name=sasrec",
        *SEQUENTIAL,
        "model.loss=bce",
        "train.micro_batch=8",
        "train.loss_normalizer=epoch",
    ],
    "bert4rec": ["model.name=bert4rec", *SEQUENTIAL, "model.loss=ce"],
    "gsasrec": ["model.name=sasrec", *SEQUENTIAL, "model.loss=gbce", "model.num_negatives=16"],
    "gru4rec": ["model.name=gru4rec", "model.max_len=20", "model.hidden=16", "model.dropout=0.2", "model.loss=ce"],
    "mf": ["model.name=mf", "model.max_len=20", "model.hidden=16", "model.loss=bce"],
    "youtube_dnn": [
        "model.name=youtube_dnn",
        "model.max_len=20",
        "model.hidden=16",
        "model.dropout=0.2",
        "model.tower_width=32",
        "model.loss=sampled",
        "model.num_negatives=16",
    ],
    "pinnerformer": [
        "model.name=pinnerformer",
        *SEQUENTIAL,
        "model.event_features=action,surface,duration,time,gap,age",
        "retrieval.num_sampled=32",
        "retrieval.ks=10",
        "eval.select_metric=valid/recall@10",
    ],
    "wdl": ["model.name=wdl", *CTR],
    "wdl_seq": ["model.name=wdl_seq", *CTR],
    "din": ["model.name=din", *CTR, "ctr.attention_mlp=16,8", "ctr.activation=dice"],
    "bst": ["model.name=bst", *CTR, "model.num_heads=2"],
}


class _Recorded(Exception):
    """Raised by the patched loop once it has taken STEPS steps: the run's work is done."""

    def __init__(self, losses):
        super().__init__("recorded")
        self.losses = losses


def _capturing_fit(*args, **kwargs):
    """Stands in for the loop: runs STEPS of the task's compiled step from its initial state, keeps the losses."""
    import jax

    state, train_step, batches = _fit_inputs(args, kwargs)
    losses = []
    for _ in range(STEPS):
        state, metrics = train_step(state, next(batches))
        losses.append(metrics["loss"])
    raise _Recorded([float(x) for x in jax.device_get(losses)])


def _fit_inputs(args, kwargs):
    """(state, train_step, batches) from the arguments of `loop.fit`."""
    names = ("cfg", "workdir", "checkpoints", "state", "record", "train_step", "batches")
    bound = dict(zip(names, args)) | kwargs
    return bound["state"], bound["train_step"], bound["batches"]


def _patch_loop():
    """Points the engine's `fit` at `_capturing_fit`; returns the entry point train.py uses."""
    from jaxrec import experiment
    from jaxrec.engine import train

    train.fit = _capturing_fit
    return experiment.run


def record_here(mesh_name: str) -> dict[str, list[float]]:
    """Trajectories of every model on `mesh_name`, in this process (its devices already set)."""
    from jaxrec import config as config_lib

    run = _patch_loop()
    data, model = MESHES[mesh_name]
    out = {}
    for name, sets in MODELS.items():
        cfg = config_lib.apply_overrides(
            config_lib.Config(), SYNTHETIC + sets + [f"mesh.data={data}", f"mesh.model={model}"]
        )
        with tempfile.TemporaryDirectory() as workdir:
            try:
                run(cfg, Path(workdir) / "run")
            except _Recorded as done:
                out[name] = done.losses
            else:
                raise RuntimeError(f"{name}: the loop was not reached")
        print(f"{mesh_name} {name}: {out[name][0]:.6f} -> {out[name][-1]:.6f}", file=sys.stderr, flush=True)
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def record_all() -> dict:
    """Runs each mesh in a subprocess with that many host devices; returns the whole record."""
    result = {"steps": STEPS, "cpu": _cpu_model(), "models": MODELS, "trajectories": {}}
    for mesh_name, (data, model) in MESHES.items():
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={data * model}"
        env.pop("JAXREC_NUM_DEVICES", None)
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.trajectories", "--mesh", mesh_name],
            env=env,
            capture_output=True,
            text=True,
        )
        sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
        if proc.returncode:
            raise SystemExit(f"mesh {mesh_name}: exit {proc.returncode}")
        result["trajectories"][mesh_name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def compare(recorded: dict, new: dict, rtol: float) -> list[str]:
    """Lines naming every step whose loss moved by more than rtol relative (empty: all equal)."""
    problems = []
    for mesh_name, models in recorded["trajectories"].items():
        for name, losses in models.items():
            got = new["trajectories"].get(mesh_name, {}).get(name)
            if got is None:
                problems.append(f"{mesh_name} {name}: not recorded now")
                continue
            for step, (old, now) in enumerate(zip(losses, got), start=1):
                if abs(now - old) > rtol * abs(old):
                    problems.append(f"{mesh_name} {name} step {step}: {now!r} != {old!r} (recorded)")
                    break
    return problems


def largest_difference(recorded: dict, new: dict) -> float:
    """max over every recorded step of |new - recorded| / |recorded|."""
    return max(
        (
            abs(now - old) / abs(old)
            for mesh_name, models in recorded["trajectories"].items()
            for name, losses in models.items()
            for old, now in zip(losses, new["trajectories"].get(mesh_name, {}).get(name, []))
        ),
        default=float("nan"),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the record to this JSON file")
    parser.add_argument("--check", help="compare with this recorded JSON file")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--mesh", choices=list(MESHES), help=argparse.SUPPRESS)  # internal: one mesh, to stdout
    args = parser.parse_args(argv)
    if args.mesh:
        print(json.dumps(record_here(args.mesh)))
        return 0
    result = record_all()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.check:
        recorded = json.loads(Path(args.check).read_text())
        if recorded["cpu"] != result["cpu"]:
            print(f"note: recorded on {recorded['cpu']}, checked on {result['cpu']}", file=sys.stderr)
        problems = compare(recorded, result, args.rtol)
        for line in problems:
            print(line)
        count = sum(len(m) for m in recorded["trajectories"].values())
        print(f"{count - len(problems)} of {count} trajectories equal within {args.rtol:g} relative")
        print(f"largest relative difference of any step: {largest_difference(recorded, result):.3g}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
