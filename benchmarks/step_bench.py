"""Whole jitted train steps of each model config on synthetic batches: throughput, compile time, MFU.

  python benchmarks/step_bench.py                       # every case below
  python benchmarks/step_bench.py --cases 'sasrec_ml1m*' --set model.attention=xla
  python benchmarks/step_bench.py --smoke               # tiny shapes, seconds (the tests run it)

Cases: configs/{sasrec,bert4rec,gru4rec,mf,youtube_dnn}_ml1m.py with their default losses, plus SASRec
with `ce` and `ce_chunked` (`sasrec_ml1m:ce`, ...). The model comes from jaxrec.models.build_model
and the next-item task's step (jaxrec.tasks.next_item.task: init_state, make_train_step), jitted with the
state donated and jaxrec's compiler options; no dataset and no grain: batches are synthetic, of the
config's shape (train.batch_size x model.max_len, or --length), with ML-1M's catalogue (3,416 items,
6,040 users) and per-row history lengths drawn from ML-1M (sasrec-format/ml-1m.txt under
$JAXREC_DATA, default ../shared/data; a lognormal fit when absent), left padded; item ids uniform.

Per case, one JSON line (benchmarks/results/<device>/step_bench.jsonl; a table in step_bench.md):
  compile_s            lowering + compilation of the step
  step_ms              median of --steps timed steps after one warm-up step (min, max too); each step
                       synchronised (block_until_ready) so that it is timed alone
  sequences_per_s      batch size / median step
  tokens_per_s         non-padding input positions per batch / median step
  flops_per_step       `step_flops` below: analytic model FLOPs of forward + backward
  mfu                  flops_per_step / median step / the float32 matmul peak measured in this run
  peak_bytes           compiled memory_analysis(): temporaries + arguments + outputs
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import bench_common as common  # noqa: E402
from benchmarks import reproduce  # noqa: E402

ML1M_ITEMS, ML1M_USERS = 3416, 6040  # SASRec's ML-1M (sasrec-format/ml-1m.txt)
# The gSASRec reproduction row's model settings, taken from the row so the two cannot drift apart.
GSASREC = [s for s in reproduce.ROWS["gsasrec_gbce"]["settings"] if s.startswith("model.")]
CASES = {  # name: (config file, overrides)
    "sasrec_ml1m": ("sasrec_ml1m.py", []),
    "sasrec_ml1m:ce": ("sasrec_ml1m.py", ["model.loss=ce"]),
    "sasrec_ml1m:ce_chunked": ("sasrec_ml1m.py", ["model.loss=ce_chunked"]),
    "bert4rec_ml1m": ("bert4rec_ml1m.py", []),
    # gSASRec (the reproduction row's settings): 256 negatives shared by the batch, or drawn per position.
    "gsasrec_ml1m": ("sasrec_ml1m.py", GSASREC),
    "gsasrec_ml1m:per_position": ("sasrec_ml1m.py", GSASREC + ["model.gbce_negatives=position"]),
    "gru4rec_ml1m": ("gru4rec_ml1m.py", []),
    "mf_ml1m": ("mf_ml1m.py", []),
    "youtube_dnn_ml1m": ("youtube_dnn_ml1m.py", []),
}
SMOKE_OVERRIDES = [
    "model.max_len=16",
    "model.hidden=16",
    "model.num_blocks=1",
    "train.batch_size=8",
    "train.micro_batch=0",
]


def step_flops(model_cfg, num_items: int, batch: int, length: int, micro_batch: int = 0) -> dict:
    """Analytic model FLOPs of one train step (forward + backward = 3 x forward), by part.

    Counted at the shapes the step computes (every position of the B x L batch, padding included, and
    the whole L x L attention square: what the default implementations execute); matmuls only, 2 m n k
    for an (m x k) @ (k x n): element-wise work (softmax, norms, GELU, Adam) is left out, and so are
    embedding lookups, which are gathers (no FLOPs). N = B x L positions, D hidden, V item-table rows.
      sasrec     per block: Q, K, V projections 3 (2 N D^2); attention QK^T and PV 2 (2 B L^2 D);
                 feed-forward 2 (2 N D^2)
      bert4rec   per block: projections 3 (2 N D^2); attention 2 (2 B L^2 D); feed-forward D -> 4D -> D
                 2 (2 N 4 D^2); output head 2 N D^2; scores use D + 1 columns (the bias column)
      gru4rec    per layer: GRU cell input and hidden transforms 2 (2 N 3 D^2)
      mf         none (lookups only)
      youtube_dnn  the tower's dense layers over the L' = min(L, k + window - 1) columns it keeps
    Loss over the N positions: bce / bpr 2 (2 N D) (positive and negative dot products); ce and
    ce_chunked the N x V logits 2 N V D (the chunked one's recomputation in backward not counted; a model
    with a `target_fraction`, BERT4Rec, scores only N' = each micro-batch's `target_capacity` rows);
    sampled N x M logits 2 N M D; gbce 2 N K D.
    """
    from jaxrec.layers.embeddings import vocab_rows

    name, d = model_cfg.name, model_cfg.hidden
    blocks = model_cfg.num_blocks if name != "mf" else 0  # MF has no blocks (and no num_blocks key)
    n = batch * length
    parts = {}
    if name == "sasrec":
        parts["attention_projections"] = blocks * 3 * 2 * n * d * d
        parts["attention_matmuls"] = blocks * 2 * 2 * batch * length * length * d
        parts["ffn"] = blocks * 2 * 2 * n * d * d
    elif name == "bert4rec":
        parts["attention_projections"] = blocks * 3 * 2 * n * d * d
        parts["attention_matmuls"] = blocks * 2 * 2 * batch * length * length * d
        parts["ffn"] = blocks * 2 * 2 * n * 4 * d * d
        parts["output_head"] = 2 * n * d * d
    elif name == "gru4rec":
        parts["gru"] = blocks * 2 * 2 * n * 3 * d * d
    elif name == "youtube_dnn":
        k = model_cfg.examples_per_user
        length = min(length, k + model_cfg.history_window - 1) if k else length
        n = batch * length
        widths = [model_cfg.tower_width] * (model_cfg.tower_layers - 1) + [d]
        inputs = [d + (3 * model_cfg.feature_dim if model_cfg.user_features else 0)] + widths[:-1]
        parts["tower"] = sum(2 * n * i * o for i, o in zip(inputs, widths))
    elif name != "mf":
        raise ValueError(f"step_flops: no FLOP count for model {name!r}")
    score_dim = d + 1 if name == "bert4rec" else d
    rows = vocab_rows(num_items + 1) if name == "bert4rec" else vocab_rows(num_items)
    loss = model_cfg.loss
    if loss in ("bce", "bpr"):
        parts["loss"] = 2 * 2 * n * score_dim
    elif loss in ("ce", "ce_chunked"):
        # As train_step decides it: a model that declares a target_fraction has its CE compacted.
        from jaxrec.models import MODELS
        from jaxrec.ops.losses import target_capacity

        fraction = MODELS[name].target_fraction(model_cfg)
        scored = n
        if fraction is not None:
            micro = micro_batch or batch
            scored = (batch // micro) * target_capacity(micro * length, fraction)
        parts["loss"] = 2 * scored * rows * score_dim
    elif loss in ("sampled", "gbce"):
        parts["loss"] = 2 * n * (model_cfg.num_negatives + 1) * score_dim
    parts["embeddings"] = 0
    forward = sum(parts.values())
    return {"flops_per_step": 3 * forward, "flops_forward_by_part": parts}


def load_config(case: str, overrides: list[str], smoke: bool = False):
    """The case's config with `overrides`; with `smoke`, first SMOKE_OVERRIDES' keys that the model has."""
    import dataclasses

    from jaxrec.config import apply_overrides, validate

    filename, case_overrides = CASES[case]
    spec = importlib.util.spec_from_file_location(f"config_{filename[:-3]}", REPO / "configs" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = apply_overrides(module.get_config(), case_overrides)
    if smoke:  # each model has its own keys: MF has no blocks
        fields = {f"model.{f.name}" for f in dataclasses.fields(cfg.model)}
        smoke_sets = [s for s in SMOKE_OVERRIDES if not s.startswith("model.") or s.split("=")[0] in fields]
        cfg = apply_overrides(cfg, smoke_sets)
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def synthetic_batch(cfg, num_items: int, num_users: int, length: int, user_inputs: bool, seed: int = 0):
    """A left-padded batch of the pipeline's keys; lengths drawn from ML-1M."""
    batch = cfg.train.batch_size
    lengths_B, source = common.sample_lengths("ml1m", batch, length, seed=seed)
    rng = np.random.default_rng(seed)
    valid_BxL = np.arange(length)[None] >= (length - lengths_B)[:, None]
    out = {
        key: np.where(valid_BxL, rng.integers(1, num_items + 1, (batch, length)), 0).astype(np.int32)
        for key in ("inputs_BxL", "positives_BxL", "negatives_BxL")
    }
    if user_inputs:  # column 0: user id + 1; columns 1-3: user features (0 = unknown)
        out["user_BxF"] = np.zeros((batch, 4), np.int32)
        out["user_BxF"][:, 0] = rng.integers(1, num_users + 1, batch)
    return out, lengths_B, source


def run_case(case: str, args, info: dict, peak: dict) -> dict:
    import jax

    from jaxrec.engine.compile import compiler_options
    from jaxrec.engine.state import make_optimizer
    from jaxrec.models import build_model
    from jaxrec.tasks.next_item.task import init_state, make_train_step

    cfg = load_config(case, args.set, args.smoke)
    length = args.length or cfg.model.max_len
    model = build_model(cfg.model, args.num_items, num_users=args.num_users)
    batch, lengths_B, source = synthetic_batch(cfg, args.num_items, args.num_users, length, model.uses_user_inputs)
    tx = make_optimizer(cfg.train)
    state = init_state(model, tx, cfg)
    options = compiler_options()  # what the trainer compiles with
    positions = float((batch["positives_BxL"] > 0).sum())  # loss_normalizer=epoch: the data's mean, here this batch's
    start = time.perf_counter()
    compiled = (
        jax.jit(make_train_step(model, tx, cfg, None, positions), donate_argnums=0)
        .lower(state, batch)
        .compile(compiler_options=options)
    )
    compile_s = time.perf_counter() - start
    batch = jax.device_put(batch)
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)
        return metrics

    times = common.time_calls(one_step, repeats=args.steps, budget_s=args.budget_s)
    loss = float(one_step()["loss"])
    seconds, summary = float(np.median(times)), common.summary_ms(times)
    flops = step_flops(cfg.model, args.num_items, cfg.train.batch_size, length, cfg.train.micro_batch)
    tflops = flops["flops_per_step"] / seconds / 1e12
    record = {
        **info,
        "run": args.run,
        "figure": "train_step",
        "case": case,
        "model": cfg.model.name,
        "loss": cfg.model.loss,
        "attention": getattr(cfg.model, "attention", None),  # models without attention (MF, GRU4Rec): none
        "overrides": CASES[case][1] + args.set,
        "batch_size": cfg.train.batch_size,
        "micro_batch": cfg.train.micro_batch,
        "max_len": length,
        "hidden": cfg.model.hidden,
        "num_items": args.num_items,
        "lengths_source": source,
        "padding_fraction": round(1.0 - float(lengths_B.sum()) / lengths_B.size / length, 4),
        "compile_s": round(compile_s, 3),
        "step_ms": summary["median_ms"],
        "step_ms_min": summary["min_ms"],
        "step_ms_max": summary["max_ms"],
        "repeats": summary["repeats"],
        "sequences_per_s": round(cfg.train.batch_size / seconds, 2),
        "tokens_per_s": round(float(lengths_B.sum()) / seconds, 1),
        **flops,
        "tflops": round(tflops, 5),
        "peak_tflops_float32": peak["float32"],
        "mfu": round(tflops / peak["float32"], 5),
        "final_loss": round(loss, 5),
        **common.memory_record(compiled),
    }
    return record


def markdown(records: list[dict]) -> str:
    latest = {}
    for r in records:
        if r.get("figure") == "train_step":
            latest[(r["device"], r["case"], tuple(r.get("overrides", [])))] = r
    lines = [
        "# Train-step benchmark",
        "",
        "Generated by `benchmarks/step_bench.py` from `step_bench.jsonl` (latest record per case). Synthetic batches",
        "of each config's shape with ML-1M's catalogue and history lengths; MFU = analytic model FLOPs (see",
        "`step_flops`: matmuls of forward + backward at the executed shapes, padding included) / step time /",
        "the float32 matmul peak measured in the same run.",
    ]
    if any(r["platform"] == "cpu" for r in latest.values()):
        lines.append("CPU: a 2-core machine shared with other jobs: absolute times are noisy, compare within a run.")
    lines += [
        "",
        "| device | case | loss | B x L | pad % | step ms (min-max) | seq/s | tokens/s | GFLOP/step | MFU % "
        "| compile s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in latest.values():
        if "error" in r:
            lines.append(f"| {r['device']} | {r['case']} | | | | failed: {r['error'][:120]} | | | | | | |")
            continue
        memory = f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else ""
        lines.append(
            f"| {r['device']} | {r['case']} | {r['loss']} | {r['batch_size']} x {r['max_len']} "
            f"| {100 * r['padding_fraction']:.0f} | {r['step_ms']:.1f} ({r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}) "
            f"| {r['sequences_per_s']:.0f} | {r['tokens_per_s']:.0f} | {r['flops_per_step'] / 1e9:.2f} "
            f"| {100 * r['mfu']:.2f} | {r['compile_s']:.1f} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="*", help=f"comma-separated globs over: {', '.join(CASES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, all cases")
    parser.add_argument("--length", type=int, default=0, help="batch length (default: model.max_len)")
    parser.add_argument("--num-items", type=int, default=ML1M_ITEMS)
    parser.add_argument("--num-users", type=int, default=ML1M_USERS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (fewer past --budget-s)")
    parser.add_argument("--budget-s", type=float, default=20.0)
    parser.add_argument("--out-dir", default="", help="default benchmarks/results/<device>/ (smoke: none)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (seconds)")
    parser.add_argument("--md-only", action="store_true", help="only rebuild step_bench.md from the .jsonl")
    parser.add_argument("--profile", default="", help="write a jax.profiler trace (TensorBoard / Perfetto) here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cases = args.cases if args.cases != "*" else "sasrec_ml1m,mf_ml1m"
        args.num_items, args.num_users, args.steps, args.budget_s = 100, 50, 3, 1.0
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
    selected = [c for c in CASES if any(fnmatch.fnmatch(c, p) for p in patterns)]
    if not selected:
        parser.error(f"--cases {args.cases!r} matches none of {', '.join(CASES)}")

    info = common.device_info()
    args.run = common.run_id()
    out_dir = Path(args.out_dir) if args.out_dir else (None if args.smoke else common.results_dir(info["device_slug"]))
    out = None if out_dir is None else out_dir / "step_bench.jsonl"
    if args.md_only:
        if out is None:
            parser.error("--md-only needs --out-dir with --smoke")
        out.with_suffix(".md").write_text(markdown(common.read_jsonl(out)))
        return []
    peak = common.matmul_peak(256 if args.smoke else None)
    common.append_jsonl(out, {**info, "run": args.run, "figure": "matmul_peak_tflops", **peak})
    records = []
    import jax

    if args.profile:
        jax.profiler.start_trace(args.profile)
    for case in selected:
        try:
            with jax.profiler.TraceAnnotation(case):
                record = run_case(case, args, info, peak)
        except Exception as error:  # noqa: BLE001  (one failing config must not stop the others)
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            record = {**info, "run": args.run, "figure": "train_step", "case": case, "overrides": CASES[case][1]}
            record["error"] = f"{type(error).__name__}: {first_line}"
        records.append(record)
        common.append_jsonl(out, record)
    if args.profile:
        jax.profiler.stop_trace()
    if out is not None:
        (out_dir / "step_bench.md").write_text(markdown(common.read_jsonl(out)))
    return records


if __name__ == "__main__":
    main()
