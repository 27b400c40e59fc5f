"""The CTR task: AUC/GAUC against brute force, the time split and histories, a tiny training run, the CLI."""

import functools
import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest

import train
from jaxrec import experiment
from jaxrec.config import Config, CTRConfig, DataConfig, EvalConfig, TrainConfig, model_config
from jaxrec.data.datasets import default_data_dir
from jaxrec.ops import auc as ctr_metrics
from jaxrec.tasks.ctr.data import build_ctr_data
from tests.conftest import REPO

SYNTHETIC = DataConfig(name="synthetic", synthetic_users=200, synthetic_items=80, synthetic_mean_length=15)


def _brute_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)]
    return float(np.mean(wins))


def test_auc_gauc_and_logloss_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        labels = rng.integers(0, 2, n).astype(float)
        scores = rng.integers(0, 4 if trial % 2 else 50, n).astype(float)  # few distinct values: many ties
        users = rng.integers(0, 6, n)
        labels[:2], users[:2] = [0, 1], 0  # both labels occur, and user 0 has both
        assert ctr_metrics.auc(labels, scores) == pytest.approx(_brute_auc(labels, scores), rel=1e-12)  # float64
        total = weight = 0.0
        for u in np.unique(users):
            mine = users == u
            if 0 < labels[mine].sum() < mine.sum():  # one-label users are skipped
                total += mine.sum() * _brute_auc(labels[mine], scores[mine])
                weight += mine.sum()
        assert ctr_metrics.gauc(labels, scores, users) == pytest.approx(total / weight, rel=1e-12)
    logits = rng.normal(size=30) * 5
    labels = rng.integers(0, 2, 30)
    p = 1 / (1 + np.exp(-logits))
    expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert ctr_metrics.log_loss(labels, logits) == pytest.approx(expected, rel=1e-9)
    assert ctr_metrics.auc([1, 0, 1], [0.5, 0.5, 0.5]) == 0.5  # all tied
    assert np.isnan(ctr_metrics.gauc([1, 1, 0, 0], [1, 2, 3, 4], [0, 0, 1, 1]))  # no user with both labels


@functools.cache
def _data(labels: str):
    return build_ctr_data(Config(data=SYNTHETIC, ctr=CTRConfig(labels=labels, num_negatives=2, history_actions=True)))


@pytest.mark.parametrize("labels", ["explicit", "implicit"])
def test_split_is_time_ordered_and_histories_precede_the_example(labels):
    data = _data(labels)
    train_rows, valid_rows, test_rows = (data.splits[s] for s in ("train", "valid", "test"))
    assert len(train_rows) + len(valid_rows) + len(test_rows) == len(data.label_N)
    assert data.time_N[train_rows].max() < data.time_N[valid_rows].min()
    assert data.time_N[valid_rows].max() < data.time_N[test_rows].min()
    assert 0.75 < len(train_rows) / len(data.label_N) < 0.85
    max_len = 6
    rows = np.concatenate([train_rows[:200], valid_rows[:100], test_rows[-100:]])
    batch = data.batch(rows, max_len)
    real = batch["history_BxL"] > 0
    assert np.all(batch["history_time_BxL"][real] < np.repeat(batch["time_B"], max_len).reshape(-1, max_len)[real])
    for b, n in enumerate(rows):  # exactly the user's last max_len events strictly before the example's time
        u = data.user_N[n]
        start, end = data.offsets_U1[u], data.offsets_U1[u + 1]
        before = np.flatnonzero(data.times_E[start:end] < data.time_N[n])[-max_len:] + start
        np.testing.assert_array_equal(batch["history_BxL"][b][real[b]], data.items_E[before])
        # the actions are those of the same events (so never the example's own rating, its label)
        np.testing.assert_array_equal(batch["history_action_BxL"][b][real[b]], data.actions_E[before])
        assert real[b].sum() >= 1  # ctr.min_history = 1
    if labels == "implicit":
        assert data.label_N.mean() == pytest.approx(1 / 3)
        negatives = np.flatnonzero(data.label_N == 0)[:300]
        for n in negatives:  # sampled negatives are items the user never interacted with
            u = data.user_N[n]
            assert data.candidate_N[n] not in data.items_E[data.offsets_U1[u] : data.offsets_U1[u + 1]]
    else:
        assert 0.2 < data.label_N.mean() < 0.8 and set(np.unique(data.label_N)) == {0.0, 1.0}
    assert batch["user_BxF"].shape == (len(rows), 3) and batch["user_BxF"].min() >= 1
    assert np.all(batch["history_action_BxL"][~real] == 0) and batch["history_action_BxL"][real].min() >= 1
    assert batch["history_action_BxL"].max() < data.action_vocab
    without = build_ctr_data(Config(data=SYNTHETIC, ctr=CTRConfig(labels=labels, num_negatives=2)))
    assert "history_action_BxL" not in without.batch(rows, max_len)  # ctr.history_actions=false: no gather


@pytest.mark.realdata
def test_ml1m_explicit_labels_are_ratings_of_four_or_more_with_users_dat_features():
    data_dir = default_data_dir("")
    if data_dir is None or not (Path(data_dir) / "ml-1m" / "users.dat").exists():
        pytest.skip("ML-1M partial ratings and users.dat not available")
    data = build_ctr_data(Config(data=DataConfig(name="ml-1m-partial")))
    assert data.user_vocab == 1 + 2 + 7 + 21 and data.num_categories == 18
    assert data.user_fields_UxF.min() >= 1  # every user of ratings.dat is in users.dat
    assert 0.5 < data.label_N.mean() < 0.65  # ML-1M: ~57% of ratings are 4 or 5


def test_tiny_training_run_beats_chance_and_writes_the_contract(tmp_path):
    cfg = Config(
        data=SYNTHETIC,
        model=model_config("wdl_seq", max_len=8, hidden=8, num_blocks=1, num_heads=1, dropout=0.0),
        train=TrainConfig(num_epochs=2, batch_size=64, learning_rate=5e-3, adam_b2=0.999),
        eval=EvalConfig(every_epochs=1, batch_size=256, select_metric="valid/auc"),
        ctr=CTRConfig(labels="implicit", num_negatives=2, mlp=(16,), l2_reg=0.1, history_actions=True),
    )
    final = experiment.run(cfg, tmp_path)
    assert final["test/auc"] > 0.65 and final["valid/auc"] > 0.65  # popularity and genres carry signal
    assert 0.5 < final["test/gauc"] <= 1.0 and 0.0 < final["test/logloss"] < 0.69
    assert final["train/seconds"] > 0 and final["best_epoch"] in (1, 2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "valid/gauc" in records[0]
    assert json.loads((tmp_path / "metrics.json").read_text())["test/auc"] == final["test/auc"]
    assert (tmp_path / "checkpoints" / "best").is_dir() and (tmp_path / "checkpoints" / "latest").is_dir()


def test_cli_rejects_bad_ctr_settings_with_one_error_line(tmp_path, capsys):
    args = ["--config", str(REPO / "configs" / "din_ml1m.py"), "--workdir", str(tmp_path / "run")]
    assert train.main(args + ["--set", "data.name=synthetic", "--set", "ctr.activation=gelu"]) == 2
    assert "ctr.activation must be one of" in capsys.readouterr().err
    assert train.main(args + ["--set", "eval.select_metric=valid/ndcg@10_full"]) == 2
    assert "valid/auc" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow  # train.py subprocess; DIN itself is tested in test_rankers
def test_benchmark_smoke_trains_din_through_train_py(tmp_path):
    from benchmarks import ctr_table

    # A committed row this call does not run keeps its entry, in the table's row order.
    committed = {"row": "wdl", "seeds": [0], "runs": []} | {
        figure: {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5} for figure in ctr_table.FIGURES
    }
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.json").write_text(json.dumps([committed]))
    results = ctr_table.main(
        [
            "--smoke",
            "--rows",
            "din_feedback",
            "--seeds",
            "0",
            "--runs",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert [r["row"] for r in results] == ["din_feedback"]
    assert 0.0 <= results[0]["test_auc"]["mean"] <= 1.0 and results[0]["train_seconds"]["mean"] > 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| din_feedback |" in table and "| wdl | 1 | 0.5000 +- 0.0000" in table
    written = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [r["row"] for r in written] == ["wdl", "din_feedback"] and written[0] == committed
    metrics = json.loads((tmp_path / "runs" / "din_feedback" / "seed0" / "metrics.json").read_text())
    assert {"test/auc", "test/gauc", "test/logloss", "train/seconds"} <= set(metrics)
    config = json.loads((tmp_path / "runs" / "din_feedback" / "seed0" / "config.json").read_text())
    assert config["model"]["name"] == "din" and config["data"]["name"] == "synthetic"
    assert config["ctr"]["history_actions"] is True
