"""Train and evaluate a jaxrec model.

python train.py --config configs/sasrec_ml1m.py --workdir runs/sasrec [--set train.num_epochs=10] [--resume]

Several hosts (one process each, JAX's multi-controller runtime): run the same command on every host with
  --coordinator HOST0:PORT --num-processes N --process-id I
(on TPU pods and SLURM clusters jax.distributed finds these itself: pass --distributed alone).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path


def load_config(path: str):
    from jaxrec.config import Config, ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"jaxrec_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: get_config() must return jaxrec.config.Config, got {type(cfg).__name__}")
    return cfg


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """jax.distributed.initialize, before anything touches a device; CPU processes talk through gloo."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:  # TPU pods, SLURM, Kubernetes: the cluster tells jax
        jax.distributed.initialize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment file with get_config()")
    parser.add_argument("--workdir", required=True, help="output folder (config, metrics, checkpoints)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --workdir from its latest checkpoint"
    )
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
    parser.add_argument("--coordinator", default="", help="multi-process: address HOST:PORT of process 0")
    parser.add_argument("--num-processes", type=int, default=1, help="multi-process: number of processes")
    parser.add_argument("--process-id", type=int, default=0, help="multi-process: this process's index")
    args = parser.parse_args(argv)

    from jaxrec import config as config_lib
    from jaxrec import experiment
    from jaxrec.data import DataError
    from jaxrec.engine import mesh as mesh_lib
    from jaxrec.engine.run_dir import RunDirError

    try:
        cfg = config_lib.apply_overrides(load_config(args.config), args.set)
        task = experiment.validate(cfg)  # before its mesh settings reach JAX (experiment.run validates again)
    except (config_lib.ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Both must come before anything starts a JAX backend.
    mesh_lib.configure_cpu_devices(cfg, one_device=task.one_cpu_device)
    if args.distributed or args.coordinator or args.num_processes > 1:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    # Logs and files come from process 0; the others only warn.
    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Importing orbax logs through absl, which has already called basicConfig (WARNING, plain format): take
    # that handler over (only a plain StreamHandler: a test's capture handler stays as it is).
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    for noisy in ("absl", "orbax"):  # orbax logs every save at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from jaxrec.engine import run_dir
    from jaxrec.engine.checkpoint import CheckpointError, remove_unfinished_writes
    from jaxrec.engine.loop import Interrupted

    # The trainers write nothing before the inputs pass; should a refusal come later (the first validation
    # finds no user to evaluate), the folders this run created go too, unless they hold a checkpoint.
    created = run_dir.created_folder(Path(args.workdir))
    try:
        metrics = experiment.run(cfg, args.workdir, resume=args.resume)
    except (config_lib.ConfigError, DataError, RunDirError, ValueError) as err:
        run_dir.remove_unused(created)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except experiment.TrainingDiverged as err:  # not bad input: the run's files stay, to be looked at
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:  # a failed write (disk full): the previous checkpoint stays
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # one line, and no half-written checkpoint left behind
        remove_unfinished_writes(Path(args.workdir).resolve() / "checkpoints")
        if not isinstance(err, Interrupted):
            err = "stopped by Ctrl-C; the latest complete checkpoint, if any, is kept: --resume continues from it"
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    if jax.process_index() != 0:
        return 0
    print(
        json.dumps(
            {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in metrics.items()
                if k.startswith("test/") or "seconds" in k or "epoch" in k
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
