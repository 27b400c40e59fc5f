import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.config import model_config
from jaxrec.models import build_model
from jaxrec.ops.ranking import means, merge, metric_sums, rank_of_target
from jaxrec.tasks.next_item.evaluation import make_eval_step


def _brute_rank(target_score, others):
    """0-based rank with ties counted against the target, by a Python loop."""
    return sum(1 for s in others if s >= target_score)


def test_rank_of_target_counts_ties_against_the_target():
    scores = jnp.array([[0.5, 0.9, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0]])
    target = jnp.array([0.5, 1.0])
    np.testing.assert_array_equal(rank_of_target(target, scores), [3, 0])
    valid = jnp.array([[True, False, True, True], [True] * 4])
    np.testing.assert_array_equal(rank_of_target(target, scores, valid), [2, 0])


def test_metric_sums_against_brute_force():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 30, size=200)
    weight = (rng.random(200) > 0.1).astype(np.float32)
    sums = metric_sums(ranks, weight, (1, 5, 10), "full")
    out = means(sums, weight.sum(), "test")
    n = weight.sum()
    for k in (1, 5, 10):
        hr = sum(w for r, w in zip(ranks, weight) if r < k) / n
        ndcg = sum(w / np.log2(r + 2) for r, w in zip(ranks, weight) if r < k) / n
        assert out[f"test/hr@{k}_full"] == pytest.approx(hr)
        assert out[f"test/ndcg@{k}_full"] == pytest.approx(ndcg)
    assert out["test/mrr_full"] == pytest.approx(sum(w / (r + 1) for r, w in zip(ranks, weight)) / n)
    assert merge(dict(sums), sums)["hr@1_full"] == pytest.approx(2 * sums["hr@1_full"])


def test_eval_step_ranks_match_numpy_brute_force_with_ties():
    cfg = model_config("sasrec", max_len=8, hidden=4, num_blocks=1, num_heads=1, dropout=0.0)
    num_items, batch = 30, 6
    model = build_model(cfg, num_items)
    variables = model.init({"params": jax.random.key(0)}, jnp.ones((1, 8), jnp.int32), method=model.encode)
    params = nn.unbox(variables)["params"]  # the plain arrays (init boxes the tables with their logical axes)
    # Duplicate rows of the item table to force exact score ties with the target.
    table = params["item_embedding"]
    table = table.at[7].set(table[3]).at[8].set(table[3])
    params = {**params, "item_embedding": table}
    rng = np.random.default_rng(1)
    inputs = rng.integers(1, num_items + 1, size=(batch, 8)).astype(np.int32)
    inputs[0, :5] = 0
    targets = np.array([3, 3, 5, 7, 12, 30], np.int32)
    negatives = rng.integers(1, num_items + 1, size=(batch, 10)).astype(np.int32)
    negatives[0, :2] = [7, 8]  # ties with target 3
    history = np.concatenate([inputs, np.zeros((batch, 3), np.int32)], axis=1)
    history[1, -1] = 8  # a tying item hidden from full ranking for user 1
    history[2, -1] = 5  # the target itself in history: must stay a candidate
    batch_dict = dict(inputs_BxL=inputs, targets_B=targets, negatives={"sampled": negatives}, history_BxH=history)
    out = jax.jit(make_eval_step(model, num_items))(params, batch_dict)

    h, tbl = model.apply({"params": params}, jnp.asarray(inputs), deterministic=True)
    user = np.asarray(h[:, -1], np.float64)
    tbl = np.asarray(tbl, np.float64)
    for b in range(batch):

        def score(i, b=b):
            return float(np.float32(user[b] @ tbl[i]))

        target_score = score(targets[b])
        assert out["sampled"][b] == _brute_rank(target_score, [score(i) for i in negatives[b]])
        seen = set(history[b].tolist()) - {0}
        candidates = [i for i in range(1, num_items + 1) if i not in seen and i != targets[b]]
        assert out["full"][b] == _brute_rank(target_score, [score(i) for i in candidates]), b
    assert int(out["sampled"][0]) >= 2  # the two ties count against the target
