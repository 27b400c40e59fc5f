"""Two-tower retrieval: objective batches, the train step's pieces, and the loop (train, resume, metrics)."""

import json

import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.config import Config, DataConfig, EvalConfig, RetrievalConfig, TrainConfig, model_config
from jaxrec.data.events import load_events, synthetic_events
from jaxrec.tasks.retrieval import task as retrieval_task
from jaxrec.tasks.retrieval import temporal
from jaxrec.tasks.retrieval.batches import RetrievalBatches
from tests.conftest import replace

OBJECTIVES = ("next", "dense_next", "all_action", "dense_all_action")


@pytest.fixture(scope="module")
def events():
    return synthetic_events(60, 50, 30, seed=3)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_batches_never_reach_past_the_training_events(events, objective):
    train_length = np.array([max(len(s) - 5, 0) for s in events.items])  # the last 5 events are held out
    length, window = 12, 4
    plan = RetrievalBatches(events, train_length, objective, max_len=length, batch_size=16, seed=0, window=window)
    for step in range(plan.steps_per_epoch):
        users, anchors, _, positions, positives = plan.rows(step)
        history = plan(step)["item_ids_BxL"]
        for b, (u, a) in enumerate(zip(users, anchors, strict=True)):
            if a == 0:
                continue  # a padding row
            seq = events.items[u][: train_length[u]]
            np.testing.assert_array_equal(history[b][history[b] > 0], seq[max(0, a - length) : a])
            assert positives[b].any()
            for pos, item in zip(positions[b], positives[b], strict=True):
                if item == 0:
                    continue
                event = a - length + pos  # the input event at that position
                assert event >= 0, "an example sits on a padding position"
                if objective in ("next", "dense_next"):
                    assert item == seq[event + 1]
                else:
                    assert item in seq[event + 1 : event + 1 + window], (objective, b, pos, item)
                if objective in ("next", "all_action"):
                    assert pos == length - 1


def test_batches_are_a_function_of_the_step(events):
    lengths = np.array([len(s) for s in events.items])
    plan = RetrievalBatches(events, lengths, "dense_all_action", max_len=12, batch_size=16, seed=0)
    again = RetrievalBatches(events, lengths, "dense_all_action", max_len=12, batch_size=16, seed=0)
    for key, value in plan(5).items():
        np.testing.assert_array_equal(value, again(5)[key])
    assert not np.array_equal(plan(5)["positives_BxP"], plan(6)["positives_BxP"])


def _config(**retrieval) -> Config:
    return Config(
        data=DataConfig(name="synthetic", synthetic_users=300, synthetic_items=150, synthetic_mean_length=30),
        model=model_config(
            "pinnerformer",
            max_len=16,
            hidden=16,
            num_blocks=1,
            num_heads=1,
            dropout=0.0,
            event_features=("action", "surface", "duration", "time", "gap", "age"),
        ),
        train=TrainConfig(num_epochs=3, batch_size=64, learning_rate=0.01),
        eval=EvalConfig(every_epochs=1, select_metric="valid/recall@10"),
        retrieval=RetrievalConfig(num_sampled=64, ks=(10, 50), **retrieval),
    )


def _popularity_metrics(cfg: Config) -> dict[str, float]:
    """The most-popular ranking (counts of the events before the test cut-off) under the trainer's test protocol:
    the same points, positives and exclusion of each user's seen items (temporal.evaluate, one-dimensional towers)."""
    events = load_events(cfg.data)
    split = temporal.temporal_split(events, cfg.retrieval.test_fraction, cfg.retrieval.unseen_users_only)
    counts_I = np.bincount(np.concatenate(split.train.items), minlength=events.num_items + 1)
    r = cfg.retrieval
    eval_cfg = temporal.TemporalEvalConfig(r.eval_mode, r.eval_window_unit, r.eval_window, ks=r.ks)
    every_user = lambda batch: np.ones((len(batch["item_ids_BxL"]), 1), np.float32)  # noqa: E731
    return temporal.evaluate(every_user, counts_I[:, None].astype(np.float32), split, eval_cfg, cfg.model.max_len)


def test_training_beats_popularity_and_reports_the_temporal_metrics(tmp_path):
    """The synthetic walk follows an item's successors 70% of the time: scored on the next event, a user tower
    that learnt it beats the most popular unseen items by far (about 0.65 against 0.36 recall@10 at train seeds
    0, 1, 2; the time features slow that learning down past this budget, so they are left out here)."""
    cfg = replace(
        _config(objective="dense_next", eval_window=1.0),
        model=dict(hidden=32, event_features=("action", "surface", "duration")),
        train=dict(num_epochs=12, batch_size=16),
        eval=dict(every_epochs=4),
    )
    metrics = experiment.run(cfg, tmp_path / "run")
    popularity = _popularity_metrics(cfg)
    assert metrics["test/points"] == popularity["points"]
    assert metrics["test/recall@10"] > popularity["recall@10"] + 0.15, (metrics, popularity)
    assert 0.0 < metrics["test/p90_coverage@10"] <= 1.0 and metrics["test/entropy@50"] > 0.0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [4, 8, 12] and all("valid/recall@10" in line for line in lines)
    # The best checkpoint, evaluated again: the same figures "once", more points "realtime".
    again = retrieval_task.evaluate_checkpoint(tmp_path / "run")
    assert again["test/recall@10"] == pytest.approx(metrics["test/recall@10"], rel=1e-6)  # float64 sums
    realtime = retrieval_task.evaluate_checkpoint(tmp_path / "run", ["retrieval.eval_mode=realtime"])
    assert realtime["test/points"] > metrics["test/points"] and 0.0 < realtime["test/recall@10"] <= 1.0


@pytest.mark.slow  # the shared loop's resume is tested fast in test_trainer; this is the retrieval state (sketch) too
def test_interrupted_retrieval_run_resumes_to_the_same_result(tmp_path):
    # The streaming estimator's state is in the checkpoint: a resumed run sees the same Q.
    cfg = replace(_config(frequency="youtube"), train=dict(num_epochs=2))
    straight = experiment.run(cfg, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, tmp_path / "resumed", interrupt_after_epoch=1)
    resumed = experiment.run(cfg, tmp_path / "resumed", resume=True)
    for key in straight:
        if "seconds" not in key:
            assert resumed[key] == straight[key], key


@pytest.mark.parametrize(
    "negatives",
    # One sampler in the default run; the others (the same code path with another sampler) in the slow set.
    ["in_batch", pytest.param("uniform", marks=pytest.mark.slow), pytest.param("popularity", marks=pytest.mark.slow)],
)
def test_every_sampler_and_objective_trains(tmp_path, negatives):
    objective = {"in_batch": "next", "uniform": "dense_next", "popularity": "all_action"}[negatives]
    cfg = replace(
        _config(negatives=negatives, objective=objective, frequency="exact", logq=negatives != "uniform"),
        train=dict(num_epochs=2),
    )
    metrics = experiment.run(cfg, tmp_path / negatives)
    assert np.isfinite(metrics["test/recall@10"]) and metrics["test/points"] > 0
    # It learns: the second epoch's mean loss is well below the first's (about 0.7 of it for each sampler).
    lines = [json.loads(line) for line in (tmp_path / negatives / "metrics.jsonl").read_text().splitlines()]
    first, second = (line["train/loss"] for line in lines)
    assert second < 0.85 * first, (first, second)
