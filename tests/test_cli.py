"""The train.py contract: outputs, keys, and one clear error line for every kind of bad input."""

import json
import subprocess
import sys

import pytest

import train
from tests.conftest import REPO

TINY = [
    "data.name=synthetic",
    "data.synthetic_users=400",
    "data.synthetic_items=60",
    "data.synthetic_mean_length=12",
    "model.max_len=16",
    "model.hidden=16",
    "model.num_blocks=1",
    "train.num_epochs=2",
    "train.batch_size=64",
    "train.length_buckets=none",
    "eval.every_epochs=1",
    "eval.num_negatives=20",
]


def _run(tmp_path, *extra, workdir="run", config="configs/sasrec_ml1m.py"):
    args = ["--config", str(REPO / config), "--workdir", str(tmp_path / workdir)]
    for assignment in TINY + list(extra):
        args += ["--set", assignment]
    return train.main(args)


def test_contract_files_and_keys(tmp_path, capsys):
    assert _run(tmp_path) == 0
    workdir = tmp_path / "run"
    resolved = json.loads((workdir / "config.json").read_text())
    assert resolved["train"]["num_epochs"] == 2 and resolved["data"]["name"] == "synthetic"
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "valid/ndcg@10_sampled" in records[0]
    final = json.loads((workdir / "metrics.json").read_text())
    for split in ("valid", "test"):
        for k in (1, 5, 10, 20):
            for protocol in ("sampled", "popsampled", "full"):
                assert 0.0 <= final[f"{split}/ndcg@{k}_{protocol}"] <= final[f"{split}/hr@{k}_{protocol}"] <= 1.0
        assert 0.0 < final[f"{split}/mrr_full"] <= 1.0
    assert final["train/seconds"] > 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test/ndcg@10_full"] == round(final["test/ndcg@10_full"], 4)

    # A second run into the same workdir must not overwrite it...
    before = (workdir / "metrics.json").read_bytes()
    assert _run(tmp_path) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert (workdir / "metrics.json").read_bytes() == before
    # ...nor may a different model resume from its checkpoints.
    code = train.main(
        [
            "--config",
            str(REPO / "configs/sasrec_ml1m.py"),
            "--workdir",
            str(workdir),
            "--resume",
            *sum((["--set", a] for a in TINY + ["model.hidden=32"]), []),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "different model or data" in err and "model.hidden: 16 -> 32" in err
    assert (workdir / "metrics.json").read_bytes() == before


def _write(path, text):
    path.write_text(text)
    return path


MALFORMED = "1 2\n1 3\n1\n"
NON_INTEGER = "1 2\n1 x\n"
TOO_FEW = "user_id,item_id,timestamp\n1,2,3\n2,3,4\n"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: ["data.name=file", f"data.path={d / 'missing.csv'}"], "missing.csv"),
        (lambda d: ["data.name=ml-1m-sasrec", f"data.path={_write(d / 'bad.txt', MALFORMED)}"], "line 3"),
        (lambda d: ["data.name=ml-1m-sasrec", f"data.path={_write(d / 'bad.txt', NON_INTEGER)}"], "'x'"),
        (
            lambda d: ["data.name=file", f"data.path={_write(d / 'f.csv', TOO_FEW)}", "data.min_user_interactions=5"],
            "removed all",
        ),
        (lambda d: ["train.num_epoch=3"], "unknown config key 'train.num_epoch'"),
        (lambda d: ["train.batch_size=big"], "train.batch_size: expected int"),
        (lambda d: ["data.name=netflix"], "netflix"),
        (lambda d: ["model.dropout=2"], "model.dropout"),
        (lambda d: ["mesh.cpu_devices=-2"], "mesh.cpu_devices must be >= 0"),  # caught before JAX sees it
    ],
    ids=[
        "missing-file",
        "malformed-line",
        "non-integer-id",
        "empty-after-filter",
        "unknown-key",
        "bad-type",
        "unknown-dataset",
        "bad-value",
        "bad-cpu-devices",
    ],
)
def test_bad_input_gets_one_clear_line_and_writes_nothing(tmp_path, capsys, setup, message):
    assert _run(tmp_path, *setup(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()  # not even an empty folder


def test_missing_config_file_and_nonzero_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", "configs/nope.py", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "config file configs/nope.py not found" in proc.stderr


@pytest.mark.slow  # moved out of the default run (its ~10-minute budget); .ci/run runs it
def test_killed_process_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a real training process after its first checkpoint, resume it, compare."""
    import os
    import signal
    import time

    settings = [a for a in TINY if not a.startswith(("train.num_epochs", "eval.every_epochs"))]
    settings += ["train.num_epochs=6", "eval.every_epochs=3"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".pytest_cache" / "xla"))

    def command(workdir, resume=False):
        args = [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / "configs/sasrec_ml1m.py"),
            "--workdir",
            str(tmp_path / workdir),
        ]
        args += sum((["--set", a] for a in settings), [])
        return args + (["--resume"] if resume else [])

    proc = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run finished before it could be killed"
    subprocess.run(command("killed", resume=True), check=True, capture_output=True, env=env, timeout=300)
    subprocess.run(command("straight"), check=True, capture_output=True, env=env, timeout=300)
    killed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    for key, value in straight.items():
        if "seconds" not in key:
            assert killed[key] == value, key


def test_resume_allows_compute_only_changes_and_refuses_model_changes(tmp_path):
    from jaxrec import config as config_lib
    from jaxrec.engine.run_dir import RunDirError, check_workdir, write_json

    cfg = config_lib.Config()
    write_json(tmp_path / "config.json", config_lib.to_dict(cfg))
    (tmp_path / "checkpoints" / "latest").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest" / "step").write_text("1")
    compute = config_lib.apply_overrides(cfg, ["model.ce_chunk=1024", "model.attention=xla"])
    check_workdir(tmp_path, compute, resume=True)  # how the loss and attention are computed: may change
    with pytest.raises(RunDirError, match="model.hidden"):
        check_workdir(tmp_path, config_lib.apply_overrides(cfg, ["model.hidden=32"]), resume=True)
    with pytest.raises(RunDirError, match="already holds a run"):
        check_workdir(tmp_path, compute, resume=False)
