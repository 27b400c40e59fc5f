"""Helpers shared by the benchmarks: device naming, the measured matmul peak, timing, memory, history
lengths of the real datasets, JSON lines, and the committed rows of the result tables.

Nothing here imports grain or jaxrec's data pipeline: the scripts run where only jax, flax and optax are
installed (the GPU machine). jax is imported inside the functions, so that a script can set flags first.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Per-user history lengths when the dataset files are absent: lognormal fits (mean and standard deviation
# of log count) of the real files: ML-1M in SASRec's format (6,040 users, median 96, mean 165, max 2,277
# items) and Amazon Beauty in BERT4Rec's (40,226 users, median 6, mean 8.8, max 293).
LOGNORMAL_FALLBACK = {"ml1m": (4.60, 0.99), "beauty": (2.02, 0.48)}
DATASET_FILES = {"ml1m": "sasrec-format/ml-1m.txt", "beauty": "bert4rec/beauty.txt"}


def device_info() -> dict:
    """Device kind, its slug (the results folder), platform, jax and jaxlib versions."""
    import jax
    import jaxlib

    kind = jax.devices()[0].device_kind
    return {
        "device": kind,
        "device_slug": device_slug(kind),
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
    }


def device_slug(kind: str | None = None) -> str:
    """`cpu`, or a slug of the device kind: 'NVIDIA H200' -> 'nvidia-h200'."""
    if kind is None:
        import jax

        kind = jax.devices()[0].device_kind
    if kind.lower() == "cpu" or "cpu" in kind.lower().split():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def results_dir(slug: str) -> Path:
    return REPO / "benchmarks" / "results" / slug


def time_calls(fn, *, repeats: int, budget_s: float, min_repeats: int = 3) -> list[float]:
    """Seconds of each timed call of `fn` (which must block), after one warm-up call.

    Stops after `repeats` calls, or earlier once `budget_s` is spent and `min_repeats` are done.
    """
    fn()  # warm-up: caches, allocator, autotuning
    times, spent = [], 0.0
    while len(times) < repeats:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if spent > budget_s and len(times) >= min_repeats:
            break
    return times


def summary_ms(times: list[float]) -> dict:
    return {
        "median_ms": round(1000 * float(np.median(times)), 4),
        "min_ms": round(1000 * float(np.min(times)), 4),
        "max_ms": round(1000 * float(np.max(times)), 4),
        "repeats": len(times),
    }


def memory_record(compiled) -> dict:
    """Compiled `memory_analysis()`: temporaries, arguments, outputs and their sum (`peak_bytes`)."""
    try:
        memory = compiled.memory_analysis()
    except Exception as error:  # some backends do not implement it  # noqa: BLE001
        return {"memory_note": f"memory_analysis unavailable: {type(error).__name__}"}
    if memory is None:
        return {"memory_note": "memory_analysis returned None"}
    temp, args, out = (
        int(memory.temp_size_in_bytes),
        int(memory.argument_size_in_bytes),
        int(memory.output_size_in_bytes),
    )
    return {"temp_bytes": temp, "argument_bytes": args, "output_bytes": out, "peak_bytes": temp + args + out}


def matmul_peak(size: int | None = None, repeats: int = 10) -> dict:
    """Measured TFLOP/s of a jitted size x size matmul in float32 and bfloat16 (default precision).

    The denominator of every peak fraction and MFU in these benchmarks; measured in the same run, so
    a loaded machine lowers both sides alike. size: 2048 on CPU, 8192 on accelerators.
    """
    import jax

    size = size or (2048 if jax.default_backend() == "cpu" else 8192)
    peak = {"matmul_size": size}
    for dtype in ("float32", "bfloat16"):
        a = jax.random.normal(jax.random.key(0), (size, size), dtype)
        b = jax.random.normal(jax.random.key(1), (size, size), dtype)
        matmul = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
        times = time_calls(lambda f=matmul, x=a, y=b: f(x, y).block_until_ready(), repeats=repeats, budget_s=3.0)
        peak[dtype] = round(2 * size**3 / float(np.median(times)) / 1e12, 4)
    return peak


def data_dir() -> Path:
    """$JAXREC_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("JAXREC_DATA") or (REPO.parent / "shared" / "data"))


def history_lengths(name: str) -> tuple[np.ndarray | None, str]:
    """Interactions per user of a dataset in `u i` format (numpy only), and where they came from.

    Returns (None, reason) when the file is absent; `sample_lengths` then uses the lognormal fallback.
    """
    path = data_dir() / DATASET_FILES[name]
    if not path.exists():
        return None, f"lognormal fallback (no {path})"
    pairs = np.fromfile(path, dtype=np.int64, sep=" ")
    if pairs.size % 2:
        raise ValueError(f"{path}: expected 'user item' pairs, got an odd number of integers")
    counts = np.bincount(pairs[0::2])
    return counts[counts > 0], str(path.relative_to(path.parents[1]))


def sample_lengths(dist: str, batch: int, max_len: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Valid items per row (1..max_len), as left-padded training batches of max_len would hold.

    dist: `uniform` (every row full: no padding), or a dataset (`ml1m`, `beauty`): users drawn with
    replacement, each row the user's last min(count - 1, max_len) items (the newest item is a target),
    or the lognormal fallback of LOGNORMAL_FALLBACK when the file is absent.
    """
    rng = np.random.default_rng(seed)
    if dist == "uniform":
        return np.full((batch,), max_len, np.int32), "uniform"
    if dist not in DATASET_FILES:
        raise ValueError(f"unknown length distribution {dist!r}; known: uniform, {', '.join(DATASET_FILES)}")
    counts, source = history_lengths(dist)
    if counts is None:
        mu, sigma = LOGNORMAL_FALLBACK[dist]
        counts = np.round(rng.lognormal(mu, sigma, size=batch)).astype(np.int64) + 1
    else:
        counts = rng.choice(counts, size=batch, replace=True)
    return np.clip(counts - 1, 1, max_len).astype(np.int32), source


def append_jsonl(path: Path | None, record: dict) -> None:
    """Prints the record as one JSON line, and appends it to `path` if given."""
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def committed_rows(out: Path) -> dict[str, dict]:
    """The rows of <out>/table.json by name ({} when there is none).

    A row's run directory may be gone (a new checkout, another machine) while its committed figure
    stands: rebuilding a table for some rows must not drop the others. Call it before any row trains,
    so that a damaged file stops the script before hours of training.
    """
    path = out / "table.json"
    if not path.exists():
        return {}
    try:
        return {r["row"]: r for r in json.loads(path.read_text())}
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise SystemExit(f"{path} is not a table this script wrote ({e!r}); move it aside to start a new one") from e


def in_row_order(rows: dict[str, dict], order) -> list[dict]:
    """The rows sorted by their name's place in `order`; names not in it last, in insertion order."""
    place = {name: i for i, name in enumerate(order)}
    return sorted(rows.values(), key=lambda r: place.get(r["row"], len(place)))


def run_id() -> str:
    """Identifies the records of one invocation (UTC start time)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


if __name__ == "__main__":  # `python benchmarks/bench_common.py`: the results folder name of this device
    print(device_slug())
