"""The host never leaves more than `dispatch.MAX_IN_FLIGHT` programs unfinished (XLA:CPU deadlocks at 32).

The unit tests count, with stand-in outputs that only a wait can finish, how many dispatched programs each
loop leaves unfinished: before the dispatch window, the training loop left a whole epoch of steps and the
evaluators every batch unfinished, so these tests failed on every run, whatever the machine's speed. The
slow tests run the real thing on two CPU devices in a subprocess (a deadlock aborts the process).
"""

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from jaxrec.engine.dispatch import MAX_IN_FLIGHT, DispatchWindow
from jaxrec.tasks.ctr import task as ctr_task
from tests.conftest import REPO, fit_on_fakes, replace


class Outputs:
    """Stand-in for the outputs of a dispatched program: unfinished until something waits for them."""

    unfinished: set[int] = set()
    most_unfinished = 0

    def __init__(self, index: int):
        self.index = index
        Outputs.unfinished.add(index)
        Outputs.most_unfinished = max(Outputs.most_unfinished, len(Outputs.unfinished))

    def block_until_ready(self):
        Outputs.unfinished.discard(self.index)
        return self

    @classmethod
    def reset(cls):
        cls.unfinished, cls.most_unfinished = set(), 0


class PendingLoss(float, Outputs):
    """A loss that is a float for the loop's arithmetic and an unfinished output until waited for."""

    def __new__(cls, value: float, index: int):
        return float.__new__(cls, value)

    def __init__(self, value: float, index: int):
        Outputs.__init__(self, index)


class PendingRanks(np.ndarray, Outputs):
    def __new__(cls, ranks: np.ndarray, index: int):
        return np.asarray(ranks).view(cls)

    def __init__(self, ranks: np.ndarray, index: int):
        Outputs.__init__(self, index)


def test_window_waits_for_the_oldest_beyond_its_depth():
    Outputs.reset()
    window = DispatchWindow(depth=3)
    for i in range(10):
        window.push(Outputs(i))
        assert len(Outputs.unfinished) <= 3
    assert Outputs.unfinished == {7, 8, 9}  # the newest stay in flight: the host does not wait for them
    window.drain()
    assert not Outputs.unfinished
    with pytest.raises(ValueError, match="depth"):
        DispatchWindow(depth=0)


def test_training_loop_leaves_at_most_max_in_flight_steps_unfinished(tiny_config, tmp_path):
    Outputs.reset()
    cfg = replace(tiny_config, train=dict(num_epochs=2), eval=dict(every_epochs=2))
    steps_per_epoch = 4 * MAX_IN_FLIGHT

    def train_step(state, batch):
        return SimpleNamespace(step=state.step + 1), {"loss": PendingLoss(1.0, state.step)}

    final = fit_on_fakes(cfg, tmp_path, train_step, steps_per_epoch)
    assert final["epochs"] == 2
    assert 1 <= Outputs.most_unfinished <= MAX_IN_FLIGHT + 1  # +1: the step just dispatched, before the wait


def test_leave_one_out_evaluation_leaves_at_most_max_in_flight_batches_unfinished(tiny_config):
    from jaxrec.data import load_dataset
    from jaxrec.models import build_model
    from jaxrec.tasks.next_item.batches import parse_buckets
    from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator, draw_eval_negatives
    from jaxrec.tasks.next_item.split import leave_one_out

    Outputs.reset()
    cfg = replace(tiny_config, eval=dict(batch_size=8))  # 1,000 users: 125 batches
    split = leave_one_out(load_dataset(cfg.data))
    buckets = parse_buckets(cfg.train.length_buckets, cfg.model.max_len)
    model = build_model(cfg.model, split.num_items)
    evaluator = LeaveOneOutEvaluator(split, draw_eval_negatives(split, cfg), model, cfg, buckets)
    count = iter(range(10**6))
    evaluator.eval_step = lambda params, batch: {
        name: PendingRanks(np.zeros(len(batch["weight_B"]), np.int32), next(count)) for name in ("sampled", "full")
    }
    metrics = evaluator.evaluate(None, "valid")
    assert metrics["valid/hr@1_full"] == pytest.approx(1.0, rel=1e-6)  # rank 0 everywhere: the fakes were read
    assert len(evaluator.batches["valid"]) > 4 * MAX_IN_FLIGHT
    assert 1 <= Outputs.most_unfinished <= 2 * (MAX_IN_FLIGHT + 1)  # two protocols' ranks per program


def test_ctr_evaluation_leaves_at_most_max_in_flight_batches_unfinished():
    Outputs.reset()
    rng = np.random.default_rng(0)
    batches = [
        {"weight_B": np.ones(4), "label_B": rng.integers(0, 2, 4), "user_B": np.arange(4)}
        for _ in range(4 * MAX_IN_FLIGHT)
    ]
    count = iter(range(10**6))
    state = SimpleNamespace(params=None, model_state=None)
    metrics = ctr_task.evaluate(lambda p, s, b: PendingRanks(rng.normal(size=4), next(count)), state, batches, "v")
    assert "v/auc" in metrics
    assert 1 <= Outputs.most_unfinished <= MAX_IN_FLIGHT + 1


def _two_device_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JAXREC_NUM_DEVICES", None)
    flags = env.pop("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    if flags:  # an XLA_FLAGS of spaces is read as a file name
        env["XLA_FLAGS"] = flags
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow
def test_many_collective_programs_through_the_window_finish_on_two_cpu_devices():
    """300 independent programs, each with an all-reduce over two CPU devices, dispatched through the window.

    Without it (every program dispatched before any is read) this aborts after 40 s on every run on a
    2-core machine; XLA's worker pool has max(cores, devices) threads (what the window guards against)."""
    script = textwrap.dedent(
        """
        import jax
        jax.config.update("jax_num_cpu_devices", 2)
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jaxrec.engine.dispatch import DispatchWindow
        mesh = Mesh(np.array(jax.devices()), ("d",))
        step = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a @ a.T, "d"), mesh=mesh, in_specs=P("d"),
                                     out_specs=P(), check_vma=False))
        a = jax.device_put(np.ones((128, 256), np.float32), NamedSharding(mesh, P("d")))
        window, outputs = DispatchWindow(), []
        for _ in range(300):
            outputs.append(step(a))
            window.push(outputs[-1])
        window.drain()
        assert len(jax.devices()) == 2 and float(outputs[-1][0, 0]) == 512.0
        print("finished")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_two_device_env()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished" in proc.stdout


@pytest.mark.slow
def test_vocabulary_parallel_run_on_two_cpu_devices_finishes(tmp_path):
    """Item table split over two CPU devices (collectives in every step and evaluation); aborted in a
    rendezvous deadlock before the dispatch window."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / "configs/sasrec_synthetic.py"),
            "--workdir",
            str(tmp_path / "run"),
            *("--set", "mesh.cpu_devices=2", "--set", "mesh.model=2"),
            *("--set", "data.synthetic_users=4000", "--set", "data.synthetic_mean_length=60"),
            *("--set", "model.max_len=64", "--set", "model.hidden=64", "--set", "train.batch_size=64"),
            *("--set", "train.length_buckets=none", "--set", "train.num_epochs=1", "--set", "eval.batch_size=16"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_two_device_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").exists()
