"""Fuzzed readers: every file loads or raises a DataError naming the file (and the bad line); nothing else.

The inputs come from hypothesis (derandomized: the same examples on every run) and from the seeded generator
of benchmarks/fuzz_readers.py; a few bad files also go through train.py, which must print one `error:` line.
"""

import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_readers import NASTY, READERS, Input, fuzz_readers, run_input
from jaxrec.config import DataConfig
from jaxrec.data import DataError, load_dataset, read_delimited, read_movielens_ratings, read_sasrec_pairs, readers
from tests.conftest import REPO

# Reproducible in CI: derandomized examples, no example database, no per-example deadline (first calls import).
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
INT64 = st.integers(-(2**63), 2**63 - 1)
# A field value: an integer (some beyond int64), a known troublemaker, or any short text.
TOKEN = st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(NASTY), st.text(max_size=4))
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


def _through_every_reader(data: bytes) -> None:
    """Writes `data` as the fuzzed file of each reader and asserts it loads or raises a good DataError."""
    with tempfile.TemporaryDirectory() as tmp:
        for n, reader in enumerate(READERS):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            outcome, detail = run_input(reader, Input(data, {}, None, "hypothesis"), folder)
            assert outcome in ("loaded", "data_error"), detail


@settings(FUZZ, max_examples=80)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _through_every_reader(data)


@settings(FUZZ, max_examples=80)
@given(
    rows=st.lists(st.lists(TOKEN, max_size=7), max_size=6),
    sep=st.sampled_from([" ", "\t", ",", "::", ";", ""]),
    end=LINE_ENDS,
    bom=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"]),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_token_soup(rows, sep, end, bom, encoding):
    text = end.join(sep.join(row) for row in rows)
    _through_every_reader(bom + text.encode(encoding, errors="replace"))


def _int64(value: str) -> int | None:
    """The integer `value` spells in ASCII decimal, if it fits in int64 (leading zeros allowed), else None."""
    digits = value.lstrip("+-").lstrip("0") or "0"
    if not re.fullmatch(r"[+-]?[0-9]+", value) or len(digits) > 19:
        return None
    number = -int(digits) if value.startswith("-") else int(digits)
    return number if -(2**63) <= number < 2**63 else None


def _read_csv(path):
    return read_delimited(path, "user_id", "item_id", "timestamp")


FORMATS = {  # name: (file, separator, header, reader)
    "pairs": ("ml-1m.txt", " ", None, read_sasrec_pairs),
    "ratings": ("ratings.dat", "::", None, read_movielens_ratings),
    "csv": ("log.csv", ",", "user_id,item_id,timestamp", _read_csv),
}


@settings(FUZZ, max_examples=300)
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    users=st.lists(INT64, min_size=1, max_size=8),
    data=st.data(),
    token=TOKEN.filter(lambda t: "\n" not in t and "\r" not in t),
)
def test_one_broken_id_is_named_or_is_an_integer(fmt, users, data, token):
    """Break the user id of one line: the file loads with exactly that int64, or the error names that line."""
    name, sep, header, read = FORMATS[fmt]
    k = data.draw(st.integers(0, len(users) - 1))
    fields = [[str(u), "7", "4", "978300760"][: 2 if fmt == "pairs" else 4] for u in users]
    fields = [f[:2] + f[3:] if fmt == "csv" else f for f in fields]
    fields[k][0] = token
    lines = ([header] if header else []) + [sep.join(f) for f in fields]
    bad_line = k + 1 + (header is not None)
    encoding = "utf-8" if fmt == "csv" else "latin-1"
    data = "\n".join(lines).encode(encoding, errors="replace")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            inter = read(path)
        except DataError as err:
            assert str(err).startswith(f"{path} line {bad_line}: "), (token, str(err))
            return
    line = data.decode(encoding).split("\n")[bad_line - 1]
    value = (next(csv.reader([line])) if fmt == "csv" else line.split(sep) if sep != " " else line.split())[0].strip()
    assert _int64(value) is not None and inter.user[k] == _int64(value), (token, inter.user)  # no garbage accepted
    np.testing.assert_array_equal(np.delete(inter.user, k), np.delete(np.array(users, np.int64), k))


@settings(FUZZ, max_examples=40)
@given(
    end=LINE_ENDS,
    bom=st.booleans(),
    blank=st.sampled_from(["", " ", "\t", "\xa0"]),
    pad=st.sampled_from(["", " ", "\t"]),
    fmt=st.sampled_from(sorted(FORMATS)),
)
def test_line_ends_bom_blank_lines_and_padding_read_like_the_plain_file(end, bom, blank, pad, fmt):
    name, sep, header, read = FORMATS[fmt]
    rows = [["1", "10", "5"], ["2", "-3", "4"], ["9223372036854775807", "-9223372036854775808", "3"]]
    rows = [r + ["978300760"] if fmt == "ratings" else r[:2] if fmt == "pairs" else r for r in rows]
    lines = ([header] if header else []) + [pad + sep.join(r) + pad for r in rows]
    lines.insert(len(lines) - 1, blank)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        text = (end.join(lines) + end).encode("utf-8" if fmt == "csv" else "latin-1")
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text)
        inter = read(path)
    np.testing.assert_array_equal(inter.user, [1, 2, 2**63 - 1])
    np.testing.assert_array_equal(inter.item, [10, -3, -(2**63)])


@settings(FUZZ, max_examples=100)
@given(
    delimiter=st.one_of(st.text(max_size=3), st.sampled_from(["\\t", "tab", "::", '"'])),
    cols=st.lists(st.sampled_from(["user_id", "item_id", "timestamp", "x", ""]), min_size=3, max_size=3),
)
def test_delimited_settings(delimiter, cols):
    user_col, item_col, time_col = cols
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.csv"
        path.write_text("user_id,item_id,timestamp\n1,2,3\n4,5,6\n")
        try:
            read_delimited(path, user_col, item_col, time_col, delimiter)
        except DataError as err:
            assert str(path) in str(err)


TABLES = [  # (separator, fields, header lines, quoted) of each reader's _parse_table call
    (None, [("user id", "int"), ("item id", "int")], 0, False),
    ("::", [("user id", "int"), ("movie id", "int"), ("rating", "float"), ("timestamp", "int")], 0, False),
    ("::", [("user id", "int"), ("gender", "auto"), ("age", "int"), ("zip-code", "auto")], 0, False),
    (",", [("user id", "int"), ("item id", "int"), ("title", "auto")], 1, True),
    ("\t", [("user id", "int"), ("item id", "int")], 1, True),
]


@settings(FUZZ, max_examples=300)
@given(
    table=st.sampled_from(TABLES),
    rows=st.lists(st.lists(st.one_of(TOKEN, st.sampled_from(['" 2"', '"3" ', '"4"x', '""'])), min_size=1, max_size=5)),
    end=st.sampled_from(["\n", "\n\n"]),
)
def test_fast_path_agrees_with_the_line_by_line_parse(table, rows, end):
    """numpy's loadtxt (fast) and the Python scan (slow, names lines) accept the same texts with the same ids."""
    sep, fields, header_lines, quoted = table
    text = end.join(["header"] * header_lines + [(sep or " ").join(row) for row in rows]) + "\n"
    outcomes = []
    for parse in (readers._parse_table, readers._scan_table):
        try:
            outcomes.append(parse(text, "f", sep, fields, header_lines, quoted))
        except DataError as err:
            outcomes.append(str(err))
    fast, slow = outcomes
    assert isinstance(fast, str) == isinstance(slow, str), (text, fast, slow)
    if not isinstance(fast, str):
        for (_, kind), a, b in zip(fields, fast, slow):
            assert a.dtype.kind == b.dtype.kind, (text, fast, slow)  # str widths may differ
            if kind != "auto":
                np.testing.assert_array_equal(a, b, err_msg=repr(text))


@pytest.mark.parametrize("name", ["ml-1m-sasrec", "ml-1m", "ml-1m-partial", "beauty-bert4rec", "file"])
def test_unusable_paths(tmp_path, name):
    """A missing file, a folder, a NUL or an over-long name in data.path: a DataError naming the path."""
    for path in (tmp_path / "missing.csv", tmp_path, f"{tmp_path}/a\x00b.csv", f"{tmp_path}/{'y' * 300}/r.csv"):
        with pytest.raises(DataError, match=re.escape(str(path)[:40])):
            load_dataset(DataConfig(name=name, path=str(path), data_dir=str(tmp_path), cache_dir=str(tmp_path)))


def test_seeded_generator_smoke():
    result = fuzz_readers(50, 0)
    assert result["fuzz_inputs"] == 50 and result["fuzz_tracebacks"] == 0, result["tracebacks"]
    assert result["fuzz_bad_messages"] == 0, result["bad_messages"]
    assert result["fuzz_loaded"] + result["fuzz_data_errors"] == 50
    assert fuzz_readers(50, 0)["fuzz_loaded"] == result["fuzz_loaded"]  # the seed fixes the inputs


BAD_FILES = [  # (data.name, file, contents, what the error line says after the path)
    ("file", "bad.csv", b"user_id,item_id,timestamp\n1,2,3\r\n1,x,4\r\n", "line 3: item id (item_id) 'x'"),
    ("ml-1m-sasrec", "bad.txt", b"1 2\n\n1 3 4\n", "line 3: expected 2 whitespace-separated fields"),
    ("ml-1m", "ratings.dat", b"1::2::5::978300760\n1::3::inf::978300761\n", "line 2: rating 'inf'"),
]


def test_train_py_prints_one_error_line_per_bad_file(tmp_path):
    """train.py on each bad file: exit 2, one `error: <file> line N: ...` line, no traceback, no run files."""
    runs = []
    for n, (name, file, data, where) in enumerate(BAD_FILES):
        path = tmp_path / str(n) / file
        path.parent.mkdir()
        path.write_bytes(data)
        workdir = tmp_path / str(n) / "run"
        args = ["--config", "configs/sasrec_synthetic.py", "--workdir", str(workdir), "--set", f"data.name={name}"]
        args += ["--set", f"data.path={path}", "--set", "data.time_col="]
        command = [sys.executable, "train.py", *args]
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((proc, path, where, workdir))  # the runs overlap: each spends seconds importing jax
    for proc, path, where, workdir in runs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path} {where}"), err
        assert out == ""
        assert not workdir.exists() or not any(workdir.iterdir())
