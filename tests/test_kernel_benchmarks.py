"""The kernel benchmarks' smoke modes, run as the scripts are run (a subprocess each), so they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, out_dir) -> list[dict]:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--out-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_attention_bench_smoke(tmp_path):
    records = _run("attention_bench.py", tmp_path)
    peak = [r for r in records if r["figure"] == "matmul_peak_tflops"]
    assert peak and peak[0]["float32"] > 0 and peak[0]["bfloat16"] > 0
    cases = [r for r in records if r["figure"] == "attention"]
    ok = [r for r in cases if r["status"] == "ok"]
    assert {r["implementation"] for r in ok} == {"reference", "xla", "causal_blocked"}
    assert {r["pass"] for r in ok} == {"fwd", "fwd_bwd"}
    for r in ok:
        for field in ("device", "jax", "jaxlib", "seq_len", "batch", "heads", "head_dim", "dtype", "flop_rule"):
            assert r[field] not in (None, ""), field
        assert r["numerics"]["ok"] and max(r["numerics"]["max_relative_error"].values()) < 1e-4
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["compile_s"] > 0
        assert r["tflops"] > 0 and r["peak_fraction"] > 0 and r["peak_bytes"] > 0
        assert 0 < r["flops_visible"] <= r["flops_counted"] <= r["flops_dense"]
        # The smoke shape as asked (L 16, 1 head of 8, 64 tokens), and the counts the FLOP rule gives it:
        # 4 D per (query, key) pair per head forward, x3 with the backward.
        b, length, h, d = r["batch"], r["seq_len"], r["heads"], r["head_dim"]
        assert (b, length, h, d, r["dtype"], r["mask"]) == (64 // 16, 16, 1, 8, "float32", "causal")
        bwd = r["pass"] == "fwd_bwd"
        assert r["flops_dense"] == (3 if bwd else 1) * 4 * d * length * length * h * b
        # TFLOP/s = counted FLOPs / median time (tflops is rounded to 5 decimals: ~1e-2 of these tiny figures).
        assert r["tflops"] == pytest.approx(r["flops_counted"] / (r["median_ms"] / 1e3) / 1e12, rel=0.1)
        assert r["peak_tflops"] == peak[0]["float32"]
        assert r["peak_fraction"] == pytest.approx(r["tflops"] / r["peak_tflops"], rel=2e-2)
        # Memory: q, k, v (and the cotangent) plus the int32 lengths in; the output (or dq, dk, dv) out.
        qkv_bytes = 4 * b * length * h * d
        assert r["argument_bytes"] == (4 if bwd else 3) * qkv_bytes + 4 * b
        assert r["output_bytes"] >= (3 if bwd else 1) * qkv_bytes
        assert r["peak_bytes"] == r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
    skipped = [r for r in cases if r["status"] == "skipped"]
    assert skipped and all("NVIDIA GPU" in r["reason"] for r in skipped)  # cudnn on CPU, with its reason
    written = (tmp_path / "attention_bench.jsonl").read_text().splitlines()
    assert len(written) == len(records)
    assert "| causal_blocked |" in (tmp_path / "attention_bench.md").read_text()


@pytest.mark.slow  # compiles five model steps; .ci/run runs the slow set
def test_step_bench_smoke(tmp_path):
    records = _run("step_bench.py", tmp_path)
    steps = {r["case"]: r for r in records if r["figure"] == "train_step"}
    assert set(steps) == {"sasrec_ml1m", "mf_ml1m"}
    (peak,) = [r for r in records if r["figure"] == "matmul_peak_tflops"]
    for r in steps.values():
        assert "error" not in r, r.get("error")
        assert r["step_ms"] > 0 and r["compile_s"] > 0 and r["sequences_per_s"] > 0 and r["tokens_per_s"] > 0
        assert r["flops_per_step"] > 0 and r["mfu"] > 0 and r["peak_bytes"] > 0
        # The smoke shapes as asked (step_bench.SMOKE_OVERRIDES, 100 items), and figures consistent with them.
        assert (r["batch_size"], r["max_len"], r["hidden"], r["num_items"]) == (8, 16, 16, 100)
        assert r["flops_per_step"] == 3 * sum(r["flops_forward_by_part"].values())  # forward + backward
        seconds = r["step_ms"] / 1e3  # step_ms has 4 decimals; the rates 1 or 2
        assert r["sequences_per_s"] == pytest.approx(8 / seconds, rel=1e-2)
        real_per_row = (1 - r["padding_fraction"]) * 16
        assert r["tokens_per_s"] == pytest.approx(real_per_row * r["sequences_per_s"], rel=1e-2)
        assert r["peak_tflops_float32"] == peak["float32"]
        # mfu is rounded to 5 decimals: ~1e-2 of these tiny figures on a loaded machine.
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / seconds / 1e12 / peak["float32"], rel=5e-2)
        assert np.isfinite(r["final_loss"]) and r["final_loss"] > 0
        assert r["peak_bytes"] == r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
    # Analytic counts at B 8, L 16, D 16, one block: N = 128 positions.
    n, d, length = 8 * 16, 16, 16
    sasrec = steps["sasrec_ml1m"]["flops_forward_by_part"]
    assert sasrec["attention_matmuls"] == 2 * 2 * 8 * length * length * d and sasrec["ffn"] == 2 * 2 * n * d * d
    assert sasrec["attention_projections"] == 3 * 2 * n * d * d and sasrec["loss"] == 2 * 2 * n * d  # bce
    assert steps["mf_ml1m"]["flops_forward_by_part"] == {"loss": 2 * 2 * n * d, "embeddings": 0}  # bpr, lookups
    assert "| sasrec_ml1m |" in (tmp_path / "step_bench.md").read_text()
