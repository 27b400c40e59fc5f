"""CTR rankers on ML-1M (ratings with timestamps, users 1..2999), explicit labels: WDL, WDL+Seq, DIN, BST.

  python benchmarks/ctr_table.py [--rows wdl,din,...] [--seeds 0,1,2] [--epochs N] [--runs DIR] [--out DIR]
  python benchmarks/ctr_table.py --smoke      # tiny synthetic rows, to test the harness

Every (row, seed) is `train.py --config configs/<row's config> --resume --set train.seed=S` in its own
workdir (runs/ctr_ml1m/<row>/seed<S>), so an interrupted table resumes where it stopped. Labels: rating
>= 4 is 1, <= 3 is 0; split by global time quantiles (80/10/10 of the examples); the checkpoint is the
one best on valid/auc (the configs train 3 epochs; `--epochs` overrides). The table reports the mean
and the sample standard deviation over seeds of the test AUC, GAUC, log loss and the training time.
Writes <out>/table.json and <out>/table.md; rows not run this time keep their entries. On a 2-core CPU
an ML-1M epoch takes about 1-1.5 min (WDL, WDL+Seq, DIN), 6-8 min (BST, 1 block) and 9-13 min (BST,
2 blocks): the full table is hours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks` must be importable

from benchmarks import bench_common as common  # noqa: E402

ROWS = {
    "wdl": dict(config="wdl_ml1m.py", settings=[]),
    # Events as the papers have them (item, genres, time): ids only, no rating (ctr.history_actions=false).
    "wdl_seq": dict(config="wdl_ml1m.py", settings=["model.name=wdl_seq", "ctr.history_actions=false"]),
    "din": dict(config="din_ml1m.py", settings=["ctr.history_actions=false"]),
    "bst_1block": dict(config="bst_ml1m.py", settings=["model.num_blocks=1", "ctr.history_actions=false"]),
    "bst_2blocks": dict(config="bst_ml1m.py", settings=["model.num_blocks=2", "ctr.history_actions=false"]),
    # With WDL's wide part (ctr.wide): the same features as WDL plus the sequence model.
    "din_wide": dict(config="din_ml1m.py", settings=["ctr.wide=true", "ctr.history_actions=false"]),
    "bst_1block_wide": dict(
        config="bst_ml1m.py", settings=["model.num_blocks=1", "ctr.wide=true", "ctr.history_actions=false"]
    ),
    # The configs' default: each history event also carries its rating (ctr.history_actions), so the
    # sequence says what the user thought of an item, not only that they rated it. WDL has no history.
    "wdl_seq_feedback": dict(config="wdl_ml1m.py", settings=["model.name=wdl_seq", "ctr.history_actions=true"]),
    "din_feedback": dict(config="din_ml1m.py", settings=["ctr.history_actions=true"]),
    "bst_1block_feedback": dict(config="bst_ml1m.py", settings=["model.num_blocks=1", "ctr.history_actions=true"]),
    "bst_2blocks_feedback": dict(config="bst_ml1m.py", settings=["model.num_blocks=2", "ctr.history_actions=true"]),
    "din_wide_feedback": dict(config="din_ml1m.py", settings=["ctr.wide=true", "ctr.history_actions=true"]),
}
FIGURES = {"test_auc": "test/auc", "test_gauc": "test/gauc", "test_logloss": "test/logloss"}
FIGURES |= {"valid_auc": "valid/auc", "train_seconds": "train/seconds", "best_epoch": "best_epoch"}

SMOKE = [
    "data.name=synthetic",
    "data.synthetic_users=200",
    "data.synthetic_items=80",
    "data.synthetic_mean_length=15",
    "model.max_len=8",
    "model.hidden=8",
    "train.num_epochs=1",
    "train.batch_size=64",
    "eval.batch_size=256",
    "ctr.mlp=16",
    "ctr.attention_mlp=8",
]


def run_one(row: dict, seed: int, workdir: Path, extra: list[str]) -> dict:
    settings = list(row["settings"]) + [f"train.seed={seed}"] + list(extra)
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / row["config"])]
    cmd += ["--workdir", str(workdir), "--resume"] + sum((["--set", s] for s in settings), [])
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {"seed": seed, "settings": settings, **{name: metrics[key] for name, key in FIGURES.items()}}


def summarise(name: str, runs: list[dict]) -> dict:
    """Mean and sample standard deviation (0 for one seed) of every figure over the seeds."""
    out = {"row": name, "seeds": [r["seed"] for r in runs], "runs": runs}
    for figure in FIGURES:
        values = [float(r[figure]) for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        out[figure] = {"mean": statistics.fmean(values), "std": spread, "min": min(values), "max": max(values)}
    return out


def write_table(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "Test split: the last 10% of examples in time (ML-1M users 1..2999, rating >= 4 is positive); "
        "mean +- sample std over seeds; checkpoint best on valid/auc.",
        "",
        "| row | seeds | test AUC | test GAUC | test log loss | train s | best epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [f"{r[f]['mean']:.4f} +- {r[f]['std']:.4f}" for f in ("test_auc", "test_gauc", "test_logloss")]
        seconds = f"{r['train_seconds']['mean']:.0f} +- {r['train_seconds']['std']:.0f}"
        lines.append(
            f"| {r['row']} | {len(r['seeds'])} | {' | '.join(cells)} | {seconds} | {r['best_epoch']['mean']:.1f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default=str(REPO / "runs" / "ctr_ml1m"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ctr_ml1m"))
    parser.add_argument("--epochs", type=int, default=0, help="train.num_epochs for every row (0 = the config's)")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic runs (tests the harness only)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    extra = list(SMOKE) if args.smoke else []
    if args.epochs:
        extra.append(f"train.num_epochs={args.epochs}")
    table = common.committed_rows(Path(args.out))  # read before any row trains: a damaged file stops us here
    results = []
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; known: {', '.join(ROWS)}")
        runs = [run_one(ROWS[name], seed, Path(args.runs) / name / f"seed{seed}", extra) for seed in seeds]
        results.append(summarise(name, runs))
        table[name] = results[-1]
        write_table(common.in_row_order(table, ROWS), Path(args.out))
    return results


if __name__ == "__main__":
    main()
