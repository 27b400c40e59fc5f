"""Fuzzes the data readers in-process: every malformed file must load or raise a DataError, never crash.

  python benchmarks/fuzz_readers.py [--inputs 1000] [--seed 0] [--out FILE]

Each input is one small file drawn from a seeded generator (`make_input`): a valid file of one reader's format
with mutations (wrong column counts, huge / negative / non-integer ids, unicode, byte-order marks, CRLF and
lone CR line ends, quoted fields, blank lines, a dropped header, truncation, random bytes) or plain random
bytes, read through one reader configuration of `READERS` (taken in turn, so each gets N / len(READERS)).
Another format's file, or a `file` entry with a broken data.delimiter / column setting, is drawn too.

An outcome is `loaded`, `data_error` (a DataError whose message names the file and, where the generator broke
exactly one line, that line; otherwise `bad_message`) or `traceback` (any other exception). Prints one JSON
object: fuzz_inputs, fuzz_loaded, fuzz_data_errors, fuzz_tracebacks, fuzz_bad_messages, fuzz_seconds, the
first few tracebacks and bad messages (`benchmarks/faults.py` reads fuzz_inputs and fuzz_tracebacks).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `jaxrec` must be importable

from jaxrec.config import Config, CTRConfig, DataConfig  # noqa: E402
from jaxrec.data import DataError, load_dataset  # noqa: E402
from jaxrec.data.datasets import user_inputs  # noqa: E402
from jaxrec.data.events import load_events  # noqa: E402
from jaxrec.tasks.ctr.data import build_ctr_data  # noqa: E402

# Field values that readers get wrong: non-integers, out-of-range, unicode digits and spaces, quotes, NUL.
NASTY = (
    *("", " ", "abc", "1.5", "1e3", "+5", "-0", "-7", "0x10", "1_000", "\uff11", "\u0663", "007", "nan", "inf"),
    *("99999999999999999999", "-9223372036854775809", "9223372036854775807", "-9223372036854775808", "2147483648"),
    *('"1"', '"', '"a,b"', '"a""b"', "'1'", "\u00e9", "na\u00efve", "\U0001f600", "\x00", "\ufeff1", " 1 ", "\t"),
    *("1 2", "::", ",", "\xa0", "\u2028", "\x0b", "\x1f", "#1", "null", "NaN", "true", "1\r", "\\N"),
    *("\U000c1b9a", "\U0010ffff"),  # past U+50000: numpy's loadtxt segfaults on these in a number field
    *("9" * 5000, "-" + "0" * 4400 + "1"),  # int() refuses over 4300 digits
)
SEPARATORS = (" ", "\t", ",", ";", "::", ":", "|", "  ", "\t\t")
CSV_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "surface", "duration")
GENRES = ("Drama", "Comedy", "Children's", "Sci-Fi", "(no genres listed)")


@dataclasses.dataclass(frozen=True)
class Reader:
    """One way a file reaches a reader: `load(path, folder)` reads `folder / file` through the public API."""

    name: str
    file: str  # the fuzzed file's name in the input's folder
    format: str  # pairs | ratings | movies | users | csv | tsv: what the generator mostly writes for it
    load: Callable[[Path, Path], object]


# Valid ML-1M ratings (4 users, one rating a day for 6 days) and users.dat, beside a fuzzed movies / users file.
VALID_RATINGS = "".join(
    f"{u}::{(u * 7 + day) % 9 + 1}::{(u + day) % 5 + 1}::{1_000_000 + 86400 * day + u}\n"
    for day in range(6)
    for u in range(1, 5)
)
VALID_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::F::45::7::02460\n"


def _data(folder: Path, name: str, path: Path, **kw) -> DataConfig:
    # data_dir = the input's folder: nothing from ../shared/data or $JAXREC_DATA leaks in.
    return DataConfig(name=name, path=str(path), data_dir=str(folder), cache_dir=str(folder / "cache"), **kw)


def _with_ratings(folder: Path) -> Path:
    ratings = folder / "ratings.dat"
    ratings.write_text(VALID_RATINGS)
    return ratings


def _user_features(path: Path, folder: Path):
    cfg = _data(folder, "ml-1m", _with_ratings(folder))
    return user_inputs(load_dataset(cfg), cfg, features=True)


def _ctr(path: Path, folder: Path):
    """CTR examples (implicit labels, users.dat features) from ML-1M files, one of which is `path`."""
    if path.name != "ratings.dat":
        _with_ratings(folder)
    if path.name != "users.dat":
        (folder / "users.dat").write_text(VALID_USERS)
    ctr = CTRConfig(user_features=True, labels="implicit", valid_fraction=0.2, test_fraction=0.2)
    return build_ctr_data(Config(data=_data(folder, "ml-1m", folder / "ratings.dat"), ctr=ctr))


READERS = (
    Reader("ml-1m-sasrec", "ml-1m.txt", "pairs", lambda p, d: load_dataset(_data(d, "ml-1m-sasrec", p))),
    Reader(
        "beauty-bert4rec k-core",
        "beauty.txt",
        "pairs",
        lambda p, d: load_dataset(_data(d, "beauty-bert4rec", p, min_user_interactions=2, min_item_interactions=2)),
    ),
    Reader("ml-1m ratings.dat", "ratings.dat", "ratings", lambda p, d: load_dataset(_data(d, "ml-1m", p))),
    Reader("ml-1m-partial .gz", "ratings.dat.gz", "ratings", lambda p, d: load_dataset(_data(d, "ml-1m-partial", p))),
    Reader("ml-1m movies.dat", "movies.dat", "movies", lambda p, d: load_dataset(_data(d, "ml-1m", _with_ratings(d)))),
    Reader("ml-1m users.dat", "users.dat", "users", _user_features),
    Reader("ctr users.dat", "users.dat", "users", _ctr),
    Reader("ctr ratings.dat", "ratings.dat", "ratings", _ctr),
    Reader("file csv", "log.csv", "csv", lambda p, d: load_dataset(_data(d, "file", p))),
    Reader("file tsv no time", "log.tsv", "tsv", lambda p, d: load_dataset(_data(d, "file", p, time_col=""))),
    Reader("events csv", "log.csv", "csv", lambda p, d: load_events(_data(d, "file", p))),
)


@dataclasses.dataclass
class Input:
    """One fuzz input: the file's bytes, optional DataConfig overrides, and the line the generator broke."""

    data: bytes
    overrides: dict
    bad_line: int | None  # 1-based; set when exactly one line was broken and nothing else changed
    note: str  # what the generator did, for the report


def _id(rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.85:
        return str(int(rng.integers(1, 12)))
    if roll < 0.92:
        return str(int(rng.integers(-5, 1)))
    return str(int(rng.choice([2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 10**12])))


def _rows(rng: np.random.Generator, fmt: str) -> tuple[list[list[str]], str, list[str] | None]:
    """A valid file of `fmt` as rows of fields, its separator, and the header (csv, tsv) or None."""
    n = int(rng.integers(1, 12))
    if fmt == "pairs":
        sep = str(rng.choice([" ", "\t", "  "]))
        return [[_id(rng), _id(rng)] for _ in range(n)], sep, None
    if fmt == "ratings":
        base = [row.split("::") for row in VALID_RATINGS.split("\n") if row]
        extra = [[_id(rng), _id(rng), str(rng.choice(["1", "5", "3.5"])), str(int(rng.integers(0, 2**31)))]]
        return base[: int(rng.integers(1, len(base) + 1))] + extra * int(rng.integers(0, 3)), "::", None
    if fmt == "movies":
        titles = ["Toy Story (1995)", "Caf\u00e9 Noir (1999)", "Heat, Part 2 (1995)", "Se7en | Director's Cut"]
        genres = ["|".join(rng.choice(GENRES, size=int(rng.integers(1, 3)))) for _ in range(n)]
        return [[str(k + 1), str(rng.choice(titles)), genres[k]] for k in range(n)], "::", None
    if fmt == "users":
        ages, occupations = rng.choice([1, 18, 25, 56, 99], size=n), rng.integers(-1, 25, size=n)
        genders = rng.choice(["F", "M"], size=n)
        return [[str(u + 1), genders[u], str(ages[u]), str(occupations[u]), "0246"] for u in range(n)], "::", None
    header = [str(c) for c in rng.permutation(CSV_COLUMNS)]
    values = {
        "user_id": _id,
        "item_id": _id,
        "timestamp": lambda r: str(int(r.integers(0, 2**31))),
        "rating": lambda r: str(r.choice(["1", "4", "5", "4.5"])),
        "surface": lambda r: str(r.choice(["home", "search", "Caf\u00e9", '"a,b"'])),
        "duration": lambda r: str(r.choice(["1.5", "3", "nan", "1e3"])),
    }
    return [[values[c](rng) for c in header] for _ in range(n)], "," if fmt == "csv" else "\t", header


def _break_line(rng: np.random.Generator, fields: list[str]) -> tuple[list[str], str]:
    """One line's fields with one field replaced, dropped or added, or quotes put around them."""
    fields = list(fields)
    roll = rng.random()
    if roll < 0.55 and fields:
        j = int(rng.integers(len(fields)))
        fields[j] = str(rng.choice(NASTY))
        return fields, f"field {j} = {fields[j]!r}"
    if roll < 0.75 and fields:
        del fields[int(rng.integers(len(fields)))]
        return fields, "a field dropped"
    if roll < 0.9:
        fields.insert(int(rng.integers(len(fields) + 1)), _id(rng))
        return fields, "a field added"
    return [f'"{f}' if rng.random() < 0.5 else f'"{f}"' for f in fields], "fields quoted"


def _text(rows: list[list[str]], sep: str, header: list[str] | None) -> list[str]:
    return ([sep.join(header)] if header is not None else []) + [sep.join(r) for r in rows]


def make_input(rng: np.random.Generator, fmt: str, gz: bool = False) -> Input:
    """A malformed (or valid) file of format `fmt`; see the module docstring."""
    if rng.random() < 0.06:
        data = rng.bytes(int(rng.integers(0, 200)))
        return Input(gzip.compress(data, mtime=0) if gz and rng.random() < 0.5 else data, {}, None, "random bytes")
    foreign = rng.random() < 0.08  # another format's file: its lines may all be wrong here
    if foreign:
        fmt = str(rng.choice(["pairs", "ratings", "movies", "users", "csv", "tsv"]))
    notes = [f"a {fmt} file"] if foreign else []
    rows, sep, header = _rows(rng, fmt)
    bad_line, line_ends, prefix, encoding = None, "\n", b"", "utf-8"
    line_mutations = int(rng.choice([0, 1, 1, 1, 2]))
    for _ in range(line_mutations):
        k = int(rng.integers(len(rows)))
        rows[k], what = _break_line(rng, rows[k])
        notes.append(f"line {k + 1 + (header is not None)}: {what}")
        bad_line = k + 1 + (header is not None) if line_mutations == 1 else None
    lines = _text(rows, sep, header)
    global_mutations = int(rng.choice([0, 0, 1, 2, 3]))
    for _ in range(global_mutations):
        roll = rng.random()
        if roll < 0.12:
            line_ends = str(rng.choice(["\r\n", "\r", "\n\n", "\r\r\n", "\n \n"]))
            notes.append(f"line ends {line_ends!r}")
        elif roll < 0.22:
            prefix = bytes(rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf\xef\xbb\xbf"]))
            notes.append(f"prefix {prefix!r}")
        elif roll < 0.32:
            where = int(rng.integers(len(lines) + 1))
            lines.insert(where, str(rng.choice(["", " ", "\t", "\xa0", "\x0c", " \t "])))
            notes.append(f"blank line inserted at {where + 1}")
        elif roll < 0.4 and header is not None:
            drop = rng.random() < 0.5
            lines = lines[1:] if drop else lines[:1]
            notes.append("header dropped" if drop else "header only")
        elif roll < 0.47:
            encoding = str(rng.choice(["latin-1", "utf-16", "cp1252"]))
            notes.append(f"encoded {encoding}")
        elif roll < 0.55:
            sep_new = str(rng.choice(SEPARATORS))
            lines = [line.replace(sep, sep_new) for line in lines]
            notes.append(f"separator {sep_new!r}")
        elif roll < 0.63:
            lines = ["\t" + line + " " for line in lines]
            notes.append("lines padded with whitespace")
        elif roll < 0.7:
            lines = [",".join(f'"{f}"' for f in line.split(sep)) for line in lines]
            notes.append("every field quoted, comma-separated")
        elif roll < 0.72:
            lines.append("9" * int(rng.integers(1000, 140_000)))
            notes.append("a very long line")
        else:
            notes.append("bytes changed later")
    text = line_ends.join(lines) + (line_ends if rng.random() < 0.8 else "")
    data = prefix + text.encode(encoding, errors="replace")
    if "bytes changed later" in notes:
        data = bytearray(data)
        roll = rng.random()
        if roll < 0.4 and data:
            del data[int(rng.integers(len(data))) :]
        elif roll < 0.7 and data:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        else:
            at = int(rng.integers(len(data) + 1))
            data[at:at] = rng.bytes(int(rng.integers(1, 8)))
        data = bytes(data)
    if global_mutations or foreign:
        bad_line = None
    if gz:
        roll = rng.random()
        data = gzip.compress(data, mtime=0) if roll < 0.85 else data if roll < 0.93 else gzip.compress(data)[:-5]
    overrides = {}
    if fmt in ("csv", "tsv") and rng.random() < 0.15:
        key = str(rng.choice(["delimiter", "user_col", "item_col", "time_col"]))
        overrides[key] = str(rng.choice([",", "\t", "\\t", "tab", ";", "::", '"', " ", "\n", "ab", "user_id", "x"]))
        notes.append(f"data.{key}={overrides[key]!r}")
        bad_line = None
    return Input(data, overrides, bad_line, "; ".join(notes) or "valid")


def run_input(reader: Reader, inp: Input, folder: Path) -> tuple[str, str]:
    """Writes `inp` into the empty `folder` and loads it: (outcome, detail). See the module docstring."""
    path = folder / reader.file
    path.write_bytes(inp.data)
    load = reader.load
    if inp.overrides:  # only file readers take them: read the config they build, with the overrides

        def load(p, d):
            return load_dataset(_data(d, "file", p, **inp.overrides))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a numpy cast that overflows: garbage accepted
            load(path, folder)
    except DataError as err:
        message = str(err)
        problems = []
        if path.name not in message:
            problems.append("does not name the file")
        lines = [int(n) for n in re.findall(r"\bline (\d+)", message)]
        if inp.bad_line is not None and lines and lines[0] != inp.bad_line:
            problems.append(f"names line {lines[0]}, the generator broke line {inp.bad_line}")
        if "cannot parse" in message:
            problems.append("no line named")
        if problems:
            return "bad_message", f"{reader.name} [{inp.note}]: {message!r}: {', '.join(problems)}"
        return "data_error", message
    except Exception:  # noqa: BLE001 - the point: anything but a DataError is a finding
        return "traceback", f"{reader.name} [{inp.note}] {inp.data[:300]!r}\n{traceback.format_exc()}"
    return "loaded", ""


def fuzz_readers(num_inputs: int, seed: int, keep: int = 5) -> dict:
    """Runs `num_inputs` inputs from `seed` (each reader of READERS in turn) and counts the outcomes.

    Returns:
        {"fuzz_inputs", "fuzz_loaded", "fuzz_data_errors", "fuzz_tracebacks", "fuzz_bad_messages",
        "fuzz_seconds", "tracebacks": the first `keep` as strings, "bad_messages": the first `keep`}.
    """
    rng = np.random.default_rng(seed)
    counts = {"loaded": 0, "data_error": 0, "traceback": 0, "bad_message": 0}
    kept: dict[str, list[str]] = {"traceback": [], "bad_message": []}
    start = time.perf_counter()
    jaxrec_log = logging.getLogger("jaxrec")
    level = jaxrec_log.level
    jaxrec_log.setLevel(logging.ERROR)  # the readers' info lines and warnings, thousands of them, say nothing here
    try:
        with tempfile.TemporaryDirectory(prefix="jaxrec-fuzz-") as tmp:
            for n in range(num_inputs):
                reader = READERS[n % len(READERS)]
                inp = make_input(rng, reader.format, gz=reader.file.endswith(".gz"))
                folder = Path(tmp) / str(n)
                folder.mkdir()
                outcome, detail = run_input(reader, inp, folder)
                counts[outcome] += 1
                if outcome in kept and len(kept[outcome]) < keep:
                    kept[outcome].append(detail)
    finally:
        jaxrec_log.setLevel(level)
    return {
        "fuzz_inputs": num_inputs,
        "fuzz_loaded": counts["loaded"],
        "fuzz_data_errors": counts["data_error"],
        "fuzz_tracebacks": counts["traceback"],
        "fuzz_bad_messages": counts["bad_message"],
        "fuzz_seconds": round(time.perf_counter() - start, 2),
        "tracebacks": kept["traceback"],
        "bad_messages": kept["bad_message"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1000, help="number of fuzz inputs")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the same seed, the same inputs)")
    parser.add_argument("--out", default="", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    result = fuzz_readers(args.inputs, args.seed)
    line = json.dumps(result)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
