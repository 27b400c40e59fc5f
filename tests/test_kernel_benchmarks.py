"""The kernel benchmarks' smoke modes, run as the scripts are run (a subprocess each), so they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

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
    for r in steps.values():
        assert "error" not in r, r.get("error")
        assert r["step_ms"] > 0 and r["compile_s"] > 0 and r["sequences_per_s"] > 0 and r["tokens_per_s"] > 0
        assert r["flops_per_step"] > 0 and r["mfu"] > 0 and r["peak_bytes"] > 0
    sasrec = steps["sasrec_ml1m"]["flops_forward_by_part"]
    assert sasrec["attention_matmuls"] > 0 and sasrec["ffn"] > 0 and sasrec["loss"] > 0
    assert "| sasrec_ml1m |" in (tmp_path / "step_bench.md").read_text()
