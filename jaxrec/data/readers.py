"""Readers for interaction-log file formats.

Every reader returns an `Interactions` log with raw ids. Parsing goes through numpy's C
`loadtxt` (ML-1M's 1M lines in well under a second); only when that fails is the text
scanned line by line, so that the `DataError` names the first bad line (1-based) and value.
Blank lines are skipped. A path ending in `.gz` is decompressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxrec.data.types import DataError, Interactions

# Stands in for the two-character '::' separator, which loadtxt cannot take; never in text files.
_UNIT_SEP = "\x1f"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _read_text(path: str | os.PathLike, encoding: str) -> str:
    """Returns the decoded text of `path` (gunzipped for `.gz`), with '\\n' line ends."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found" if not p.exists() else f"{path}: not a file")
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path} line {line}: not valid {encoding} text ({exc.reason})") from None
    return text.replace("\r\n", "\n") if "\r" in text else text


def _value_problem(value: str, kind: str) -> str | None:
    """Says what is wrong with `value` as a `kind` ('int', 'float' or 'auto'), or None."""
    if kind == "int":
        try:
            number = int(value)
        except ValueError:
            return "is not an integer"
        if not _INT64_MIN <= number <= _INT64_MAX:
            return "does not fit in int64"
    elif kind == "float":
        try:
            float(value)
        except ValueError:
            return "is not a number"
    return None


def _split_line(line: str, sep: str | None, quoted: bool) -> list[str]:
    if quoted:
        return next(csv.reader([line], delimiter=sep))
    return line.split(sep) if sep is not None else line.split()


def _raise_first_bad_line(
    text: str, source: str, sep: str | None, fields: Sequence[tuple[str, str]], header_lines: int, quoted: bool
) -> None:
    """Scans `text` line by line and raises a DataError for the first malformed line."""
    sep_name = {None: "whitespace", "\t": "tab"}.get(sep, repr(sep))
    for lineno, line in enumerate(text.split("\n"), start=1):
        if lineno <= header_lines or not line.strip():
            continue
        parts = _split_line(line, sep, quoted)
        if len(parts) != len(fields):
            raise DataError(
                f"{source} line {lineno}: expected {len(fields)} {sep_name}-separated fields, got {len(parts)}"
            )
        for (label, kind), value in zip(fields, parts, strict=True):
            problem = _value_problem(value.strip(), kind)
            if problem:
                raise DataError(f"{source} line {lineno}: {label} {value.strip()!r} {problem}")


def _convert(column: np.ndarray, kind: str) -> np.ndarray:
    """Converts a str column; 'auto' tries int64, then float64, else keeps the strings."""
    if kind == "int":
        return column.astype(np.int64)
    if kind == "float":
        return column.astype(np.float64)
    for dtype in (np.int64, np.float64):
        try:
            return column.astype(dtype)
        except (ValueError, OverflowError):
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
    load_text, load_sep = text, sep
    if sep == "::":
        if _UNIT_SEP in text:
            _raise_first_bad_line(text, source, sep, fields, header_lines, quoted)
        load_text, load_sep = text.replace("::", _UNIT_SEP), _UNIT_SEP
    kwargs = {"delimiter": load_sep, "skiprows": header_lines, "comments": None, "quotechar": '"' if quoted else None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if all(kind in ("int", "float") for _, kind in fields):
                dtype = np.dtype([(f"f{j}", np.int64 if k == "int" else np.float64) for j, (_, k) in enumerate(fields)])
                table = np.loadtxt(io.StringIO(load_text), dtype=dtype, ndmin=1, **kwargs)
                return [np.ascontiguousarray(table[f"f{j}"]) for j in range(len(fields))]
            table = np.loadtxt(io.StringIO(load_text), dtype=str, ndmin=2, **kwargs)
            if table.shape[1] != len(fields):
                raise ValueError(f"expected {len(fields)} columns, got {table.shape[1]}")
            return [_convert(table[:, j], kind) for j, (_, kind) in enumerate(fields)]
    except (ValueError, OverflowError) as exc:
        _raise_first_bad_line(text, source, sep, fields, header_lines, quoted)
        raise DataError(f"{source}: cannot parse: {exc}") from None


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
    if np.all(rating == np.round(rating)):
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
        if _value_problem(parts[0].strip(), "int"):
            raise DataError(f"{movies_path} line {lineno}: movie id {parts[0]!r} is not an integer")
        # Titles never hold '::' in GroupLens files, but the genres are the last field regardless.
        names = parts[-1].strip().split("|")
        genres[int(parts[0])] = [g for g in names if g and g != "(no genres listed)"]
    return genres


def _resolve_delimiter(path: str | os.PathLike, delimiter: str) -> str:
    if delimiter:
        # Command lines deliver a tab as the two characters '\t'.
        return {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)
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
        delimiter: field separator; "" = ',' for .csv, tab otherwise.

    Returns:
        The log; every other column is kept in `extra` (int64, float64 or str).
    """
    source = str(path)
    sep = _resolve_delimiter(path, delimiter)
    text = _read_text(path, "utf-8-sig")
    header_line = text.split("\n", 1)[0]
    if not header_line.strip():
        raise DataError(f"{source} line 1: expected a header row naming the columns, got an empty line")
    header = [name.strip() for name in _split_line(header_line, sep, quoted=True)]
    if user_col == item_col:
        raise DataError(f"{source}: data.user_col and data.item_col are both {user_col!r}")
    wanted = {"data.user_col": user_col, "data.item_col": item_col}
    if time_col:
        wanted["data.time_col"] = time_col
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
