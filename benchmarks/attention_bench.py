"""Attention implementations against each other: time, TFLOP/s, fraction of the measured matmul peak, memory.

  python benchmarks/attention_bench.py                  # this device's default grid
  python benchmarks/attention_bench.py --smoke          # tiny shapes, seconds (the tests run it)
  python benchmarks/attention_bench.py --seq-lens 2048,8192 --heads 8x128c --dtypes bfloat16 \
      --passes fwd_bwd --dists uniform,ml1m --impls xla,cudnn_padded,pallas_flash,padded

Grid: sequence length L x heads (`HxD` plus `c` = causal with left padding, SASRec's mask, or `b` =
bidirectional with left padding, BERT4Rec's; padding query rows output zeros in both) x dtype x pass
(`fwd`, `fwd_bwd` = forward and the vjp of q, k, v) x history lengths x implementation. Batch B =
max(1, --tokens // L) rows. --impls names families of jaxrec.layers.attention: `cudnn_padded`,
`pallas_flash` and `padded` become their `_causal` variants on causal cases; `causal_blocked` runs
on causal cases only. An implementation that `supports()` rejects (backend, dtype) is skipped with
the reason; Pallas kernels on CPU only run in the interpreter, which is not a speed figure: skipped.

Lengths: `uniform` = every row full (no padding); `ml1m` / `beauty` = per-user history lengths of
ML-1M (sasrec-format/ml-1m.txt) / Amazon Beauty (bert4rec/beauty.txt) under $JAXREC_DATA (default
../shared/data), clipped to L, read with numpy; a lognormal fit when absent (benchmarks/bench_common.py).

Each case:
  1. compile, timed apart (`compile_s`); `memory_analysis()` of the compiled call: temp + arguments
     + outputs = `peak_bytes`.
  2. numerics, before any timing: the implementation against `reference` in float32 at HIGHEST
     matmul precision, on the same inputs (the whole batch, or as many first rows as keep the
     reference's float32 scores under --check-bytes): the output and, for fwd_bwd, dq, dk and dv.
     Error = max |difference| / max |reference|; above --tol (default 5e-3 float32, allowing TF32
     kernels; 3e-2 bfloat16) the case is skipped with its errors.
  3. one warm-up call, then up to --repeats timed calls (fewer past --budget-s): median, min, max.
FLOP counting rule (each record's `flop_rule`): matmul FLOPs only, 4 D per (query, key) pair per head
forward (QK^T and PV), x3 for fwd_bwd (dQ, dK, dV and dP: twice the forward; no recompute counted),
over the --flop-block x --flop-block tiles of each row's L x L score matrix that hold at least one
visible pair (a tile with any unmasked pair counts whole; fully masked tiles count nothing). So a
kernel that skips masked tiles is not credited with work it does not do, and a dense one is not
credited for its masked work. `flops_dense` (every pair) and `flops_visible` (exactly the visible
pairs) are recorded beside it. TFLOP/s = counted FLOPs / median time; `peak_fraction` = that / the
same dtype's jitted NxN matmul TFLOP/s measured at the start of the same run.

Output: one JSON line per case into benchmarks/results/<device>/attention_bench.jsonl (--out-dir),
and attention_bench.md beside it, rebuilt from every record of that file (the latest per case).
--profile DIR writes a jax.profiler trace of the timed calls; --plot writes PNGs (time and TFLOP/s
against L per implementation) when matplotlib is importable (`pip install .[bench]`).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import bench_common as common  # noqa: E402

FAMILIES = ("reference", "xla", "causal_blocked", "cudnn", "cudnn_padded", "pallas_flash", "padded")
CAUSAL_VARIANT = {
    "cudnn_padded": "cudnn_padded_causal",
    "pallas_flash": "pallas_flash_causal",
    "padded": "padded_causal",
}
TOLERANCE = {"float32": 5e-3, "bfloat16": 3e-2, "float16": 1e-2}
FLOP_RULE = (
    "matmul FLOPs 4*D per (query, key) pair per head forward, x3 for fwd_bwd, over the flop_block^2 tiles of "
    "the LxL scores holding any visible pair (partly masked tiles count whole, fully masked tiles count 0)"
)


def parse_heads(spec: str) -> tuple[int, int, bool]:
    """'8x128c' -> (8 heads, head dim 128, causal); suffix b = bidirectional."""
    body, kind = spec[:-1], spec[-1]
    if kind not in "cb" or "x" not in body:
        raise ValueError(f"--heads entry {spec!r}: expected HxD followed by c (causal) or b (bidirectional)")
    heads, dim = (int(part) for part in body.split("x"))
    return heads, dim, kind == "c"


def implementation_name(family: str, causal: bool) -> tuple[str | None, str]:
    """The registry name for a family on this mask, or (None, why not)."""
    if causal:
        return CAUSAL_VARIANT.get(family, family), ""
    if family == "causal_blocked" or family.endswith("_causal"):
        return None, f"{family} needs a causal mask"
    return family, ""


def flop_counts(lengths_B: np.ndarray, length: int, heads: int, dim: int, causal: bool, block: int, bwd: bool):
    """(counted, dense, visible) FLOPs of one call under FLOP_RULE; lengths are left-padded valid counts."""
    per_pair = 4 * dim * heads * (3 if bwd else 1)
    edges = np.minimum(np.arange(0, length + block, block), length)
    lo, hi = edges[:-1], edges[1:]
    first_B11 = (length - lengths_B.astype(np.int64))[:, None, None]  # first valid position
    lo_q, hi_q = lo[None, :, None], hi[None, :, None]
    lo_k, hi_k = lo[None, None, :], hi[None, None, :]
    start_k = np.maximum(first_B11, lo_k)
    if causal:  # pair (l, s) visible iff first <= s <= l
        live = start_k < np.minimum(hi_k, hi_q)
    else:  # every valid query sees every valid key
        live = (start_k < hi_k) & (np.maximum(first_B11, lo_q) < hi_q)
    area = (hi - lo)[:, None] * (hi - lo)[None, :]
    counted = int((live * area[None]).sum())
    n = lengths_B.astype(np.int64)
    visible = int((n * (n + 1) // 2).sum() if causal else (n * n).sum())
    dense = len(lengths_B) * length * length
    return counted * per_pair, dense * per_pair, visible * per_pair


def make_call(implementation: str, length: int, causal: bool, bwd: bool, precision: str | None = None):
    """The benchmarked function: (q, k, v, lengths[, cotangent]) -> out, or (out, (dq, dk, dv))."""
    import jax
    import jax.numpy as jnp

    from jaxrec.layers.attention import attention, causal_padding_mask

    def forward(q, k, v, lengths_B):
        # The mask is built inside the call, from the lengths, as the models build theirs.
        valid_BxL = jnp.arange(length)[None] >= (length - lengths_B)[:, None]
        if causal:
            mask_BxLxL = causal_padding_mask(valid_BxL, causal=True)
        else:
            mask_BxLxL = valid_BxL[:, :, None] & valid_BxL[:, None, :]
        return attention(q, k, v, implementation=implementation, mask_BxLxS=mask_BxLxL)

    def fwd_bwd(q, k, v, lengths_B, cotangent):
        out, vjp = jax.vjp(lambda q, k, v: forward(q, k, v, lengths_B), q, k, v)
        return out, vjp(cotangent)

    fn = fwd_bwd if bwd else forward
    if precision is None:
        return jax.jit(fn)

    def with_precision(*args):
        with jax.default_matmul_precision(precision):
            return fn(*args)

    return jax.jit(with_precision)


def relative_errors(got, want) -> dict:
    import jax

    names = ("out", "dq", "dk", "dv")
    errors = {}
    for name, a, b in zip(names, jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not np.all(np.isfinite(a)):
            errors[name] = float("inf")
            continue
        errors[name] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    return errors


def run_case(case: dict, args, inputs, reference_cache: dict) -> dict:
    """Compile, numerics against the reference, memory and timing of one implementation on one shape."""
    import jax
    import jax.numpy as jnp

    bwd = case["pass"] == "fwd_bwd"
    length, causal = case["seq_len"], case["mask"] == "causal"
    call = make_call(case["implementation"], length, causal, bwd)
    start = time.perf_counter()
    compiled = call.lower(*inputs).compile()
    case["compile_s"] = round(time.perf_counter() - start, 3)

    # The whole batch when the reference's float32 scores fit in --check-bytes (no second compilation).
    row_bytes = 4 * case["heads"] * length * length
    check_rows = max(1, min(case["batch"], int(args.check_bytes // row_bytes)))
    small = inputs if check_rows == case["batch"] else tuple(x[:check_rows] for x in inputs)
    if "ref" not in reference_cache:
        ref_call = make_call("reference", length, causal, bwd, precision="highest")
        upcast = (x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x for x in small)
        reference_cache["ref"] = jax.device_get(ref_call(*upcast))
    got = jax.device_get(compiled(*small) if small is inputs else call(*small))
    errors = relative_errors(got, reference_cache["ref"])
    tolerance = args.tol or TOLERANCE[case["dtype"]]
    case["numerics"] = {"max_relative_error": errors, "tolerance": tolerance, "rows_checked": check_rows}
    case["numerics"]["ok"] = bool(max(errors.values()) <= tolerance)
    if not case["numerics"]["ok"]:
        return {**case, "status": "skipped", "reason": f"differs from the reference: {errors}"}

    case.update(common.memory_record(compiled))
    with jax.profiler.TraceAnnotation(case["case"]):
        times = common.time_calls(
            lambda: jax.block_until_ready(compiled(*inputs)), repeats=args.repeats, budget_s=args.budget_s
        )
    case.update(common.summary_ms(times))
    seconds = float(np.median(times))
    case["tflops"] = round(case["flops_counted"] / seconds / 1e12, 5)
    case["peak_fraction"] = round(case["tflops"] / case["peak_tflops"], 5) if case["peak_tflops"] else None
    case["status"] = "ok"
    return case


def make_inputs(batch, length, heads, dim, dtype, lengths_B, bwd, seed=0):
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (jax.random.normal(key, (batch, length, heads, dim), dtype) for key in keys[:3])
    inputs = (q, k, v, jnp.asarray(lengths_B, jnp.int32))
    if bwd:
        inputs += (jax.random.normal(keys[3], (batch, length, heads, dim), dtype),)
    return jax.block_until_ready(inputs)


def cases(args, info, peak):
    """Yields (shape fields, lengths_B, [(family, case id)]) in grid order: one shape, its implementations."""
    for length in args.seq_lens:
        batch = args.batch or max(1, args.tokens // length)
        for heads, dim, causal in (parse_heads(s) for s in args.heads):
            for dtype in args.dtypes:
                for dist in args.dists:
                    lengths_B, source = common.sample_lengths(dist, batch, length, seed=args.seed)
                    for pass_ in args.passes:
                        bwd = pass_ == "fwd_bwd"
                        counted, dense, visible = flop_counts(
                            lengths_B, length, heads, dim, causal, args.flop_block, bwd
                        )
                        shape = {
                            **info,
                            "run": args.run,
                            "seq_len": length,
                            "batch": batch,
                            "heads": heads,
                            "head_dim": dim,
                            "mask": "causal" if causal else "bidirectional",
                            "dtype": dtype,
                            "pass": pass_,
                            "lengths": dist,
                            "lengths_source": source,
                            "mean_length": round(float(lengths_B.mean()), 2),
                            "padding_fraction": round(1.0 - float(lengths_B.sum()) / (batch * length), 4),
                            "flops_counted": counted,
                            "flops_dense": dense,
                            "flops_visible": visible,
                            "flop_block": args.flop_block,
                            "flop_rule": FLOP_RULE,
                            "peak_tflops": peak.get(dtype),
                        }
                        group = [
                            (family, f"L{length}-{heads}x{dim}{'c' if causal else 'b'}-{dtype}-{pass_}-{dist}-{family}")
                            for family in args.impls
                        ]
                        group = [(f, c) for f, c in group if any(fnmatch.fnmatch(c, p) for p in args.cases)]
                        if group:
                            yield shape, lengths_B, group


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="50,200,512,2048,8192")
    parser.add_argument("--heads", default="1x50c,2x32b,8x128c", help="HxD + c (causal) / b (bidirectional)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--passes", default="fwd,fwd_bwd")
    parser.add_argument("--dists", default="uniform,ml1m", help="uniform, ml1m, beauty")
    parser.add_argument("--impls", default=",".join(FAMILIES))
    parser.add_argument("--cases", default="*", help="comma-separated globs over case ids, e.g. 'L2048-*-padded'")
    parser.add_argument("--tokens", type=int, default=0, help="B = tokens // L (default: 4096 on CPU, 32768 else)")
    parser.add_argument("--batch", type=int, default=0, help="fixed batch size (overrides --tokens)")
    parser.add_argument(
        "--max-gflop", type=float, default=0.0, help="skip cases above this many dense GFLOP (default: 15 on CPU)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=2.0, help="stop timing a case after this many seconds")
    parser.add_argument("--tol", type=float, default=0.0, help="numerics tolerance (default by dtype)")
    parser.add_argument("--check-bytes", type=float, default=2e9, help="numerics check: reference score bytes")
    parser.add_argument("--flop-block", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="", help="default benchmarks/results/<device>/ (smoke: none)")
    parser.add_argument("--profile", default="", help="write a jax.profiler trace here")
    parser.add_argument("--plot", action="store_true", help="write PNGs (needs matplotlib)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (seconds)")
    parser.add_argument("--md-only", action="store_true", help="only rebuild the .md (and --plot) from the .jsonl")
    args = parser.parse_args(argv)

    import jax

    info = common.device_info()
    cpu = info["platform"] == "cpu"
    if args.smoke:
        args.seq_lens, args.heads, args.dtypes, args.dists = "16", "1x8c", "float32", "beauty"
        args.impls, args.tokens, args.repeats, args.budget_s = "reference,xla,causal_blocked,cudnn", 64, 3, 0.2
    args.seq_lens = [int(s) for s in args.seq_lens.split(",")]
    args.heads, args.dtypes, args.passes, args.dists, args.impls, args.cases = (
        [s.strip() for s in value.split(",") if s.strip()]
        for value in (args.heads, args.dtypes, args.passes, args.dists, args.impls, args.cases)
    )
    args.tokens = args.tokens or (4096 if cpu else 32768)
    args.max_gflop = args.max_gflop or (15.0 if cpu else math.inf)
    args.run = common.run_id()
    out_dir = Path(args.out_dir) if args.out_dir else (None if args.smoke else common.results_dir(info["device_slug"]))
    out = None if out_dir is None else out_dir / "attention_bench.jsonl"
    if args.md_only:
        if out is None:
            parser.error("--md-only needs --out-dir with --smoke")
        write_reports(out, args.plot)
        return []

    from jaxrec.layers.attention import supports

    peak = common.matmul_peak(256 if args.smoke else None)
    common.append_jsonl(out, {**info, "run": args.run, "figure": "matmul_peak_tflops", **peak})
    if args.profile:
        jax.profiler.start_trace(args.profile)
    records = []
    for shape, lengths_B, group in cases(args, info, peak):
        bwd = shape["pass"] == "fwd_bwd"
        inputs, reference_cache = None, {}
        for family, case_id in group:
            case = {**shape, "figure": "attention", "case": case_id, "family": family}
            name, why = implementation_name(family, shape["mask"] == "causal")
            if name is not None:
                case["implementation"] = name
                _, why = supports(name, info["platform"], shape["dtype"], shape["head_dim"])
            if not why and shape["flops_dense"] / 1e9 > args.max_gflop:
                why = f"{shape['flops_dense'] / 1e9:.1f} dense GFLOP is over --max-gflop={args.max_gflop:g}"
            if why:  # the shape and the reason; no FLOP fields
                record = {k: v for k, v in case.items() if not k.startswith(("flop", "peak"))}
                record.update(status="skipped", reason=why)
            else:
                try:
                    if inputs is None:
                        inputs = make_inputs(
                            shape["batch"], shape["seq_len"], shape["heads"], shape["head_dim"], shape["dtype"],
                            lengths_B, bwd,
                        )  # fmt: skip
                    record = run_case(case, args, inputs, reference_cache)
                except Exception as error:  # noqa: BLE001  (a kernel that fails to lower or run is a result)
                    first_line = (str(error).strip().splitlines() or [""])[0][:300]
                    record = {**case, "status": "skipped", "reason": f"failed: {type(error).__name__}: {first_line}"}
            records.append(record)
            common.append_jsonl(out, record)
        del inputs
    if args.profile:
        jax.profiler.stop_trace()
    if out is not None:
        write_reports(out, args.plot)
    return records


def write_reports(out: Path, with_plot: bool) -> None:
    """attention_bench.md (and the PNGs) beside `out`, from every record in it."""
    all_records = common.read_jsonl(out)
    out.with_suffix(".md").write_text(markdown(all_records))
    if with_plot:
        plot(all_records, out.parent)


def _latest(records: list[dict]) -> list[dict]:
    latest = {}
    for r in records:
        if r.get("figure") == "attention":
            latest[(r["device"], r["case"])] = r
    return list(latest.values())


def markdown(records: list[dict]) -> str:
    """A table of the latest record per case; speed-ups against xla within the same run."""
    rows = _latest(records)
    peaks = [r for r in records if r.get("figure") == "matmul_peak_tflops"]
    by_run = {(r["run"], r["case"].rsplit("-", 1)[0], r.get("family")): r for r in rows}
    lines = [
        "# Attention benchmark",
        "",
        "Generated by `benchmarks/attention_bench.py` from `attention_bench.jsonl` (latest record per case).",
        f"FLOP rule: {FLOP_RULE}. `% peak`: of the same dtype's jitted NxN matmul measured in the same run.",
        "`vs xla`: xla's median time / this one's, both from the same run (ratios within a run are what count).",
    ]
    if any(r["platform"] == "cpu" for r in rows):
        lines.append(
            "CPU: a 2-core machine shared with other jobs, so absolute times are noisy; compare ratios within a run."
        )
    for p in peaks[-3:]:
        lines.append(
            f"Matmul peak ({p['device']}, run {p['run']}, N={p['matmul_size']}): float32 {p['float32']} TFLOP/s, "
            f"bfloat16 {p['bfloat16']} TFLOP/s."
        )
    lines += best_table(rows)
    lines += [
        "",
        "| L | B | heads | mask | dtype | pass | lengths (pad %) | impl | median ms (min-max) | TFLOP/s | % peak "
        "| peak MiB | vs xla | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda r: (  # noqa: E731
        r["device"], r["heads"], r["head_dim"], r["mask"], r["dtype"], r["pass"], r["lengths"], r["seq_len"],
        FAMILIES.index(r["family"]) if r.get("family") in FAMILIES else 99,
    )  # fmt: skip
    skipped = {}
    for r in sorted(rows, key=key):
        if r["status"] != "ok":
            reason = re.sub(r"^[\d.]+ dense GFLOP is", "dense GFLOP", r["reason"])[:160]
            skipped.setdefault((r.get("family"), reason), []).append(r["case"])
            continue
        xla = by_run.get((r["run"], r["case"].rsplit("-", 1)[0], "xla"))
        vs = f"{xla['median_ms'] / r['median_ms']:.2f}x" if xla and xla.get("status") == "ok" else ""
        peak_pct = f"{100 * r['peak_fraction']:.1f}" if r.get("peak_fraction") is not None else ""
        memory = f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else ""
        lines.append(
            f"| {r['seq_len']} | {r['batch']} | {r['heads']}x{r['head_dim']} | {r['mask'][:6]} | {r['dtype']} "
            f"| {r['pass']} | {r['lengths']} ({100 * r['padding_fraction']:.0f}) | {r['implementation']} "
            f"| {r['median_ms']:.3f} ({r['min_ms']:.3f}-{r['max_ms']:.3f}) | {r['tflops']:.4f} | {peak_pct} "
            f"| {memory} | {vs} | {r['compile_s']:.2f} |"
        )
    if skipped:
        lines += ["", "Skipped (implementation, reason: cases):", ""]
        for (family, reason), ids in sorted(skipped.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            lines.append(f"- {family}, {reason}: {len(ids)} case(s), e.g. `{ids[0]}`")
    return "\n".join(lines) + "\n"


def best_table(rows: list[dict]) -> list[str]:
    """Fastest implementation per shape group and L (its speed-up over xla in the same run)."""
    ok = [r for r in rows if r["status"] == "ok"]
    lengths = sorted({r["seq_len"] for r in ok})
    groups = {}
    for r in ok:
        group = (r["device"], f"{r['heads']}x{r['head_dim']}", r["mask"], r["dtype"], r["pass"], r["lengths"])
        groups.setdefault(group, {}).setdefault(r["seq_len"], []).append(r)
    if not groups:
        return []
    lines = [
        "",
        "Fastest implementation per shape (speed-up over xla in the same run):",
        "",
        "| device | heads | mask | dtype | pass | lengths | " + " | ".join(f"L={n}" for n in lengths) + " |",
        "|---" * (6 + len(lengths)) + "|",
    ]
    for group, by_length in sorted(groups.items()):
        cells = []
        for n in lengths:
            candidates = by_length.get(n, [])
            if not candidates:
                cells.append("")
                continue
            best = min(candidates, key=lambda r: r["median_ms"])
            xla = [r for r in candidates if r["implementation"] == "xla" and r["run"] == best["run"]]
            cells.append(best["implementation"] + (f" ({xla[0]['median_ms'] / best['median_ms']:.2f}x)" if xla else ""))
        lines.append("| " + " | ".join(group) + " | " + " | ".join(cells) + " |")
    return lines


def plot(records: list[dict], out_dir: Path) -> None:
    """attention_bench_time.png and attention_bench_tflops.png: one panel per shape group, a line per impl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not importable (pip install .[bench]); no PNGs written", file=sys.stderr)
        return
    rows = [r for r in _latest(records) if r["status"] == "ok"]
    groups = sorted({(r["heads"], r["head_dim"], r["mask"], r["dtype"], r["pass"], r["lengths"]) for r in rows})
    if not groups:
        return
    columns = min(4, len(groups))
    for metric, label in (("median_ms", "median ms"), ("tflops", "TFLOP/s (counted)")):
        fig, axes = plt.subplots(
            -(-len(groups) // columns), columns, figsize=(4 * columns, 3.2 * -(-len(groups) // columns)), squeeze=False
        )
        for ax, group in zip(axes.flat, groups):
            members = [
                r for r in rows if (r["heads"], r["head_dim"], r["mask"], r["dtype"], r["pass"], r["lengths"]) == group
            ]
            for impl in sorted({r["implementation"] for r in members}):
                points = sorted((r["seq_len"], r[metric]) for r in members if r["implementation"] == impl)
                ax.plot(*zip(*points), marker="o", label=impl)
            ax.set(xscale="log", yscale="log", xlabel="L", ylabel=label)
            ax.set_title(f"{group[0]}x{group[1]} {group[2][:6]} {group[3]} {group[4]} {group[5]}", fontsize=8)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(groups) :]:
            ax.set_visible(False)
        fig.tight_layout()
        fig.savefig(out_dir / f"attention_bench_{'time' if metric == 'median_ms' else 'tflops'}.png", dpi=80)
        plt.close(fig)


if __name__ == "__main__":
    main()
