"""Leave-one-out evaluation on a mesh ranks every user exactly as the one-device evaluation does.

The sharded evaluator feeds each batch split over `data` and scores it against parameters laid out by
the mesh rules (item tables split over `model`, or over model and data with FSDP). Per user it must
give the same rank for every protocol (sampled, popularity-sampled, full catalogue), hence the same
metrics. Ranks are integers and compared exactly; the metrics, means of float64 sums, to 1e-12 relative.
"""

import jax
import numpy as np
import pytest

from jaxrec.data import load_dataset
from jaxrec.data.datasets import ML1M_USER_FEATURE_ROWS, user_inputs
from jaxrec.engine import mesh as mesh_lib
from jaxrec.engine.state import make_optimizer
from jaxrec.models import build_model
from jaxrec.tasks.next_item.batches import parse_buckets
from jaxrec.tasks.next_item.evaluation import LeaveOneOutEvaluator, draw_eval_negatives
from jaxrec.tasks.next_item.split import leave_one_out
from jaxrec.tasks.next_item.task import init_state
from tests.conftest import replace


def _evaluator(cfg, mesh):
    dataset = load_dataset(cfg.data)
    split = leave_one_out(dataset, cfg.data.validation_users, cfg.data.seed)
    model = build_model(cfg.model, split.num_items, num_users=split.num_users, user_feature_rows=ML1M_USER_FEATURE_ROWS)
    users = user_inputs(dataset, cfg.data, model.uses_user_features) if model.uses_user_inputs else None
    buckets = parse_buckets(cfg.train.length_buckets, cfg.model.max_len)
    evaluator = LeaveOneOutEvaluator(split, draw_eval_negatives(split, cfg), model, cfg, buckets, users, mesh)
    return evaluator, model


def _params(cfg, model):
    """Initial parameters, each leaf shifted by its own noise so no two items (or rows) score alike by symmetry."""
    params = init_state(model, make_optimizer(cfg.train), cfg).params
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def _ranks(evaluator, params, which):
    """{protocol: ranks of the real (weight 1) rows, in batch order}."""
    out = {}
    for batch in evaluator.batches[which]:
        ranks = evaluator.eval_step(params, batch)
        for name, rank_B in ranks.items():
            out.setdefault(name, []).append(mesh_lib.to_host(rank_B)[batch["weight_B"] > 0])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), np.finfo(np.float64).tiny)


@pytest.mark.parametrize(
    "name, shape, fsdp",
    [
        ("sasrec", (2, 1), False),  # data parallel: whole item table on each device
        ("sasrec", (2, 2), False),  # item table rows split over model
        ("sasrec", (2, 2), True),  # item table rows split over model and data
        ("mf", (2, 2), False),  # per-user inputs (user ids) in the batch; the user table replicated
        # 16 s with a cold compilation cache on 2 cores (60 s on a loaded machine): with -m slow.
        pytest.param("bert4rec", (2, 2), False, marks=pytest.mark.slow),  # its output head and item bias split too
    ],
)
def test_sharded_evaluation_ranks_like_one_device(tiny_config, name, shape, fsdp):
    cfg = replace(
        tiny_config,
        model=dict(name=name, loss="ce" if name == "bert4rec" else "bce"),
        train=dict(length_buckets="auto"),  # several eval batch shapes: buckets (8, 16, 24)
        eval=dict(batch_size=64),  # 64 of 1000 users: several batches, the last one part padding
        mesh=dict(fsdp=fsdp),
    )
    mesh = mesh_lib.make_mesh(*shape)
    reference, model = _evaluator(cfg, None)
    sharded, _ = _evaluator(cfg, mesh)
    params = _params(cfg, model)
    shardings = jax.tree.map(lambda x: x.sharding, init_state(model, make_optimizer(cfg.train), cfg, mesh).params)
    placed = jax.device_put(params, shardings)
    table = placed["item_embedding"]
    if shape[1] > 1:  # the test's premise: each device holds a part of the item table
        assert table.addressable_shards[0].data.shape[0] == table.shape[0] // (shape[1] * (2 if fsdp else 1))
    for which in ("valid", "test"):
        expected, got = _ranks(reference, params, which), _ranks(sharded, placed, which)
        assert expected.keys() == got.keys() == {"sampled", "popsampled", "full"}
        for protocol in expected:
            np.testing.assert_array_equal(got[protocol], expected[protocol], err_msg=f"{which} {protocol}")
        assert len(np.unique(expected["full"])) > 10  # the ranks spread: a real check, not all zeros
        one, many = reference.evaluate(params, which), sharded.evaluate(placed, which)
        assert one.keys() == many.keys()
        for key in one:
            assert _relative_error(many[key], one[key]) <= 1e-12, (key, many[key], one[key])
