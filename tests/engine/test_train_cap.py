"""train.max_train_seconds: training stops at the end of the epoch that reaches the cap, validates there,
says `ended_by: cap`, and tests the best checkpoint. (ended_by "epochs" and "patience": test_trainer.)"""

import inspect
import json
import types

from jaxrec import experiment
from jaxrec.engine import loop
from jaxrec.engine import train as engine_train
from tests.conftest import replace


def _without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def test_tiny_cap_stops_after_the_first_epoch_and_validates_it(tiny_config, tmp_path):
    # every_epochs 5: epoch 1 validates only because the cap ends training there.
    cfg = replace(tiny_config, train=dict(num_epochs=3, max_train_seconds=1e-9), eval=dict(every_epochs=5))
    final = experiment.run(cfg, tmp_path)
    assert (final["epochs"], final["ended_by"], final["best_epoch"]) == (1, "cap", 1)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["ended_by"] == "cap" and written["epochs"] == 1
    (entry,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert entry["epoch"] == 1
    # The final validation is epoch 1's checkpoint (the best, and the only one) evaluated again.
    valid = {k: v for k, v in entry.items() if k.startswith("valid/")}
    assert valid and valid == {k: v for k, v in final.items() if k.startswith("valid/")}
    assert all(k in final for k in ("test/ndcg@10_full", "test/hr@10_sampled"))
    # No cap (0, the default) trains every epoch.
    uncapped = experiment.run(replace(cfg, train=dict(max_train_seconds=0.0)), tmp_path / "uncapped")
    assert (uncapped["epochs"], uncapped["ended_by"]) == (3, "epochs")


def test_cap_reached_later_tests_the_best_checkpoint_not_the_last(tiny_config, tmp_path, monkeypatch):
    """A clock that advances one second per train step; the cap falls in epoch 3 of 5. Validation's
    selection metric is scripted by epoch (best at 2): the test metrics are epoch 2's state's."""
    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    test_by_epoch, epoch_seconds = {}, []
    real_fit = engine_train.fit

    def fit(*args, **kwargs):
        bound = inspect.signature(real_fit).bind(*args, **kwargs)
        train_step, evaluate = bound.arguments["train_step"], bound.arguments["evaluate"]
        select, steps_per_epoch = bound.arguments["select"], bound.arguments["steps_per_epoch"]

        def timed_step(state, batch):
            clock[0] += 1.0
            return train_step(state, batch)

        def scripted(state, which):
            metrics = evaluate(state, which)
            epoch = int(state.step) // steps_per_epoch
            if which == "valid":
                metrics[select] = {1: 0.3, 2: 0.5, 3: 0.4}[epoch]
                test_by_epoch[epoch] = _without_seconds(evaluate(state, "test"))
            return metrics

        bound.arguments.update(train_step=timed_step, evaluate=scripted)
        # The cap: 2.5 epochs of train steps, so epoch 3 (of 5) is the first to reach it.
        bound.arguments["cfg"] = replace(bound.arguments["cfg"], train=dict(max_train_seconds=2.5 * steps_per_epoch))
        epoch_seconds.append(float(steps_per_epoch))
        return real_fit(*bound.args, **bound.kwargs)

    monkeypatch.setattr(engine_train, "fit", fit)
    cfg = replace(tiny_config, train=dict(num_epochs=5), eval=dict(every_epochs=1))
    final = experiment.run(cfg, tmp_path)
    assert (final["epochs"], final["ended_by"], final["best_epoch"]) == (3, "cap", 2)
    assert final["train/seconds"] == 3 * epoch_seconds[0]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert sorted(test_by_epoch) == [1, 2, 3] and test_by_epoch[2] != test_by_epoch[3]
    assert {k: v for k, v in final.items() if k.startswith("test/")} == test_by_epoch[2]
    assert final[cfg.eval.select_metric] == 0.5
