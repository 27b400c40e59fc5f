"""--resume under the settings real runs use: an interrupted run, resumed, ends where an uninterrupted one does.

test_trainer's resume test trains on one device, one length bucket and whole batches. Here the
leave-one-out trainer runs with the production config's train settings (configs/sasrec_ml1m.py:
automatic length buckets, micro-batches, the per-epoch loss normaliser) on one device and on a
data = 2 mesh, and the CTR trainer resumes each of its rankers. "Equal" is bit-identical: a resumed
run replays the same data order, random streams and compiled programs, so its metrics, its
metrics.jsonl and the parameters and optimizer state in its checkpoints match to the last bit.
"""

import dataclasses
import inspect
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from jaxrec import experiment
from jaxrec.config import Config, CTRConfig, EvalConfig, TrainConfig, model_config
from jaxrec.data import load_dataset
from jaxrec.engine import train as engine_train
from jaxrec.tasks.next_item.batches import TrainBatches, parse_buckets
from jaxrec.tasks.next_item.split import leave_one_out
from tests.conftest import REPO, replace
from tests.tasks.test_ctr import SYNTHETIC


def _checkpointed_state(workdir: Path, which: str):
    """The train state saved in checkpoints/<which> (its newest step), as host arrays by path."""
    manager = ocp.CheckpointManager(Path(workdir).resolve() / "checkpoints" / which)
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    leaves = jax.tree_util.tree_leaves_with_path(restored["state"])
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def _log(workdir: Path) -> list[dict]:
    return [_without_seconds(json.loads(x)) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_resume_matches(cfg: Config, tmp_path: Path, interrupt_after: int) -> dict:
    """Runs `cfg` straight through, and interrupted after epoch `interrupt_after` then resumed; both end equal."""
    straight = experiment.run(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, tmp_path / "resumed", interrupt_after_epoch=interrupt_after)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = experiment.run(cfg, tmp_path / "resumed", resume=True)
    assert _without_seconds(resumed) == _without_seconds(straight)
    assert _log(tmp_path / "resumed") == _log(tmp_path / "straight")
    for which in ("latest", "best"):
        a, b = _checkpointed_state(tmp_path / "resumed", which), _checkpointed_state(tmp_path / "straight", which)
        assert a.keys() == b.keys()
        for path in b:
            np.testing.assert_array_equal(a[path], b[path], err_msg=f"{which} {path}")
    return straight


def _production_config(tiny_config: Config, data: int) -> Config:
    """tiny_config's data and model sizes with configs/sasrec_ml1m.py's train settings (batch halved)."""
    production = train.load_config(str(REPO / "configs" / "sasrec_ml1m.py")).train
    return replace(
        tiny_config,
        model=dict(max_len=16, hidden=8, num_blocks=1),  # max_len 16: auto buckets (8, 16)
        train=dict(
            num_epochs=3,
            batch_size=64,
            micro_batch=production.micro_batch,
            loss_normalizer=production.loss_normalizer,
            length_buckets=production.length_buckets,
        ),
        eval=dict(every_epochs=2),  # validation at epochs 2 and 3
        mesh=dict(data=data),
    )


def test_production_settings_are_what_this_file_resumes(tiny_config):
    """Guards the other tests' premise: several buckets in use, several micro-batches, the epoch normaliser."""
    cfg = _production_config(tiny_config, data=1)
    assert (cfg.train.length_buckets, cfg.train.loss_normalizer) == ("auto", "epoch")
    assert 1 < cfg.train.batch_size // cfg.train.micro_batch
    split = leave_one_out(load_dataset(cfg.data))
    buckets = parse_buckets(cfg.train.length_buckets, cfg.model.max_len)
    plan = TrainBatches(split.train, split.num_items, cfg.model.max_len, cfg.train.batch_size, buckets, 0)
    assert buckets == (8, 16) and set(np.unique(plan.user_bucket)) == {0, 1}  # both buckets hold users


@pytest.fixture
def best_at_epoch_2(monkeypatch):
    """Validation's selection metric scripted by epoch (2: 0.6, 3: 0.4): the best checkpoint is epoch 2's,
    not the last, so a resumed run must carry the record's best value and its best checkpoint over."""
    real_fit = engine_train.fit

    def fit(*args, **kwargs):
        bound = inspect.signature(real_fit).bind(*args, **kwargs)
        evaluate, select, steps_per_epoch = (bound.arguments[k] for k in ("evaluate", "select", "steps_per_epoch"))

        def scripted(state, which):
            metrics = evaluate(state, which)
            if which == "valid":
                metrics[select] = {2: 0.6, 3: 0.4}[int(state.step) // steps_per_epoch]
            return metrics

        bound.arguments["evaluate"] = scripted
        return real_fit(*bound.args, **bound.kwargs)

    monkeypatch.setattr(engine_train, "fit", fit)


# One device: interrupted after epoch 1, before any validation (no best checkpoint yet, the record
# carries no best value). data = 2: after epoch 2, a validation epoch (both checkpoints written).
@pytest.mark.parametrize("data, interrupt_after", [(1, 1), (2, 2)])
def test_interrupted_production_run_resumes_to_the_same_result(
    tiny_config, tmp_path, best_at_epoch_2, data, interrupt_after
):
    cfg = _production_config(tiny_config, data)
    straight = _assert_resume_matches(cfg, tmp_path, interrupt_after)
    assert (straight["epochs"], straight["ended_by"], straight["best_epoch"]) == (3, "epochs", 2)
    assert straight[cfg.eval.select_metric] == 0.6  # the final validation is the best (epoch 2) checkpoint's


@pytest.mark.slow  # the other interruption point of each mesh
@pytest.mark.parametrize("data, interrupt_after", [(1, 2), (2, 1)])
def test_interrupted_production_run_resumes_to_the_same_result_other_epoch(
    tiny_config, tmp_path, best_at_epoch_2, data, interrupt_after
):
    _assert_resume_matches(_production_config(tiny_config, data), tmp_path, interrupt_after)


def _ctr_config(name: str) -> Config:
    """A tiny CTR run whose state each ranker fills differently: WDL's L2, DIN's Dice statistics, BST's dropout."""
    ctr = CTRConfig(labels="implicit", num_negatives=2, mlp=(16,), attention_mlp=(8,))
    ctr = {
        "wdl": dataclasses.replace(ctr, l2_reg=0.1),
        "din": dataclasses.replace(ctr, activation="dice"),
        "bst": ctr,
    }[name]
    return Config(
        data=SYNTHETIC,
        model=model_config(name, max_len=8, hidden=8, num_blocks=1, num_heads=1, dropout=0.2),
        train=TrainConfig(num_epochs=3, batch_size=64, learning_rate=5e-3),
        eval=EvalConfig(every_epochs=2, batch_size=256, select_metric="valid/auc"),
        ctr=ctr,
    )


@pytest.mark.parametrize("name", ["wdl", "din", "bst"])
def test_interrupted_ctr_run_resumes_to_the_same_result(tmp_path, name):
    straight = _assert_resume_matches(_ctr_config(name), tmp_path, interrupt_after=1)
    assert straight["epochs"] == 3 and np.isfinite(straight["test/auc"])
    if name == "din":  # Dice's moving averages are part of the state the checkpoint carries
        state = _checkpointed_state(tmp_path / "straight", "latest")
        assert any("batch_stats" in path for path in state), sorted(state)
