"""The benchmark scripts' smoke modes run in the test suite, so they cannot rot."""

import json
import shutil

import numpy as np
import pytest

from benchmarks import train_throughput


@pytest.mark.slow  # subprocess compiles; .ci/run runs the slow set
def test_train_throughput_smoke(tmp_path):
    out = tmp_path / "lines.jsonl"
    records = train_throughput.main(["--smoke", "--out", str(out)])
    figures = {r["figure"]: r for r in records}
    for name in (
        "train/epoch_seconds",
        "train/sequences_per_s",
        "train/tokens_per_s",
        "eval/seconds",
        "baseline/naive_flax_epoch_seconds",
        "speedup/epoch_vs_naive_flax",
    ):
        assert figures[name]["value"] > 0, name
        assert figures[name]["device"] and figures[name]["jax"]
    value = {name: r["value"] for name, r in figures.items()}  # rounded to 4 decimals: rel 2e-2 allows for it
    epoch = figures["train/epoch_seconds"]
    # The smoke config's shapes (300 synthetic users, batch 32, length 16, hidden 16), as asked.
    assert {k: epoch[k] for k in ("users", "batch_size", "max_len", "hidden")} == dict(
        users=300, batch_size=32, max_len=16, hidden=16
    )
    # An epoch is every user's sequence once: sequences/s x epoch seconds = 300.
    assert value["train/sequences_per_s"] * value["train/epoch_seconds"] == pytest.approx(300, rel=2e-2)
    assert 1.0 <= value["train/tokens_per_s"] / value["train/sequences_per_s"] <= 16  # real targets per sequence
    buckets = figures["train/compile_seconds"]["buckets"]
    assert {f"train/step_ms[{b}]" for b in buckets} == {name for name in figures if name.startswith("train/step_ms")}
    naive_steps = figures["baseline/naive_flax_epoch_seconds"]["steps"]
    assert naive_steps == -(-300 // 32) and epoch["steps"] >= naive_steps  # buckets split batches, never merge
    assert value["baseline/naive_flax_epoch_seconds"] == pytest.approx(
        value["baseline/naive_flax_step_ms"] / 1000 * naive_steps, rel=2e-2
    )
    speedup = value["speedup/epoch_vs_naive_flax"]
    assert np.isfinite(speedup) and speedup == pytest.approx(
        value["baseline/naive_flax_epoch_seconds"] / value["train/epoch_seconds"], rel=2e-2
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["figure"] for r in written] == [r["figure"] for r in records]


def test_every_reproduce_row_is_a_valid_config():
    """A row whose settings stop validating (a renamed key, an option its model lacks) fails here, not hours in."""
    from benchmarks.reproduce import REPO, ROWS
    from jaxrec import config as config_lib
    from train import load_config

    for name, row in ROWS.items():
        cfg = config_lib.apply_overrides(load_config(str(REPO / row["config"])), list(row["settings"]))
        config_lib.validate(cfg)
        assert cfg.data.name, name


@pytest.mark.slow  # trains a row through train.py; .ci/run runs the slow set
def test_reproduce_harness_smoke(tmp_path):
    from benchmarks import reproduce

    # One row trains (BERT4Rec's training has its own tests); --table-only then rebuilds the table from it.
    runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
    results = reproduce.main(["--smoke", "--rows", "sasrec_ce", "--runs", runs, "--out", out])
    assert [r["row"] for r in results] == ["sasrec_ce"] and results[0]["config"]["model"]["loss"] == "ce_chunked"
    table = (tmp_path / "out" / "table.md").read_text()
    assert "0.1821 / 0.3152" in table and "epochs done" in table
    assert (tmp_path / "out" / "sasrec_ce.metrics.jsonl").exists()
    rows = "sasrec_ce,bert4rec_ce"  # bert4rec_ce has no finished run: left out
    rebuilt = reproduce.main(["--smoke", "--table-only", "--rows", rows, "--runs", runs, "--out", out])
    assert [r["row"] for r in rebuilt] == ["sasrec_ce"] and rebuilt[0]["ndcg@10"] == results[0]["ndcg@10"]
    # A row whose run directory is gone keeps its table entry when another row (popularity: no training) is run.
    shutil.rmtree(tmp_path / "runs" / "sasrec_ce")
    assert [r["row"] for r in reproduce.main(["--smoke", "--rows", "popularity", "--runs", runs, "--out", out])] == [
        "popularity"
    ]
    kept = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [r["row"] for r in kept] == ["sasrec_ce", "popularity"] and kept[0]["ndcg@10"] == results[0]["ndcg@10"]
    assert "0.1821 / 0.3152" in (tmp_path / "out" / "table.md").read_text()
    (tmp_path / "out" / "table.json").write_text("{not json")
    with pytest.raises(SystemExit, match="table.json is not a table"):
        reproduce.main(["--smoke", "--rows", "popularity", "--runs", runs, "--out", out])


@pytest.mark.slow  # subprocesses per size; the chunked CE's correctness is in test_losses
def test_loss_bench_smoke_checks_chunked_against_naive(tmp_path):
    from benchmarks import loss_bench

    out = tmp_path / "loss.jsonl"
    records = loss_bench.main(["--smoke", "--out", str(out)])
    checks = [r for r in records if r["figure"] == "check"]
    assert [r["items"] for r in checks] == [500]  # only where naive runs (--naive-max 500 in smoke)
    assert checks and all(max(r["max_relative_error"].values()) < 1e-5 for r in checks)
    # Inputs of scale 0.1 give near-uniform logits: the CE over the 500 real items is about log 500.
    assert checks[0]["loss"] == pytest.approx(np.log(500), rel=1e-2)
    assert all(0.05 < r["chunked_over_naive_time"] < 20 for r in checks)  # finite and plausible at these sizes
    steps = {(r["impl"], r["items"]): r for r in records if r["figure"] == "loss_step"}
    assert set(steps) == {(impl, items) for impl in ("chunked", "naive", "sampled") for items in (500, 3000)}
    assert not [key for key, r in steps.items() if "error" in r]
    assert steps[("chunked", 3000)]["ran"] and not steps[("naive", 3000)]["ran"]  # above --naive-max
    positions, dim = checks[0]["positions"], checks[0]["dim"]
    for (impl, items), r in steps.items():
        # Resident: the temporaries plus at least the table argument and its gradient output.
        assert r["xla_peak_bytes"] >= r["xla_temp_bytes"] + 2 * (items + 1) * dim * 4, (impl, items)
        if r["ran"]:
            assert r["repeats"] == 2 and r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"], (impl, items)
    for items in (500, 3000):
        assert steps[("naive", items)]["xla_temp_bytes"] >= positions * items * 4  # its N x V logits
    sampled = [steps[("sampled", items)] for items in (500, 3000)]
    assert all(r["finite"] and r["negatives"] == 64 for r in sampled)
    # N x M candidate logits: the sampled step's temporaries do not grow with the catalogue.
    assert sampled[1]["xla_temp_bytes"] <= 1.1 * sampled[0]["xla_temp_bytes"]
    assert len(out.read_text().splitlines()) == len(records)


@pytest.mark.slow  # moved out of the default run (its ~10-minute budget); .ci/run runs it
def test_retrieval_scale_step_never_builds_users_by_catalogue(tmp_path):
    from benchmarks import retrieval_scale

    users, items = 128, 100_000
    args = ["--items", str(items), "--users", str(users), "--negatives", "256", "--max-len", "4", "--hidden", "8"]
    records = retrieval_scale.main(args + ["--steps", "2", "--out", str(tmp_path / "scale.jsonl")])
    figures = {r["figure"]: r["value"] for r in records}
    assert all((r["items"], r["users"], r["negatives"], r["hidden"]) == (items, users, 256, 8) for r in records)
    assert figures["steps_per_s"] * figures["step_ms"] == pytest.approx(1000, rel=1e-3)  # 4 decimals each
    assert np.isfinite(figures["final_loss"]) and figures["final_loss"] > 0  # a softmax CE
    # The item table (ids 0..items padded to a multiple of 128, x hidden, float32) is nearly all the parameters.
    table_bytes = -(-(items + 1) // 128) * 128 * 8 * 4
    assert table_bytes <= figures["param_bytes"] <= 1.02 * table_bytes
    # Resident: temporaries plus at least the parameters and Adam's two moments (arguments of the step).
    assert figures["xla_peak_bytes"] >= figures["xla_temp_bytes"] + 3 * figures["param_bytes"]
    # A users x catalogue float32 matrix alone would be 51 MB; the step's temporaries are a fraction of it.
    assert figures["xla_temp_bytes"] < users * items * 4 / 4, figures["xla_temp_bytes"]


@pytest.mark.slow  # the retrieval loop itself is in test_retrieval
def test_pinnerformer_table_harness_smoke(tmp_path):
    from benchmarks import pinnerformer_table

    out = tmp_path / "out"
    results = pinnerformer_table.main(
        ["--smoke", "--rows", "in_batch_logq", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    )
    rows = {r["row"]: r for r in results}
    assert list(rows)[:2] == ["popularity", "in_batch_logq"] and 0.0 <= rows["in_batch_logq"]["recall@10"] <= 1.0
    assert "| in_batch_logq |" in (out / "table.md").read_text() and (out / "in_batch_logq.metrics.jsonl").exists()
    # Its run directory gone, a --table-only rebuild keeps the row's committed entry.
    shutil.rmtree(tmp_path / "runs" / "in_batch_logq")
    rebuilt = pinnerformer_table.main(
        ["--smoke", "--table-only", "--rows", "in_batch_logq", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    )
    assert [r["row"] for r in rebuilt] == ["popularity"]
    kept = {r["row"]: r for r in json.loads((out / "table.json").read_text())}
    assert list(kept) == ["popularity", "in_batch_logq"] and kept["in_batch_logq"] == rows["in_batch_logq"]


def test_split_stats_counts_cold_targets_and_both_target_layouts(tmp_path):
    from benchmarks import split_stats
    from jaxrec.tasks.next_item.split import LeaveOneOutSplit

    split = LeaveOneOutSplit(
        train=[np.array([1, 2, 3]), np.array([2, 3]), np.array([4])],  # item 5 never trains
        valid_target=np.array([2, 5, 0], np.int32),
        test_target=np.array([5, 5, 0], np.int32),
        num_items=5,
    )
    stats = split_stats.target_stats(split, max_len=2)
    assert (
        stats["valid_targets"] == 2 and stats["valid_unseen_in_train"] == 0.5 and stats["test_unseen_in_train"] == 1.0
    )
    assert stats["valid_under_5_in_train"] == 1.0  # item 2 trains twice
    # Pairs: users with two or more training items, 2 + 1 (clipped to max_len 2); whole sequences: 2 + 2 + 1.
    assert stats["pair_targets"] == 3 and stats["whole_sequence_targets"] == 5
    out = tmp_path / "stats.jsonl"
    records = split_stats.main(
        ["--datasets", "synthetic", "--max-len", "16", "--synthetic-users", "50", "--out", str(out)]
    )
    assert records[0]["pair_targets"] < records[0]["whole_sequence_targets"] and out.read_text().count("\n") == 1
    for bad, message in (("16,50", "one value per dataset"), ("long", "--max-len takes integers")):
        with pytest.raises(SystemExit, match=message):
            split_stats.main(["--datasets", "synthetic", "--max-len", bad])
