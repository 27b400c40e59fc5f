import json

import numpy as np
import pytest

from jaxrec import trainer
from jaxrec.baselines import popularity_metrics
from jaxrec.data import leave_one_out, load_dataset, sample_eval_negatives
from tests.conftest import replace


def test_short_run_beats_popularity(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=8), eval=dict(every_epochs=4))
    metrics = trainer.run(cfg, tmp_path / "run")
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
    straight = trainer.run(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        trainer.run(cfg, tmp_path / "resumed", interrupt_after_epoch=2)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = trainer.run(cfg, tmp_path / "resumed", resume=True)
    for key in straight:
        if "seconds" not in key:
            assert resumed[key] == straight[key], key
    straight_log = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda d: {k: v for k, v in json.loads(d).items() if "seconds" not in k}  # noqa: E731
    assert [strip(x) for x in straight_log] == [strip(x) for x in resumed_log]


def test_same_seed_same_metrics_other_seed_differs(tiny_config, tmp_path):
    cfg = replace(tiny_config, train=dict(num_epochs=1))
    a = trainer.run(cfg, tmp_path / "a")
    b = trainer.run(cfg, tmp_path / "b")
    c = trainer.run(replace(cfg, train=dict(seed=7)), tmp_path / "c")
    assert a["test/ndcg@10_full"] == b["test/ndcg@10_full"]
    assert a["test/ndcg@10_full"] != c["test/ndcg@10_full"]
    assert np.isfinite(a["train/seconds"])
