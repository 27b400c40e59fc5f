"""The --workdir contract: a refused run leaves nothing behind, and a resumed run changes only what it may,
on record (config_history.jsonl)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import train
from jaxrec import config as config_lib
from jaxrec.engine import run_dir
from jaxrec.engine.run_dir import RunDirError, check_workdir, write_config
from tests.conftest import REPO
from tests.test_cli import TINY as TINY_RUN

SMALL_SYNTHETIC = [
    "data.name=synthetic",
    "data.synthetic_users=200",
    "data.synthetic_items=50",
    "data.synthetic_mean_length=10",
]
# One config per trainer, small enough to reach the compiled step in seconds.
TRAINERS = {
    "next_item": ("configs/sasrec_synthetic.py", SMALL_SYNTHETIC + ["model.max_len=16", "model.hidden=16"]),
    "retrieval": ("configs/pinnerformer_ml1m.py", SMALL_SYNTHETIC + ["model.max_len=16", "model.hidden=16"]),
    "ctr": ("configs/bst_ml1m.py", SMALL_SYNTHETIC + ["train.batch_size=64", "eval.batch_size=64", "ctr.mlp=16"]),
}
CLICKS_WITHOUT_RATING = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{(u * 7 + k) % 40 + 1},{1_000_000_000 + 3600 * (u + 24 * k)}\n" for u in range(1, 121) for k in range(12)
)


def _train_subprocess(tmp_path, config, settings, workdir):
    args = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / config), "--workdir", str(workdir)]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".pytest_cache" / "xla"))
    return subprocess.run(
        args + sum((["--set", s] for s in settings), []), capture_output=True, text=True, cwd=tmp_path, env=env
    )


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
@pytest.mark.parametrize("kind", ["data", "workdir", "late_config"])
def test_refused_run_leaves_no_folder_and_no_file(tmp_path, trainer, kind):
    """Bad data, an unusable --workdir, and a config the model refuses only when it is built or compiled:
    one error line, exit 2, and the folder around the workdir holds what it held before."""
    config, settings = TRAINERS[trainer]
    (tmp_path / "a_file").write_text("not a folder\n")
    workdir = tmp_path / "out" / "run"  # its parent does not exist either: neither may be created
    if kind == "data":
        settings, message = settings + ["data.name=file", f"data.path={tmp_path / 'missing.csv'}"], "missing.csv"
    elif kind == "workdir":
        workdir, message = tmp_path / "a_file" / "run", "a_file is a file"
    elif trainer == "retrieval":  # the synthetic data has 4 action types: 5 embedding rows
        settings, message = settings + ["model.num_actions=3"], "model.num_actions=3"
    else:  # xla attention has no attention-weight dropout: refused when the step is traced
        settings, message = settings + ["model.attention=xla"], "xla attention"
    before = _files(tmp_path)
    proc = _train_subprocess(tmp_path, config, settings, workdir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message in errors[0], errors[0]
    assert _files(tmp_path) == before


def test_event_feature_the_data_lacks_is_one_error_before_anything_is_written(tmp_path):
    """The reported case: PinnerFormer's config (the rating as action type) on a CSV of clicks."""
    (tmp_path / "clicks.csv").write_text(CLICKS_WITHOUT_RATING)
    config, settings = TRAINERS["retrieval"]
    settings = settings + ["data.name=file", "data.path=clicks.csv"]
    proc = _train_subprocess(tmp_path, config, settings, tmp_path / "run")
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and error.startswith("error: "), proc.stderr[-3000:]
    assert "model.event_features" in error and "'action'" in error and "'rating' column" in error, error
    assert "model.event_features=time,gap,age" in error, error  # what to pass instead
    assert _files(tmp_path) == ["clicks.csv"]


def test_event_features_found_and_used_are_logged_and_overflowing_ids_refused(caplog):
    from jaxrec.data.events import load_events
    from jaxrec.tasks.retrieval.task import check_event_features

    sets = SMALL_SYNTHETIC + ["model.name=pinnerformer", "model.event_features=action,time"]
    cfg = config_lib.apply_overrides(config_lib.Config(), sets)
    events = load_events(cfg.data)
    with caplog.at_level("INFO", logger="jaxrec"):
        check_event_features(events, cfg)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event features")]
    assert "has action (column 'action'), surface (column 'surface'), duration" in line, line
    assert line.endswith("the model uses action, time (model.event_features)"), line
    without_surface = dataclasses.replace(events, surface=None, surface_names=())
    wants_surface = config_lib.apply_overrides(cfg, ["model.event_features=surface,time"])
    with pytest.raises(ValueError, match="model.event_features has 'surface'"):
        check_event_features(without_surface, wants_surface)
    with pytest.raises(config_lib.ConfigError, match="model.num_actions=4 is too small for the 4 action values"):
        check_event_features(events, config_lib.apply_overrides(cfg, ["model.num_actions=4"]))
    with pytest.raises(config_lib.ConfigError, match="model.event_features: unknown"):
        check_event_features(events, config_lib.apply_overrides(cfg, ["model.event_features=action,weather"]))


def test_remove_unused_keeps_a_folder_with_checkpoints(tmp_path):
    (tmp_path / "new" / "run" / "checkpoints" / "latest").mkdir(parents=True)
    (tmp_path / "new" / "run" / "config.json").write_text("{}")
    assert run_dir.created_folder(tmp_path / "new" / "run" / "x") == tmp_path / "new" / "run" / "x"
    assert run_dir.created_folder(tmp_path / "other" / "run") == tmp_path / "other"
    (tmp_path / "new" / "run" / "checkpoints" / "latest" / "7").mkdir()
    (tmp_path / "new" / "run" / "checkpoints" / "latest" / "7" / "state").write_text("")
    run_dir.remove_unused(tmp_path / "new")
    assert (tmp_path / "new" / "run" / "checkpoints" / "latest" / "7" / "state").exists()
    (tmp_path / "new" / "run" / "checkpoints" / "latest" / "7" / "state").unlink()
    run_dir.remove_unused(tmp_path / "new")  # config.json and empty folders only: a refused run's
    assert not (tmp_path / "new").exists()


# Every train.* field, and whether a resumed run may change it (README: command line, --resume).
TRAIN_ON_RESUME = {
    "num_epochs": "allowed",  # extends (or shortens) the run
    "max_train_seconds": "allowed",  # benchmarks/reproduce.py resumes rows with a longer cap
    "patience_epochs": "allowed",
    "log_every": "allowed",  # progress lines only
    "batch_size": "refused",
    "learning_rate": "refused",
    "adam_b1": "refused",
    "adam_b2": "refused",
    "weight_decay": "refused",
    "seed": "refused",  # data order, dropout, negatives
    "micro_batch": "refused",  # each micro-batch draws its own dropout: not the same update
    "loss_normalizer": "refused",
    "length_buckets": "refused",  # which users share a batch, and the steps of an epoch
}


def _changed(cfg, key):
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    new = {bool: lambda v: not v, int: lambda v: v + 2, float: lambda v: v + 0.5, str: lambda v: v + "x"}
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: new[type(value)](value)})}
    )


def _workdir_with_checkpoint(tmp_path, cfg, step=21):
    run_dir.write_json(tmp_path / "config.json", config_lib.to_dict(cfg))
    (tmp_path / "checkpoints" / "latest" / str(step)).mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest" / f"{step + 7}.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save
    return tmp_path


def test_every_train_field_has_a_decision_on_resume():
    assert set(TRAIN_ON_RESUME) == {f.name for f in dataclasses.fields(config_lib.TrainConfig)}


@pytest.mark.parametrize("name", sorted(TRAIN_ON_RESUME))
def test_resume_refuses_changes_to_what_is_trained_and_records_the_rest(tmp_path, name):
    cfg = config_lib.Config()
    workdir = _workdir_with_checkpoint(tmp_path, cfg)
    changed = _changed(cfg, f"train.{name}")
    old, new = getattr(cfg.train, name), getattr(changed.train, name)
    if TRAIN_ON_RESUME[name] == "refused":
        with pytest.raises(RunDirError, match="new --workdir") as info:
            check_workdir(workdir, changed, resume=True)
        assert f"train.{name}: {old!r} -> {new!r}" in str(info.value)
    else:
        assert check_workdir(workdir, changed, resume=True) == {"step": 21, "changes": {f"train.{name}": [old, new]}}


def test_eval_mesh_and_compute_only_keys_are_recorded_model_keys_refused(tmp_path):
    cfg = config_lib.Config()
    workdir = _workdir_with_checkpoint(tmp_path, cfg)
    allowed = config_lib.apply_overrides(
        cfg, ["eval.every_epochs=5", "eval.ks=1,10", "mesh.model=2", "model.ce_chunk=1024", "train.num_epochs=300"]
    )
    assert check_workdir(workdir, allowed, resume=True) == {
        "step": 21,
        "changes": {
            "eval.every_epochs": [20, 5],
            "eval.ks": [(1, 5, 10, 20), (1, 10)],
            "mesh.model": [1, 2],
            "model.ce_chunk": [4096, 1024],
            "train.num_epochs": [200, 300],
        },
    }
    assert check_workdir(workdir, cfg, resume=True) is None  # nothing changed: nothing to record
    other_metric = config_lib.apply_overrides(cfg, ["eval.select_metric=valid/hr@10_full"])
    with pytest.raises(RunDirError, match="eval.select_metric: 'valid/ndcg@10_full' -> 'valid/hr@10_full'"):
        check_workdir(workdir, other_metric, resume=True)  # the best so far is in the old metric
    both = config_lib.apply_overrides(allowed, ["model.hidden=32", "train.seed=1"])
    with pytest.raises(RunDirError, match="different model or data.*model.hidden: 50 -> 32; train.seed: 42 -> 1"):
        check_workdir(workdir, both, resume=True)


def test_write_config_appends_the_change_before_replacing_config_json(tmp_path, caplog):
    cfg = config_lib.Config()
    workdir = _workdir_with_checkpoint(tmp_path, cfg)
    longer = config_lib.apply_overrides(cfg, ["train.num_epochs=300"])
    with caplog.at_level("INFO", logger="jaxrec"):
        write_config(workdir, longer, check_workdir(workdir, longer, resume=True))
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"step": 21, "changes": {"train.num_epochs": [200, 300]}}]
    assert json.loads((workdir / "config.json").read_text())["train"]["num_epochs"] == 300
    assert "train.num_epochs 200 -> 300" in caplog.text


# test_cli's tiny run, one epoch long
TINY = [a for a in TINY_RUN if not a.startswith("train.num_epochs")] + ["train.num_epochs=1"]


def _main(workdir, *extra, resume=True):
    args = ["--config", str(REPO / "configs/sasrec_ml1m.py"), "--workdir", str(workdir)]
    args += sum((["--set", a] for a in TINY + list(extra)), [])
    return train.main(args + (["--resume"] if resume else []))


def test_resume_through_train_py_records_a_longer_run_and_refuses_a_new_learning_rate(tmp_path, capsys, caplog):
    workdir = tmp_path / "run"
    assert _main(workdir, resume=False) == 0
    step = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    config = (workdir / "config.json").read_bytes()
    capsys.readouterr()

    # What the first epoch was trained with may not change under it...
    assert _main(workdir, "train.learning_rate=0.01", "train.num_epochs=2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "train.learning_rate: 0.001 -> 0.01" in err and "new --workdir" in err, err
    assert (workdir / "config.json").read_bytes() == config
    assert not (workdir / "config_history.jsonl").exists()

    # ...how long it runs may, as benchmarks/reproduce.py does with a longer cap; on record.
    with caplog.at_level("INFO", logger="jaxrec"):
        assert _main(workdir, "train.num_epochs=2", "train.max_train_seconds=600") == 0
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"step": step, "changes": {"train.max_train_seconds": [0.0, 600.0], "train.num_epochs": [1, 2]}}]
    assert "train.num_epochs 1 -> 2" in caplog.text
    resolved = json.loads((workdir / "config.json").read_text())
    assert resolved["train"]["num_epochs"] == 2 and resolved["train"]["max_train_seconds"] == 600.0
    assert json.loads((workdir / "metrics.json").read_text())["epochs"] == 2
