"""Two processes on this machine (jax.distributed on localhost, gloo CPU collectives) train on one
(data 2 x model 2) global mesh through train.py, save, resume, and match a single-process run.

Slow (each train.py start compiles a sharded step): `pytest -m slow` runs it, as .ci/run does.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO

ARGS = [
    "--config",
    "configs/sasrec_synthetic.py",
    "--set",
    "train.length_buckets=none",
    "--set",
    "mesh.data=2",
    "--set",
    "mesh.model=2",
    "--set",
    "eval.every_epochs=1",
    "--set",
    "data.synthetic_users=400",
]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env.pop("JAXREC_NUM_DEVICES", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(workdir, epochs: int, resume: bool = False) -> None:
    port = _free_port()
    # Output to files, not pipes: an undrained pipe would block one process inside a collective.
    logs = [(workdir.parent / f"{workdir.name}.{epochs}.{i}.log").open("w") for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *ARGS, "--workdir", str(workdir)]
            + ["--set", f"train.num_epochs={epochs}"]
            + (["--resume"] if resume else [])
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            cwd=REPO,
            env=_env(2),
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    for p, log in zip(procs, logs):
        p.wait(timeout=600)
        log.close()
        assert p.returncode == 0, open(log.name).read()[-3000:]


@pytest.mark.slow
def test_two_processes_save_resume_and_match_one_process(tmp_path):
    _train_two_processes(tmp_path / "multi", epochs=1)
    assert (tmp_path / "multi" / "checkpoints" / "latest").is_dir()
    _train_two_processes(tmp_path / "multi", epochs=2, resume=True)

    single = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *ARGS, "--workdir", str(tmp_path / "single")]
        + ["--set", "train.num_epochs=2"],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert multi["epochs"] == one["epochs"] == 2
    for key, value in one.items():
        if key.startswith(("test/", "valid/")):
            assert multi[key] == pytest.approx(value, rel=1e-5), key  # float64 sums of the same ranks
    # Process 0 wrote one metrics line per epoch, the resumed run appending to the first.
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
