"""Full-catalogue softmax CE, naive (N x V logits) against chunked (online logsumexp, custom VJP), and
sampled softmax (N x M logits over M shared uniform candidates, logQ-corrected) beside them.

  python benchmarks/loss_bench.py [--sizes 1e4,1e5,3e5,1e6,3e6,1e7] [--out benchmarks/results/cpu/loss_bench.jsonl]
  python benchmarks/loss_bench.py --impls sampled --negatives 1024,8192   # only the sampled-softmax records
  python benchmarks/loss_bench.py --smoke      # tiny sizes, seconds (the tests run it)

Forward + backward (gradients for the queries and the whole item table) of the mean CE over
N = 2,048 positions, d = 64, float32, 10% of the positions padding. Each (implementation, size) runs
in its own process, so its peak resident memory is its own:
  compile_s           lowering + compilation
  step_ms             median of --repeats timed calls after one warm-up call (min and max too); above
                      --single-above items one timed call (the step is compiled ahead, so it holds no compile)
  xla_temp_bytes      the compiled step's temporaries, from `memory_analysis()`
  xla_peak_bytes      temporaries + arguments + outputs (what the step needs resident)
  rss_delta_bytes     the process's peak RSS minus its RSS with the inputs built (CPU only)
`sampled` (jaxrec.ops.losses.sampled_softmax_loss, one record per --negatives M): each step draws M candidates
uniformly from the catalogue inside the jitted step (as training does), temperature 1, logQ correction,
accidental hits removed; its gradients reach only the table rows gathered (positives and candidates),
scattered into a dense table gradient. Its record adds `negatives` and `finite` (loss and gradients
finite: its only numerics check, since it estimates a different loss than the full CE).
Naive CE runs for real up to --naive-max items; above that only its compiled memory is reported
(`ran: false`). Where both run, a separate process checks that the loss and both gradients agree
(max relative error, normalised by the largest gradient entry) and times the two alternately
(`chunked_over_naive_time`, the ratio of medians: robust to a machine whose load drifts).
One JSON line per record.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POSITIONS, DIM = 2048, 64


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _inputs(num_items: int, positions: int, dim: int):
    import jax
    import jax.numpy as jnp

    key_h, key_t, key_y, key_pad = jax.random.split(jax.random.key(0), 4)
    h = 0.1 * jax.random.normal(key_h, (positions, dim), jnp.float32)
    table = 0.1 * jax.random.normal(key_t, (num_items + 1, dim), jnp.float32)
    targets = jax.random.randint(key_y, (positions,), 1, num_items + 1)
    targets = jnp.where(jax.random.uniform(key_pad, (positions,)) < 0.1, 0, targets)
    return h, table, targets


def _loss_and_grads(impl: str, num_items: int, chunk: int, negatives: int = 0):
    import jax
    import jax.numpy as jnp

    from jaxrec.ops import sampling
    from jaxrec.ops.losses import sampled_softmax_loss, softmax_ce_chunked, softmax_ce_full

    def loss(h, table, targets):
        if impl == "naive":
            return softmax_ce_full(h, table, targets, num_items)[0]
        if impl == "sampled":
            ids_M, log_q_M = sampling.uniform(jax.random.key(1), negatives, num_items)
            log_q_N = jnp.full(targets.shape, log_q_M[0])  # uniform: every item's Q is the same
            return sampled_softmax_loss(h, table[targets], targets, log_q_N, table[ids_M], ids_M, log_q_M, 1.0)[0]
        return softmax_ce_chunked(h, table, targets, num_items, chunk=chunk)[0]

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def worker(args) -> dict:
    """One implementation at one size, in this process; returns its record."""
    import jax
    import numpy as np

    num_items = int(args.items)
    h, table, targets = _inputs(num_items, args.positions, args.dim)
    jax.block_until_ready((h, table, targets))
    rss_before = _rss_bytes()
    if args.impl == "check":
        naive = _loss_and_grads("naive", num_items, args.chunk)(h, table, targets)
        chunked = _loss_and_grads("chunked", num_items, args.chunk)(h, table, targets)
        naive_leaves = jax.tree.leaves(naive)
        chunked_leaves = jax.tree.leaves(chunked)
        errors = {}
        for name, a, b in zip(("loss", "grad_h", "grad_table"), naive_leaves, chunked_leaves, strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            errors[name] = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
        del naive, chunked
        # Alternate the two calls so that a noisy machine slows both alike: the ratio is the figure.
        steps = {impl: _loss_and_grads(impl, num_items, args.chunk) for impl in ("naive", "chunked")}
        times = {impl: [] for impl in steps}
        for i in range(args.repeats + 1):
            for impl, step in steps.items():
                start = time.perf_counter()
                jax.block_until_ready(step(h, table, targets))
                if i:  # the first round compiles and warms up
                    times[impl].append(time.perf_counter() - start)
        naive_ms, chunked_ms = (1000 * float(np.median(times[impl])) for impl in ("naive", "chunked"))
        return {
            "figure": "check",
            "max_relative_error": errors,
            "loss": float(naive_leaves[0]),
            "alternating_naive_ms": round(naive_ms, 2),
            "alternating_chunked_ms": round(chunked_ms, 2),
            "chunked_over_naive_time": round(chunked_ms / naive_ms, 3),
        }

    step = _loss_and_grads(args.impl, num_items, args.chunk, args.num_negatives)
    start = time.perf_counter()
    compiled = step.lower(h, table, targets).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    record = {"figure": "loss_step", "compile_s": round(compile_s, 3), "ran": False}
    if args.impl == "sampled":
        record["negatives"] = args.num_negatives
        if not args.no_run:
            leaves = jax.tree.leaves(compiled(h, table, targets))
            record["finite"] = bool(all(np.all(np.isfinite(np.asarray(x))) for x in leaves))
    if memory is not None:
        record["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
        record["xla_peak_bytes"] = int(
            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
        )
    if args.no_run:
        return record
    repeats = args.repeats if num_items <= args.single_above else 1
    if repeats > 1:
        jax.block_until_ready(compiled(h, table, targets))  # warm-up (compiled ahead: no compile in any call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(h, table, targets))
        times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    record.update(
        ran=True,
        step_ms=round(1000 * float(np.median(times)), 2),
        step_ms_min=round(1000 * min(times), 2),
        step_ms_max=round(1000 * max(times), 2),
        repeats=repeats,
    )
    if jax.default_backend() == "cpu":
        record["rss_delta_bytes"] = int(peak_rss - rss_before)
    return record


def _spawn(impl: str, items: int, args, no_run: bool = False, negatives: int = 0) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--impl",
        impl,
        "--items",
        str(items),
        "--positions",
        str(args.positions),
        "--dim",
        str(args.dim),
        "--chunk",
        str(args.chunk),
        "--repeats",
        str(args.repeats),
        "--single-above",
        str(args.single_above),
        "--num-negatives",
        str(negatives),
    ] + (["--no-run"] if no_run else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"figure": "loss_step" if impl != "check" else "check", "error": done.stderr.strip()[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e4,1e5,3e5,1e6,3e6,1e7", help="catalogue sizes (items)")
    parser.add_argument("--naive-max", type=float, default=3e5, help="largest size naive CE really runs at")
    parser.add_argument("--positions", type=int, default=POSITIONS)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--chunk", type=int, default=4096, help="catalogue rows per chunk of the chunked CE")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--single-above", type=float, default=1e6, help="larger sizes are timed once, without a warm-up (minutes each)"
    )
    parser.add_argument("--impls", default="chunked,naive,sampled", help="which of chunked, naive, sampled to run")
    parser.add_argument("--negatives", default="1024,8192", help="sampled: candidates per step (one record each)")
    parser.add_argument("--out", default="", help="append the JSON lines to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for the tests")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=float, default=1e4, help=argparse.SUPPRESS)
    parser.add_argument("--no-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-negatives", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return []
    if args.smoke:
        args.sizes, args.naive_max, args.positions, args.chunk, args.repeats = "500,3000", 500, 64, 256, 2
        args.negatives = "64"

    import jax

    common = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "positions": args.positions,
        "dim": args.dim,
        "chunk": args.chunk,
    }
    impls = {s.strip() for s in args.impls.split(",") if s.strip()}
    unknown = impls - {"chunked", "naive", "sampled"}
    if unknown:
        parser.error(f"--impls: unknown {', '.join(sorted(unknown))}; known: chunked, naive, sampled")
    records = []
    for items in (int(float(s)) for s in args.sizes.split(",")):
        runs = [("chunked", False, 0), ("naive", items > args.naive_max, 0)]
        if items <= args.naive_max:
            runs.append(("check", False, 0))
        runs = [run for run in runs if run[0] in impls or (run[0] == "check" and {"chunked", "naive"} <= impls)]
        if "sampled" in impls:
            runs += [("sampled", False, int(float(m))) for m in args.negatives.split(",") if m.strip()]
        for impl, no_run, negatives in runs:
            record = {**common, "impl": impl, "items": items, **_spawn(impl, items, args, no_run, negatives)}
            records.append(record)
            line = json.dumps(record, sort_keys=True)
            print(line, flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return records


if __name__ == "__main__":
    main()
