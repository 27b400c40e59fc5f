"""PinnerFormer's ablation table on the ML-1M ratings with timestamps: negatives x logQ, and objectives.

  python benchmarks/pinnerformer_table.py [--rows in_batch_logq,...] [--epochs 8] [--out DIR]
  python benchmarks/pinnerformer_table.py --smoke      # tiny synthetic rows, to test the harness

Every row is `train.py --config configs/pinnerformer_ml1m.py --resume` in its own workdir with the
row's overrides; the table reports the test split's Recall@10, Entropy@50 (genres of the top 50),
P90 Coverage@10 and the training time, beside the paper's figures where it gives them (PinnerFormer,
Pancha et al. 2022, tables 2-3, on Pinterest data: different data, so compare the shape, not the values).
Writes <out>/table.json, <out>/table.md and each row's validation curve; rows not run this time keep
their entries from the existing <out>/table.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks` must be importable

from benchmarks import bench_common as common  # noqa: E402

# Rows: negatives x logQ with the dense all-action objective, then the objectives with mixed + logQ.
ROWS = {
    "in_batch_nologq": dict(settings=["retrieval.negatives=in_batch", "retrieval.logq=false"], paper=0.071),
    "in_batch_logq": dict(settings=["retrieval.negatives=in_batch", "retrieval.logq=true"], paper=0.167),
    "uniform_nologq": dict(settings=["retrieval.negatives=uniform", "retrieval.logq=false"], paper=None),
    "uniform_logq": dict(settings=["retrieval.negatives=uniform", "retrieval.logq=true"], paper=None),
    "mixed_nologq": dict(settings=["retrieval.negatives=mixed", "retrieval.logq=false"], paper=None),
    "mixed_logq": dict(settings=["retrieval.negatives=mixed", "retrieval.logq=true"], paper=0.229),
    "objective_next": dict(settings=["retrieval.objective=next"], paper=None),
    "objective_dense_next": dict(settings=["retrieval.objective=dense_next"], paper=None),
    "objective_all_action": dict(settings=["retrieval.objective=all_action"], paper=None),
}
# mixed_logq is also the dense_all_action objective row (the config's default objective).

SMOKE = [
    "data.name=synthetic",
    "data.synthetic_users=300",
    "data.synthetic_items=150",
    "data.synthetic_mean_length=30",
    "model.max_len=16",
    "model.hidden=16",
    "model.num_blocks=1",
    "model.event_features=action,surface,duration,time,gap,age",
    "retrieval.num_sampled=64",
    "eval.every_epochs=1",
]


def popularity_row(extra: list[str]) -> dict:
    """Most popular training items (seen ones excluded), scored by the same temporal evaluation."""
    import numpy as np

    from jaxrec.config import apply_overrides
    from jaxrec.data.events import load_events
    from jaxrec.tasks.retrieval.task import _eval_config
    from jaxrec.tasks.retrieval.temporal import evaluate, temporal_split
    from train import load_config

    cfg = apply_overrides(load_config(str(REPO / "configs" / "pinnerformer_ml1m.py")), extra)
    events = load_events(cfg.data)
    split = temporal_split(events, cfg.retrieval.test_fraction, cfg.retrieval.unseen_users_only)
    train = temporal_split(split.train, cfg.retrieval.valid_fraction).train
    counts = np.bincount(np.concatenate(train.items), minlength=events.num_items + 1).astype(np.float32)
    counts[0] = -1.0
    metrics = evaluate(
        lambda batch: np.ones((len(batch["query_time_B"]), 1), np.float32),
        counts[:, None],
        split,
        _eval_config(cfg),
        cfg.model.max_len,
    )
    return {
        "row": "popularity",
        "settings": ["most popular training items"],
        "recall@10": metrics["recall@10"],
        "recall@50": metrics["recall@50"],
        "entropy@50": metrics.get("entropy@50"),
        "p90_coverage@10": metrics["p90_coverage@10"],
        "paper_recall@10": None,
        "valid_recall@10": None,
        "best_epoch": 0,
        "epochs": 0,
        "train_seconds": 0.0,
        "test_points": metrics["points"],
    }


def run_row(name: str, row: dict, workdir: Path, epochs: int, extra: list[str], train: bool = True) -> dict:
    settings = list(row["settings"]) + [f"train.num_epochs={epochs}"] + list(extra)
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "pinnerformer_ml1m.py")]
    cmd += ["--workdir", str(workdir), "--resume"] + sum((["--set", s] for s in settings), [])
    if train:
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {
        "row": name,
        "settings": settings,
        "recall@10": metrics["test/recall@10"],
        "recall@50": metrics["test/recall@50"],
        "entropy@50": metrics.get("test/entropy@50"),
        "p90_coverage@10": metrics["test/p90_coverage@10"],
        "paper_recall@10": row["paper"],
        "valid_recall@10": metrics["valid/recall@10"],
        "best_epoch": metrics["best_epoch"],
        "epochs": metrics["epochs"],
        "train_seconds": metrics["train/seconds"],
        "test_points": metrics["test/points"],
    }


def write_table(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "Test split (last 10% of interactions), user embeddings at the cut-off, positives = the next 10 events.",
        "",
        "| row | Recall@10 (paper) | Recall@50 | Entropy@50 | P90 Coverage@10 | epochs (best) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = "" if r["paper_recall@10"] is None else f" ({r['paper_recall@10']:.3f})"
        entropy = "-" if r["entropy@50"] is None else f"{r['entropy@50']:.3f}"
        lines.append(
            f"| {r['row']} | {r['recall@10']:.4f}{paper} | {r['recall@50']:.4f} | {entropy} | "
            f"{r['p90_coverage@10']:.4f} | {r['epochs']} ({r['best_epoch']}) | {r['train_seconds']:.0f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs", default=str(REPO / "runs" / "pinnerformer_ml1m"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pinnerformer_ml1m"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from finished rows only")
    parser.add_argument(
        "--eval-modes", default="daily,realtime", help="also evaluate mixed_logq's best checkpoint in these modes"
    )
    args = parser.parse_args(argv)
    extra = SMOKE if args.smoke else []
    epochs = 2 if args.smoke else args.epochs
    out = Path(args.out)
    table = common.committed_rows(out)  # read before any row trains: a damaged file stops us here
    modes = [m for m in args.eval_modes.split(",") if m]
    order = ["popularity", *ROWS, *(f"mixed_logq, {mode}" for mode in modes)]
    results: list[dict] = []

    def record(result: dict) -> None:
        results.append(result)
        table[result["row"]] = result
        write_table(common.in_row_order(table, order), out)

    record(popularity_row(extra))
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; known: {', '.join(ROWS)}")
        workdir = Path(args.runs) / name
        if args.table_only and not (workdir / "metrics.json").exists():
            print(f"{name}: no finished run in {workdir}; the table keeps its earlier entry, if any")
            continue
        result = run_row(name, ROWS[name], workdir, epochs, extra, train=not args.table_only)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(workdir / "metrics.jsonl", out / f"{name}.metrics.jsonl")
        record(result)
    mixed = Path(args.runs) / "mixed_logq"
    for mode in modes if (mixed / "metrics.json").exists() else []:
        record(mode_row(mixed, mode))
    return results


def mode_row(workdir: Path, mode: str) -> dict:
    """mixed_logq's best checkpoint with user embeddings recomputed daily or after every event."""
    from jaxrec.tasks.retrieval.task import evaluate_checkpoint

    metrics = evaluate_checkpoint(workdir, [f"retrieval.eval_mode={mode}"])
    trained = json.loads((workdir / "metrics.json").read_text())
    return {
        "row": f"mixed_logq, {mode}",
        "settings": [f"retrieval.eval_mode={mode}"],
        "recall@10": metrics["test/recall@10"],
        "recall@50": metrics["test/recall@50"],
        "entropy@50": metrics.get("test/entropy@50"),
        "p90_coverage@10": metrics["test/p90_coverage@10"],
        "paper_recall@10": None,
        "valid_recall@10": trained["valid/recall@10"],
        "best_epoch": trained["best_epoch"],
        "epochs": trained["epochs"],
        "train_seconds": trained["train/seconds"],
        "test_points": metrics["test/points"],
    }


if __name__ == "__main__":
    main()
