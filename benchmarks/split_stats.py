"""What the leave-one-out targets of a dataset look like: how cold the validation and test items are.

  python benchmarks/split_stats.py [--datasets ml-1m-sasrec,beauty-bert4rec] [--max-len 200,50] [--out FILE]

For each dataset: the share of validation and test targets that never occur in the training split (the
model never sees them as positives) or occur fewer than 5 times, and the training targets a model gets at
`max_len` as input/next-item pairs (SASRec) against the whole sequence (BERT4Rec's cloze). A test split
colder than the validation one makes test figures lower than validation ones for reasons of the data, not
of the model. Prints JSON lines (and appends them to --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks` and `jaxrec` must be importable

from benchmarks import bench_common as common  # noqa: E402
from jaxrec.config import DataConfig  # noqa: E402
from jaxrec.data.datasets import load_dataset  # noqa: E402
from jaxrec.tasks.next_item.batches import TrainBatches  # noqa: E402
from jaxrec.tasks.next_item.split import leave_one_out  # noqa: E402


def target_stats(split, max_len: int, rare: int = 5) -> dict:
    counts_V = np.bincount(np.concatenate(split.train), minlength=split.num_items + 1)
    out = {}
    for name, target_U in (("valid", split.valid_target), ("test", split.test_target)):
        items = target_U[target_U > 0]
        out[f"{name}_targets"] = int(len(items))
        out[f"{name}_unseen_in_train"] = float((counts_V[items] == 0).mean())
        out[f"{name}_under_{rare}_in_train"] = float((counts_V[items] < rare).mean())
    # The training pipeline's own counts, so these are the targets a model really gets.
    pairs, whole = (
        TrainBatches(split.train, split.num_items, max_len, 1, (max_len,), 0, whole_sequence=whole_sequence)
        for whole_sequence in (False, True)
    )
    out["train_median_length"] = float(np.median([len(split.train[u]) for u in pairs.users]))
    out["pair_targets"] = pairs.target_positions
    out["whole_sequence_targets"] = whole.target_positions
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="ml-1m-sasrec,beauty-bert4rec")
    parser.add_argument("--max-len", default="200,50", help="one per dataset: the rows' model.max_len")
    parser.add_argument("--out", default="")
    parser.add_argument("--synthetic-users", type=int, default=0, help="only for data.name=synthetic (tests)")
    args = parser.parse_args(argv)
    names = args.datasets.split(",")
    try:
        lengths = [int(x) for x in args.max_len.split(",")]
    except ValueError:
        raise SystemExit(f"--max-len takes integers, one per dataset; got {args.max_len!r}") from None
    if len(names) != len(lengths):
        raise SystemExit(f"--max-len needs one value per dataset: {len(names)} datasets, {len(lengths)} lengths")
    records = []
    for name, max_len in zip(names, lengths):
        cfg = DataConfig(name=name, **({"synthetic_users": args.synthetic_users} if args.synthetic_users else {}))
        split = leave_one_out(load_dataset(cfg))
        record = {"dataset": name, "max_len": max_len, "run": common.run_id(), **target_stats(split, max_len)}
        common.append_jsonl(Path(args.out) if args.out else None, record)
        records.append(record)
    return records


if __name__ == "__main__":
    main()
