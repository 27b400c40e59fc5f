"""Readers for interaction-log file formats.

Every reader returns an `Interactions` log with raw ids. Parsing goes through numpy's C
`loadtxt` (ML-1M's 1M lines in well under a second); only when that fails is the text
parsed line by line in Python, which either loads it (a text loadtxt cannot take but that is
well-formed, e.g. whitespace-only lines in a CSV) or raises a `DataError` naming the first bad
line (1-based) and value. Ids and timestamps are ASCII decimal integers that fit in int64; a
rating is a finite decimal number. Blank lines are skipped; CRLF and lone CR line ends and a
UTF-8 byte-order mark are accepted. A path ending in `.gz` is decompressed.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxrec.data.types import DataError, Interactions

# Stands in for the two-character '::' separator, which loadtxt cannot take; never in text files.
_UNIT_SEP = "\x1f"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# What loadtxt takes as a number; Python's int() and float() also take '1_000', non-ASCII digits, 'inf'.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Characters past the BMP: numpy's loadtxt crashes the process on some (U+50000 and up) in a number field.
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _read_text(path: str | os.PathLike, encoding: str) -> str:
    """Returns the decoded text of `path` (gunzipped for `.gz`), with '\\n' line ends."""
    p = Path(path)
    try:
        is_file, exists = p.is_file(), p.exists()
    except OSError as exc:  # e.g. a name too long
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not is_file:
        raise DataError(f"{path}: file not found" if not exists else f"{path}: not a file")
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} line 1: UTF-16 or UTF-32 text (it starts with a byte-order mark); save it as UTF-8")
    raw = raw.removeprefix(codecs.BOM_UTF8)  # a UTF-8 mark in front of a Latin-1 format's ASCII digits too
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path} line {line}: not valid {encoding} text ({exc.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _integer(value: str) -> int:
    """int() of an `_INTEGER` string; int() itself refuses over 4300 digits, leading zeros included."""
    digits = value.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 20:
        return _INT64_MAX + 1  # out of range whatever it is
    return -int(digits) if value.startswith("-") else int(digits)


def _value_problem(value: str, kind: str) -> str | None:
    """Says what is wrong with `value` as a `kind` ('int', 'float' or 'auto'), or None."""
    if kind == "int":
        if not _INTEGER.fullmatch(value):
            return "is not an integer"
        if not _INT64_MIN <= _integer(value) <= _INT64_MAX:
            return "does not fit in int64"
    elif kind == "float":
        if not _DECIMAL.fullmatch(value):
            return "is not a number"
        if not np.isfinite(float(value)):
            return "is not a finite number"
    return None


def _shown(value: str, limit: int = 60) -> str:
    """`value` for a message: quoted, and cut after `limit` characters."""
    return repr(value[:limit]) + (f"... ({len(value)} characters)" if len(value) > limit else "")


def _records(text: str, source: str, sep: str | None, quoted: bool):
    """Yields (1-based line, fields) for each non-blank record of `text`; a CSV record may span lines."""
    if not quoted:
        for lineno, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                yield lineno, line.split(sep) if sep is not None else line.split()
        return
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    lineno = 1
    try:
        for parts in reader:
            if len(parts) > 1 or (parts and parts[0].strip()):
                yield lineno, parts
            lineno = reader.line_num + 1
    except csv.Error as exc:  # e.g. a field over csv's size limit
        raise DataError(f"{source} line {lineno}: {exc}") from None


def _scan_table(
    text: str, source: str, sep: str | None, fields: Sequence[tuple[str, str]], header_lines: int, quoted: bool
) -> list[np.ndarray]:
    """The slow path of `_parse_table`: parses `text` record by record in Python.

    Raises:
        DataError: for the first malformed line, naming it, the field and the value.
    """
    sep_name = {None: "whitespace", "\t": "tab"}.get(sep, repr(sep))
    columns: list[list[str]] = [[] for _ in fields]
    for lineno, parts in _records(text, source, sep, quoted):
        if lineno <= header_lines:
            continue
        if len(parts) != len(fields):
            raise DataError(
                f"{source} line {lineno}: expected {len(fields)} {sep_name}-separated fields, got {len(parts)}"
            )
        for (label, kind), value, column in zip(fields, parts, columns, strict=True):
            value = value.strip()
            problem = _value_problem(value, kind)
            if problem:
                raise DataError(f"{source} line {lineno}: {label} {_shown(value)} {problem}")
            column.append(value)
    if not columns[0]:
        raise DataError(f"{source}: no data lines")
    numbers = {"int": (_integer, np.int64), "float": (float, np.float64)}
    return [
        np.array([numbers[kind][0](v) for v in column], numbers[kind][1])
        if kind in numbers
        else _convert(np.array(column, dtype=str), kind)
        for column, (_, kind) in zip(columns, fields, strict=True)
    ]


def _convert(column: np.ndarray, kind: str) -> np.ndarray:
    """Converts a str column; 'auto' tries int64, then float64, else keeps the strings."""
    if kind == "int":
        return column.astype(np.int64)
    if kind == "float":
        return column.astype(np.float64)
    for dtype in (np.int64, np.float64):
        try:
            return column.astype(dtype)
        except (ValueError, OverflowError, TypeError):
            pass
    return column


def _parse_table(
    text: str,
    source: str,
    sep: str | None,
    fields: Sequence[tuple[str, str]],
    header_lines: int = 0,
    quoted: bool = False,
) -> list[np.ndarray]:
    """Parses one record per line into one array per field.

    Args:
        text: the whole file, '\\n' line ends.
        source: file name for messages.
        sep: field separator; None = runs of whitespace; '::' is supported.
        fields: (label, kind) per column; kind is 'int' (int64), 'float' (float64) or 'auto'.
        header_lines: leading lines to skip.
        quoted: honour '"' quoting (CSV).

    Returns:
        One (N,) array per field.
    """
    parts = text.split("\n", header_lines)
    if len(parts) <= header_lines or not parts[header_lines].strip():
        raise DataError(f"{source}: no data lines")
    if sep == "::" and _UNIT_SEP in text:  # the stand-in below would be ambiguous
        return _scan_table(text, source, sep, fields, header_lines, quoted)
    if not text.isascii() and _ASTRAL.search(text):  # loadtxt can segfault on these (numpy 2.4)
        return _scan_table(text, source, sep, fields, header_lines, quoted)
    load_text, load_sep = (text.replace("::", _UNIT_SEP), _UNIT_SEP) if sep == "::" else (text, sep)
    kwargs = {"delimiter": load_sep, "skiprows": header_lines, "comments": None, "quotechar": '"' if quoted else None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if all(kind in ("int", "float") for _, kind in fields):
                dtype = np.dtype([(f"f{j}", np.int64 if k == "int" else np.float64) for j, (_, k) in enumerate(fields)])
                table = np.loadtxt(io.StringIO(load_text), dtype=dtype, ndmin=1, **kwargs)
                columns = [np.ascontiguousarray(table[f"f{j}"]) for j in range(len(fields))]
            else:
                table = np.loadtxt(io.StringIO(load_text), dtype=str, ndmin=2, **kwargs)
                if table.shape[1] != len(fields):
                    raise ValueError(f"expected {len(fields)} columns, got {table.shape[1]}")
                columns = [_convert(table[:, j], kind) for j, (_, kind) in enumerate(fields)]
    except (ValueError, OverflowError):
        return _scan_table(text, source, sep, fields, header_lines, quoted)
    # loadtxt takes 'nan' and 'inf' as numbers: the scan names the line of a non-finite rating.
    finite = all(np.isfinite(c).all() for c, (_, kind) in zip(columns, fields, strict=True) if kind == "float")
    if not len(columns[0]) or not finite:
        return _scan_table(text, source, sep, fields, header_lines, quoted)
    return columns


def read_sasrec_pairs(path: str | os.PathLike) -> Interactions:
    """Reads SASRec's `user item` lines (whitespace-separated integers).

    The file order is the chronological order within a user, so `timestamp` is None.
    """
    source = str(path)
    text = _read_text(path, "latin-1")
    user, item = _parse_table(text, source, None, [("user id", "int"), ("item id", "int")])
    return Interactions(user=user, item=item, timestamp=None, extra={}, source=source)


def read_movielens_ratings(path: str | os.PathLike) -> Interactions:
    """Reads MovieLens `UserID::MovieID::Rating::Timestamp` lines (Latin-1, optionally .gz).

    The rating is kept in `extra["rating"]`: int64 when every rating is whole (ML-1M),
    float64 otherwise (half stars, ML-10M).
    """
    source = str(path)
    text = _read_text(path, "latin-1")
    fields = [("user id", "int"), ("movie id", "int"), ("rating", "float"), ("timestamp", "int")]
    user, item, rating, timestamp = _parse_table(text, source, "::", fields)
    if np.all(rating == np.round(rating)) and np.all(np.abs(rating) < 2**53):  # whole and exact in int64
        rating = rating.astype(np.int64)
    return Interactions(user=user, item=item, timestamp=timestamp, extra={"rating": rating}, source=source)


def read_movielens_genres(movies_path: str | os.PathLike) -> dict[int, list[str]]:
    """Reads `MovieID::Title::Genre1|Genre2` lines (movies.dat, Latin-1) into id -> genres."""
    text = _read_text(movies_path, "latin-1")
    genres: dict[int, list[str]] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 3:
            raise DataError(
                f"{movies_path} line {lineno}: expected 3 '::'-separated fields "
                f"(MovieID::Title::Genres), got {len(parts)}"
            )
        problem = _value_problem(parts[0].strip(), "int")
        if problem:
            raise DataError(f"{movies_path} line {lineno}: movie id {_shown(parts[0].strip())} {problem}")
        # Titles never hold '::' in GroupLens files, but the genres are the last field regardless.
        names = parts[-1].strip().split("|")
        genres[_integer(parts[0].strip())] = [g for g in names if g and g != "(no genres listed)"]
    return genres


def _resolve_delimiter(path: str | os.PathLike, delimiter: str) -> str:
    if delimiter:
        # Command lines deliver a tab as the two characters '\t'.
        sep = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
        if len(sep) != 1 or sep in '"\n\r\x00':
            raise DataError(
                f"{path}: data.delimiter {delimiter!r} must be one character (or '\\t'), not a quote or a line end"
            )
        return sep
    name = Path(path).name.lower().removesuffix(".gz")
    return "," if name.endswith(".csv") else "\t"


def read_delimited(
    path: str | os.PathLike, user_col: str, item_col: str, time_col: str = "", delimiter: str = ""
) -> Interactions:
    """Reads a CSV/TSV file whose first line is a header naming the columns.

    Args:
        path: the file (.csv, .tsv, .txt, optionally .gz).
        user_col: header name of the user id column (integers).
        item_col: header name of the item id column (integers).
        time_col: header name of the timestamp column (integers); "" = file order.
        delimiter: one-character field separator (or "\\t"); "" = ',' for .csv, tab otherwise.

    Returns:
        The log; every other column is kept in `extra` (int64, float64 or str).
    """
    source = str(path)
    sep = _resolve_delimiter(path, delimiter)
    text = _read_text(path, "utf-8-sig")
    header_line = text.split("\n", 1)[0]
    if not header_line.strip():
        raise DataError(f"{source} line 1: expected a header row naming the columns, got an empty line")
    header = [name.strip() for name in next(_records(header_line, source, sep, quoted=True), (1, []))[1]]
    wanted = {"data.user_col": user_col, "data.item_col": item_col}
    if time_col:
        wanted["data.time_col"] = time_col
    for key, column in wanted.items():
        same = [other for other, col in wanted.items() if col == column and other != key]
        if same:
            raise DataError(f"{source}: {key} and {same[0]} are both {column!r}; each names its own column")
    for key, column in wanted.items():
        if column not in header:
            hint = ' (set data.time_col="" to use the file order)' if key == "data.time_col" else ""
            raise DataError(
                f"{source}: column {column!r} ({key}) is not in the header {header} (delimiter {sep!r}){hint}"
            )
    roles = {
        header.index(col): role for role, col in (("user", user_col), ("item", item_col), ("time", time_col)) if col
    }
    labels = {"user": f"user id ({user_col})", "item": f"item id ({item_col})", "time": f"timestamp ({time_col})"}
    fields = [(labels[roles[j]], "int") if j in roles else (name, "auto") for j, name in enumerate(header)]
    columns = _parse_table(text, source, sep, fields, header_lines=1, quoted=True)
    by_role = {role: columns[j] for j, role in roles.items()}
    extra = {header[j]: col for j, col in enumerate(columns) if j not in roles}
    return Interactions(
        user=by_role["user"], item=by_role["item"], timestamp=by_role.get("time"), extra=extra, source=source
    )


def read_movielens_users(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads MovieLens `UserID::Gender::Age::Occupation::Zip-code` lines (users.dat, Latin-1).

    Returns:
        {"user": int64 raw ids, "gender": str, "age": int64 age-group codes, "occupation": int64 codes,
        "zip": str}, one (U,) array each, in file order.
    """
    source = str(path)
    text = _read_text(path, "latin-1")
    fields = [("user id", "int"), ("gender", "auto"), ("age", "int"), ("occupation", "int"), ("zip-code", "auto")]
    user, gender, age, occupation, zip_code = _parse_table(text, source, "::", fields)
    return {
        "user": user,
        "gender": gender.astype(str),
        "age": age,
        "occupation": occupation,
        "zip": zip_code.astype(str),
    }
