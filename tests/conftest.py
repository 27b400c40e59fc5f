"""Test set-up: CPU only, 8 host devices (for mesh tests), shared fixtures."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# The default mesh (mesh.data = 0) takes one device: trainer tests stay single-device and fast; the mesh
# tests ask for their (data, model) sizes explicitly. Subprocesses (train.py) inherit both settings.
os.environ.setdefault("JAXREC_NUM_DEVICES", "1")

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxrec.config import Config, DataConfig, EvalConfig, TrainConfig, switch_model  # noqa: E402
from jaxrec.models.sasrec import SASRecConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Trainer tests compile the same small programs again and again: share them through
    # jax's persistent compilation cache (per test session).
    cache = Path(config.rootpath) / ".pytest_cache" / "xla"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def tiny_config() -> Config:
    """A config that trains on synthetic data in seconds."""
    return Config(
        data=DataConfig(name="synthetic", synthetic_users=1000, synthetic_items=120, synthetic_mean_length=20),
        model=SASRecConfig(max_len=24, hidden=16, num_blocks=2, num_heads=1, dropout=0.2),
        train=TrainConfig(num_epochs=2, batch_size=64, learning_rate=0.005, length_buckets="none"),
        eval=EvalConfig(every_epochs=1, batch_size=128, num_negatives=20),
    )


def replace(cfg: Config, **sections) -> Config:
    """replace(cfg, train=dict(num_epochs=3)) -> cfg with those fields changed.

    A `name` among the model's fields switches the model's config class first (`config.switch_model`).
    """
    for name, fields in sections.items():
        fields = dict(fields)
        section = getattr(cfg, name)
        if name == "model" and "name" in fields:
            section = switch_model(section, fields.pop("name"))
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(section, **fields)})
    return cfg


def weight_stds(params) -> dict[str, float]:
    """Standard deviation of each table and dense kernel, by path (what an initialiser test checks)."""
    return {
        "/".join(str(k.key) for k in path): float(leaf.std())
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key in ("kernel", "item_embedding", "position_embedding")
    }


def _scale(tree) -> float:
    """max|x| over the finite entries of every leaf."""
    leaves = (np.abs(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree))
    return max((x[np.isfinite(x)].max(initial=0.0) for x in leaves), default=0.0)


def rel_error(actual, expected) -> float:
    """max|actual - expected| / max|expected|, a pytree taken as one vector (the infinity-norm relative error)."""
    diffs = jax.tree.map(lambda a, e: np.asarray(a, np.float64) - np.asarray(e, np.float64), actual, expected)
    return _scale(diffs) / _scale(expected)


def assert_close(actual, expected, rtol: float, err_msg: str = "") -> None:
    """Assert max|actual - expected| <= rtol * max|expected|; a pytree (a gradient) is one vector, one scale.

    For float results of two computations of one quantity (a fast path and its reference, sharded and single
    device, chunked and whole). Their float32 sums round in different orders (and differently across CPUs:
    AVX2 or AVX-512, XLA's tiling), which errs by some ulps of the largest terms: of order N * 1.2e-7 relative
    for N terms at worst, sqrt(N) * 1.2e-7 typically. An element near zero (a gradient that cancels) carries the
    rounding of its large neighbours, so an elementwise rtol is too strict there, and an absolute atol is right
    at one magnitude only. Exact results (ids, counts, determinism) use assert_array_equal instead.
    """
    scale = _scale(expected)
    a_leaves, e_leaves = jax.tree.leaves(actual), jax.tree_util.tree_leaves_with_path(expected)
    assert len(a_leaves) == len(e_leaves), (len(a_leaves), len(e_leaves), err_msg)
    for a, (path, e) in zip(a_leaves, e_leaves):
        msg = f"{err_msg}{jax.tree_util.keystr(path)} (bound: rtol {rtol} x max|expected| {scale:.3g})"
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), 0, rtol * scale, err_msg=msg)


class RecordingCheckpoints:
    """Stands in for RunCheckpoints in `loop.fit` tests: records each save as (which, step), restores the last."""

    def __init__(self):
        self.saves, self.last = [], {}

    def save(self, which, step, state, record):
        self.saves.append((which, step))
        self.last[which] = (state, dict(record))

    def restore(self, which, state):
        return self.last[which]

    def latest_step(self):
        return max((s for w, s in self.saves if w == "latest"), default=None)

    def wait(self):
        pass

    def close(self):
        pass


def fit_on_fakes(cfg, workdir, train_step, steps_per_epoch: int, checkpoints=None):
    """`loop.fit` from step 0 with `train_step`, a constant validation metric and recorded checkpoints."""
    from jaxrec.engine import loop

    record = {"epoch": 0, "best_value": -np.inf, "best_epoch": 0, "train_seconds": 0.0}
    return loop.fit(
        cfg,
        workdir,
        RecordingCheckpoints() if checkpoints is None else checkpoints,
        SimpleNamespace(step=0),
        record,
        train_step,
        iter(range(10**6)),
        steps_per_epoch,
        lambda state, which: {f"{which}/ndcg@10_full": 0.5},
        "valid/ndcg@10_full",
        compile_seconds=0.0,
    )
