"""Meshes and sharded training: parameter specs, donation, and the same trajectory on every mesh.

conftest gives 8 host CPU devices. The full mesh x loss matrix is `slow` (compiling a step for
8 devices takes a while on 2 cores); the default run keeps one sharded mesh per property.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrec import experiment
from jaxrec.config import Config
from jaxrec.data.synthetic import generate
from jaxrec.engine import mesh as mesh_lib
from jaxrec.engine.compile import compile_steps
from jaxrec.engine.state import make_optimizer
from jaxrec.models import build_model
from jaxrec.tasks.next_item.batches import TrainBatches
from jaxrec.tasks.next_item.task import example_batches, init_state, init_variables, make_train_step
from tests.conftest import assert_close, replace

STEPS = 20
# Losses (1-6) of a trajectory on a mesh against one device: each step's float32 sums over 300 items and 256
# positions run in per-shard order, ~1e-6 of the loss, carried through the steps; 1e-5 bounds it.
LOSS_RTOL = 1e-5


def _setup(cfg):
    data = generate(num_users=200, num_items=300, mean_length=16, seed=0)
    seqs = [s for s in data.sequences if len(s) >= 2]
    model = build_model(cfg.model, data.num_items)
    plan = TrainBatches(seqs, data.num_items, cfg.model.max_len, cfg.train.batch_size, (cfg.model.max_len,), 0)
    return model, plan


def _trajectory(cfg, mesh, steps=STEPS):
    """Losses of `steps` train steps on `mesh` (None: one device) and the final state."""
    model, plan = _setup(cfg)
    mesh = mesh_lib.make_mesh(1, 1) if mesh is None else mesh
    tx = make_optimizer(cfg.train)
    state = init_state(model, tx, cfg, mesh)
    step, _, _ = compile_steps(make_train_step(model, tx, cfg, mesh), state, example_batches(plan), mesh)
    losses = []
    for i in range(steps):
        state, metrics = step(state, plan(i))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


@pytest.fixture
def mesh_config(tiny_config):
    return replace(tiny_config, model=dict(max_len=16, hidden=16, dropout=0.2), train=dict(batch_size=16))


def test_parameter_and_optimizer_specs_follow_the_rules(mesh_config):
    mesh = mesh_lib.make_mesh(4, 2)
    model, _ = _setup(mesh_config)
    state = init_state(model, make_optimizer(mesh_config.train), mesh_config, mesh)
    assert state.params["item_embedding"].sharding.spec == P("model", None)
    assert state.opt_state[0].mu["item_embedding"].sharding.spec == P("model", None)
    assert state.opt_state[0].nu["item_embedding"].sharding.spec == P("model", None)
    assert state.params["position_embedding"].sharding.spec == P(None, None)
    assert state.params["attention_0"]["query"]["kernel"].sharding.spec == P(None, None)
    assert state.step.sharding.is_fully_replicated
    # Each device holds half of the item table: 128-row padding splits evenly over model = 2.
    table = state.params["item_embedding"]
    assert {s.data.shape for s in table.addressable_shards} == {(table.shape[0] // 2, table.shape[1])}
    # FSDP-style: rows over model and data together.
    fsdp = replace(mesh_config, mesh=dict(fsdp=True))
    state = init_state(model, make_optimizer(fsdp.train), fsdp, mesh)
    assert state.params["item_embedding"].sharding.spec == P(("model", "data"), None)
    assert {s.data.shape[0] for s in state.params["item_embedding"].addressable_shards} == {table.shape[0] // 8}


def test_every_parameter_has_a_rule_or_is_replicated_on_purpose(mesh_config):
    """Each model names its item tables' logical axes; they (and only they) are split over `model`."""
    for name in ("sasrec", "bert4rec", "gru4rec", "mf", "youtube_dnn"):
        cfg = replace(mesh_config, model=dict(name=name, loss="ce" if name == "bert4rec" else "bce"))
        model = build_model(cfg.model, 300, num_users=200)
        boxed = jax.eval_shape(init_variables(model, cfg.model.max_len), jax.random.key(0))["params"]
        axes = nn.get_partition_spec(boxed)
        shardings = mesh_lib.params_shardings(nn.meta.unbox(boxed), axes, mesh_lib.make_mesh(4, 2))
        specs = jax.tree.map(lambda s: s.spec, shardings)
        assert specs["item_embedding"] == P("model", None), name
        flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
        sharded = {mesh_lib.path_string(path) for path, spec in flat if any(axis is not None for axis in spec)}
        assert sharded <= {"item_embedding", "output_embedding", "output_bias"}, (name, sharded)


def test_indivisible_item_axis_is_a_clear_error():
    with pytest.raises(ValueError, match="does not divide into 3 shards"):
        mesh_lib.mesh_spec(("item", "embed"), "item_embedding", (256, 8), mesh_lib.make_mesh(2, 3, jax.devices()[:6]))


def test_make_mesh_sizes_and_errors(monkeypatch):
    monkeypatch.delenv("JAXREC_NUM_DEVICES")  # all 8 host devices
    assert dict(mesh_lib.make_mesh(0, 2).shape) == {"data": 4, "model": 2}
    assert dict(mesh_lib.make_mesh(2, 1).shape) == {"data": 2, "model": 1}  # a subset of the devices
    with pytest.raises(ValueError, match="needs 16 devices"):
        mesh_lib.make_mesh(8, 2)
    with pytest.raises(ValueError, match="does not divide"):
        mesh_lib.make_mesh(0, 3)
    monkeypatch.setenv("JAXREC_NUM_DEVICES", "4")
    assert dict(mesh_lib.make_mesh(0, 1).shape) == {"data": 4, "model": 1}


def test_sharded_step_donates_the_state(mesh_config):
    mesh = mesh_lib.make_mesh(4, 2)
    model, plan = _setup(mesh_config)
    tx = make_optimizer(mesh_config.train)
    state = init_state(model, tx, mesh_config, mesh)
    step, _, _ = compile_steps(make_train_step(model, tx, mesh_config, mesh), state, example_batches(plan), mesh)
    old_table = state.params["item_embedding"]
    new_state, _ = step(state, plan(0))
    assert old_table.is_deleted()
    assert new_state.params["item_embedding"].sharding.spec == P("model", None)
    assert int(new_state.step) == 1


def test_put_batch_splits_rows_over_data():
    mesh = mesh_lib.make_mesh(4, 2)
    batch = {"inputs_BxL": np.arange(32, dtype=np.int32).reshape(8, 4), "nested": {"x_B": np.arange(8)}}
    placed = mesh_lib.put_batch(batch, mesh)
    assert placed["inputs_BxL"].sharding.spec == P("data", None)
    np.testing.assert_array_equal(np.asarray(placed["inputs_BxL"]), batch["inputs_BxL"])
    assert {s.data.shape for s in placed["nested"]["x_B"].addressable_shards} == {(2,)}


@pytest.mark.parametrize("loss", ["bce", "ce_chunked"])
def test_sharded_trajectory_matches_one_device(mesh_config, loss):
    cfg = replace(mesh_config, model=dict(loss=loss, ce_chunk=64))  # ce_chunked: vocabulary-parallel on (4, 2)
    reference, _ = _trajectory(cfg, None)
    sharded, _ = _trajectory(cfg, mesh_lib.make_mesh(4, 2))
    np.testing.assert_allclose(sharded, reference, rtol=LOSS_RTOL)
    assert reference[-1] < reference[0]  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bce", "ce", "ce_chunked"])
@pytest.mark.parametrize("shape", [(8, 1), (2, 4), (1, 8)])
def test_sharded_trajectory_matches_one_device_on_every_mesh(mesh_config, loss, shape):
    cfg = replace(mesh_config, model=dict(loss=loss, ce_chunk=64))
    reference, ref_state = _trajectory(cfg, None)
    sharded, state = _trajectory(cfg, mesh_lib.make_mesh(*shape))
    np.testing.assert_allclose(sharded, reference, rtol=LOSS_RTOL)
    # After 20 Adam steps: each step's ~1e-6 gradient rounding, divided by Adam's normaliser (which enlarges it
    # for small gradients); 1e-4 of the largest entry.
    assert_close(state.params["item_embedding"], ref_state.params["item_embedding"], rtol=1e-4)


# The default run keeps the mesh that exercises both shard kinds; test_losses covers one device.
@pytest.mark.parametrize(
    "shape", [pytest.param(None, marks=pytest.mark.slow), pytest.param((2, 1), marks=pytest.mark.slow), (2, 2)]
)
def test_bert4rec_scores_only_masked_positions_with_the_same_trajectory(mesh_config, monkeypatch, shape):
    """BERT4Rec's CE on its compacted masked positions (per data shard; vocabulary-parallel on model = 2)
    follows the trajectory of the CE over every position, which scores unmasked ones at weight 0."""
    cfg = replace(mesh_config, model=dict(name="bert4rec", loss="ce_chunked", ce_chunk=64, num_heads=2))
    mesh = None if shape is None else mesh_lib.make_mesh(*shape)
    compacted, _ = _trajectory(cfg, mesh, steps=8)
    from jaxrec.models.bert4rec import BERT4Rec

    monkeypatch.delattr(BERT4Rec, "target_fraction")
    every_position, _ = _trajectory(cfg, mesh, steps=8)
    np.testing.assert_allclose(compacted, every_position, rtol=1e-5)


def test_memory_report_counts_shards(mesh_config):
    mesh = mesh_lib.make_mesh(4, 2)
    model, _ = _setup(mesh_config)
    state = init_state(model, make_optimizer(mesh_config.train), mesh_config, mesh)
    report = mesh_lib.memory_report(state)
    table_bytes = state.params["item_embedding"].nbytes
    others = report["params_bytes_total"] - table_bytes
    assert report["params_bytes_per_device"] == pytest.approx(others + table_bytes / 2)


def test_largest_hlo_values_finds_the_biggest_array():
    # The program returns the outer product, so every compilation materialises a f32[300,300] value.
    compiled = jax.jit(lambda x: jnp.outer(x, x) * 2).lower(jnp.ones(300)).compile()
    found = mesh_lib.largest_hlo_values(compiled.as_text())
    assert len(found) == 3
    assert found[0][1:] == ("f32[300,300]", 300 * 300 * 4)
    assert [size for *_, size in found] == sorted((size for *_, size in found), reverse=True)
    # Bytes per dtype, scalars, ROOT lines and `top`, on a hand-written module.
    hlo = """
  %p = pred[10,10]{1,0} parameter(0)
  %h = bf16[64]{0} convert(%x)
  %s = f32[] constant(0)
  ROOT %w = s64[8,2]{1,0} add(%a, %b)
"""
    assert mesh_lib.largest_hlo_values(hlo, top=2) == [("h", "bf16[64]", 128), ("w", "s64[8,2]", 128)]
    assert mesh_lib.largest_hlo_values(hlo, top=4)[2:] == [("p", "pred[10,10]", 100), ("s", "f32[]", 4)]


def _epoch_losses(workdir):
    import json

    return [json.loads(line)["train/loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 30-80 s: four trainer runs
@pytest.mark.parametrize("kind", ["pinnerformer", "din"])
def test_retrieval_and_ctr_trainers_train_the_same_on_a_mesh(tmp_path, kind):
    """The two-tower and CTR trainers on a (data 2, model 2) mesh: the single-device losses and metrics."""
    from jaxrec import experiment
    from tests.tasks.test_ctr import SYNTHETIC
    from tests.tasks.test_retrieval import _config

    if kind == "pinnerformer":
        cfg = replace(_config(), train=dict(num_epochs=2))
    else:
        cfg = replace(
            Config(),
            data=dataclasses.asdict(SYNTHETIC),
            model=dict(name="din", max_len=8, hidden=8, num_blocks=1, num_heads=1, dropout=0.0),
            train=dict(num_epochs=2, batch_size=64, learning_rate=5e-3),
            eval=dict(every_epochs=1, batch_size=256, select_metric="valid/auc"),
            ctr=dict(labels="implicit", num_negatives=2, mlp=(16,), attention_mlp=(8,), l2_reg=0.1),
        )
    one = experiment.run(replace(cfg, mesh=dict(data=1, model=1)), tmp_path / "one")
    sharded = experiment.run(replace(cfg, mesh=dict(data=2, model=2)), tmp_path / "mesh")
    np.testing.assert_allclose(_epoch_losses(tmp_path / "mesh"), _epoch_losses(tmp_path / "one"), rtol=1e-4)
    for key, value in one.items():
        if key.startswith("test/"):
            # The models differ by float32 rounding (~1e-6); metrics follow it unless a near-tie ranks the other
            # way (none here: all equal to 1e-8), entropy and counts included.
            assert sharded[key] == pytest.approx(value, rel=2e-3), key


@pytest.mark.slow  # moved out of the default run (its ~10-minute budget); .ci/run runs it
def test_micro_batched_data_parallel_step_matches_one_device(mesh_config):
    """Micro-batches are strided over the batch, so each spans every data shard and holds the same rows
    (hence the same dropout draws) on any mesh: the 2-device trajectory equals the 1-device one."""
    cfg = replace(mesh_config, train=dict(micro_batch=4))
    reference, _ = _trajectory(cfg, None, steps=8)
    sharded, _ = _trajectory(cfg, mesh_lib.make_mesh(2, 1), steps=8)
    np.testing.assert_allclose(sharded, reference, rtol=LOSS_RTOL)


def test_cpu_device_count_divides_the_batch_sizes(tiny_config, monkeypatch):
    monkeypatch.setattr(mesh_lib.os, "sched_getaffinity", lambda pid: set(range(6)))
    cfg = replace(tiny_config, train=dict(batch_size=128, micro_batch=16), eval=dict(batch_size=256))
    assert mesh_lib.cpu_device_count(cfg) == 4  # 6 cores, but 6 does not divide 128
    assert mesh_lib.cpu_device_count(replace(cfg, train=dict(batch_size=15, micro_batch=0))) == 1
    assert mesh_lib.cpu_device_count(replace(cfg, mesh=dict(cpu_devices=3))) == 3  # as asked
    assert mesh_lib.cpu_device_count(cfg, one_device=True) == 1  # a task that asks for one (CTR)
    assert mesh_lib.cpu_device_count(replace(cfg, mesh=dict(cpu_devices=2)), one_device=True) == 2  # as asked
    assert experiment.task_of(replace(cfg, model=dict(name="din"))).one_cpu_device
    monkeypatch.setattr(mesh_lib.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert mesh_lib.cpu_device_count(cfg) == 8  # capped


def test_configure_cpu_devices_before_jax_starts(tmp_path):
    """In a fresh process it sets the device count; here (a backend already running) it leaves it."""
    import os
    import subprocess
    import sys

    from jaxrec.config import Config

    assert mesh_lib.configure_cpu_devices(replace(Config(), mesh=dict(cpu_devices=3))) is None
    code = (
        "import jax; from jaxrec.engine import mesh; from jaxrec.config import Config, MeshConfig;"
        "n = mesh.configure_cpu_devices(Config(mesh=MeshConfig(cpu_devices=3)));"
        "print(n, len(jax.devices()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "3"]
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # an explicit count wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "2"]
