"""Reproduction harness: train each row of the published ML-1M (and Beauty) table, one table out.

  python benchmarks/reproduce.py [--rows sasrec_bce,sasrec_ce] [--cap-hours 2] [--out benchmarks/results/reproduce]
  python benchmarks/reproduce.py --smoke        # tiny synthetic rows, to test the harness

Each row is `train.py --config ... --resume` in its own workdir (runs/reproduce/<row>), so a row
that is stopped or capped continues where it was when started again. `train.max_train_seconds`
caps a row's training time; the table says when the cap, not convergence, ended a row.
Writes <out>/table.json and <out>/table.md (published figure beside the measured one, settings,
epochs, training time) and copies each row's validation curve (metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Published full-ranking test figures (NDCG@10, HR@10), leave-one-out, history excluded.
ROWS = {
    "sasrec_bce": dict(
        config="configs/sasrec_ml1m.py",
        published=(0.1341, 0.2500),
        source="Klenitskiy & Vasilev 2023 (others report 0.108-0.126)",
        settings=["model.hidden=64", "model.dropout=0.1", "model.loss=bce"],
    ),
    "sasrec_ce": dict(
        config="configs/sasrec_ml1m.py",
        published=(0.1821, 0.3152),
        source="Klenitskiy & Vasilev 2023 (SASRec+)",
        settings=["model.hidden=64", "model.dropout=0.1", "model.loss=ce_chunked", "model.ce_chunk=1024"],
    ),
    "bert4rec_ce": dict(
        config="configs/bert4rec_ml1m.py",
        published=(0.1537, 0.2843),
        source="Klenitskiy & Vasilev 2023",
        settings=[],
    ),
    "gsasrec_gbce": dict(
        config="configs/sasrec_ml1m.py",
        published=(0.1726, 0.3003),
        source="gSASRec reference checkpoints",
        settings=[
            "model.hidden=128",
            "model.loss=gbce",
            "model.num_negatives=256",
            "model.gbce_t=0.75",
            "model.shared_output_embedding=false",
        ],
    ),
}

SMOKE = [
    "data.name=synthetic",
    "data.synthetic_users=300",
    "data.synthetic_items=80",
    "model.max_len=16",
    "model.hidden=16",
    "model.num_blocks=1",
    "train.num_epochs=2",
    "train.micro_batch=0",
    "train.length_buckets=none",
    "eval.every_epochs=1",
    "eval.num_negatives=20",
    "model.ce_chunk=64",
]


def run_row(name, row, workdir, cap_seconds, extra):
    settings = list(row["settings"]) + list(extra)
    if cap_seconds:
        settings.append(f"train.max_train_seconds={cap_seconds}")
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--config",
        str(REPO / row["config"]),
        "--workdir",
        str(workdir),
        "--resume",
    ] + sum((["--set", s] for s in settings), [])
    subprocess.run(cmd, check=True, cwd=REPO)
    metrics = json.loads((workdir / "metrics.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    capped = metrics["epochs"] < config["train"]["num_epochs"]
    return {
        "row": name,
        "source": row["source"],
        "settings": settings,
        "published_ndcg@10": row["published"][0],
        "published_hr@10": row["published"][1],
        "ndcg@10": metrics["test/ndcg@10_full"],
        "hr@10": metrics["test/hr@10_full"],
        "ndcg@10_sampled": metrics["test/ndcg@10_sampled"],
        "epochs": metrics["epochs"],
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train/seconds"],
        "ended_by": "wall-clock cap" if capped else "epochs done",
    }


def write_table(results, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| row | published NDCG@10 / HR@10 | measured NDCG@10 / HR@10 | epochs (best) | train s | ended by |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['row']} | {r['published_ndcg@10']:.4f} / {r['published_hr@10']:.4f} | {r['ndcg@10']:.4f} / "
            f"{r['hr@10']:.4f} | {r['epochs']} ({r['best_epoch']}) | {r['train_seconds']:.0f} | {r['ended_by']} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--cap-hours", type=float, default=0.0, help="training wall-clock cap per row (0 = none)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "reproduce"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reproduce"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    extra = SMOKE if args.smoke else []
    results = []
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; known: {', '.join(ROWS)}")
        workdir = Path(args.runs) / name
        results.append(run_row(name, ROWS[name], workdir, args.cap_hours * 3600, extra))
        curve = Path(args.out) / f"{name}.metrics.jsonl"
        curve.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(workdir / "metrics.jsonl", curve)
        write_table(results, Path(args.out))
    return results


if __name__ == "__main__":
    main()
