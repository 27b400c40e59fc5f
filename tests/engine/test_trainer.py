import json

import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.data import load_dataset
from jaxrec.tasks.next_item.baselines import popularity_metrics
from jaxrec.tasks.next_item.split import leave_one_out, sample_eval_negatives
from tests.conftest import replace


def test_short_run_beats_popularity(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=8), eval=dict(every_epochs=4))
    metrics = experiment.run(cfg, tmp_path / "run")
    split = leave_one_out(load_dataset(cfg.data))
    baseline = popularity_metrics(
        split, sample_eval_negatives(split, cfg.eval.num_negatives, cfg.data.seed), cfg.eval.ks
    )
    for key in ("test/ndcg@10_full", "test/hr@10_full", "test/ndcg@10_sampled"):
        assert metrics[key] > baseline[key] + 0.05, (key, metrics[key], baseline[key])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [4, 8]


def test_interrupted_run_resumes_to_the_same_result(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=3))
    straight = experiment.run(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, tmp_path / "resumed", interrupt_after_epoch=2)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = experiment.run(cfg, tmp_path / "resumed", resume=True)
    for key in straight:
        if "seconds" not in key:
            assert resumed[key] == straight[key], key
    straight_log = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda d: {k: v for k, v in json.loads(d).items() if "seconds" not in k}  # noqa: E731
    assert [strip(x) for x in straight_log] == [strip(x) for x in resumed_log]


def test_same_seed_same_metrics_other_seed_differs(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=1))
    a = experiment.run(cfg, tmp_path / "a")
    b = experiment.run(cfg, tmp_path / "b")
    c = experiment.run(replace(cfg, train=dict(seed=7)), tmp_path / "c")
    assert a["test/ndcg@10_full"] == b["test/ndcg@10_full"]
    assert a["test/ndcg@10_full"] != c["test/ndcg@10_full"]
    assert np.isfinite(a["train/seconds"])


def test_patience_stops_after_epochs_without_a_better_validation_metric(tiny_config, tmp_path, monkeypatch):
    from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator

    select = tiny_config.eval.select_metric
    scripted = iter([0.30, 0.40, 0.35, 0.39, 0.38])  # validation at epochs 1..5: best 0.40 at epoch 2
    real = LeaveOneOutEvaluator.evaluate

    def evaluate(self, params, which):
        metrics = real(self, params, which)
        if which == "valid":
            metrics[select] = next(scripted, metrics[select])
        return metrics

    monkeypatch.setattr(LeaveOneOutEvaluator, "evaluate", evaluate)
    cfg = replace(tiny_config, train=dict(num_epochs=6, patience_epochs=3), eval=dict(every_epochs=1))
    metrics = experiment.run(cfg, tmp_path / "run")
    # Epochs 3, 4 and 5 do not beat epoch 2: stop after epoch 5 of 6.
    assert metrics["epochs"] == 5 and metrics["best_epoch"] == 2 and metrics["ended_by"] == "patience"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    unlimited = experiment.run(replace(cfg, train=dict(patience_epochs=0)), tmp_path / "all")
    assert unlimited["epochs"] == 6 and unlimited["ended_by"] == "epochs"


def test_validation_sample_validates_on_its_users_and_tests_everyone(tiny_config, tmp_path, monkeypatch):
    # gSASRec's protocol: 100 users validate, the others train on their second-to-last item; all are tested.
    from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator

    evaluators = []
    real_init = LeaveOneOutEvaluator.__init__

    def init(self, split, *args, **kwargs):
        real_init(self, split, *args, **kwargs)
        evaluators.append((self, split))

    monkeypatch.setattr(LeaveOneOutEvaluator, "__init__", init)
    cfg = replace(tiny_config, data=dict(validation_users=100), train=dict(num_epochs=1))
    metrics = experiment.run(cfg, tmp_path / "run")
    assert np.isfinite(metrics["test/ndcg@10_full"]) and np.isfinite(metrics["valid/ndcg@10_full"])
    ((evaluator, split),) = evaluators
    sequences = load_dataset(cfg.data).sequences
    evaluated = lambda which: sum(b["weight_B"].sum() for b in evaluator.batches[which])  # noqa: E731
    assert evaluated("valid") == 100
    assert evaluated("test") == sum(len(s) >= 3 for s in sequences) > 100
    trained_on_valid_item = [u for u, s in enumerate(sequences) if len(s) >= 3 and split.valid_target[u] == 0]
    assert len(trained_on_valid_item) == evaluated("test") - 100
    for u in trained_on_valid_item[:20]:
        np.testing.assert_array_equal(split.train[u], sequences[u][:-1])
