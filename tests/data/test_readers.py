"""Readers: each format on small files, malformed lines, missing files and columns."""

import gzip

import numpy as np
import pytest

from jaxrec.data import (
    DataError,
    read_delimited,
    read_movielens_genres,
    read_movielens_ratings,
    read_sasrec_pairs,
)


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_sasrec_pairs_keeps_file_order(tmp_path):
    path = _write(tmp_path, "ml-1m.txt", "2 30\n1 10\n\n1  5\n2\t7")
    inter = read_sasrec_pairs(path)
    np.testing.assert_array_equal(inter.user, [2, 1, 1, 2])
    np.testing.assert_array_equal(inter.item, [30, 10, 5, 7])
    assert inter.user.dtype == np.int64 and inter.timestamp is None
    assert inter.extra == {} and inter.source == str(path)


def test_sasrec_pairs_crlf_and_single_line(tmp_path):
    inter = read_sasrec_pairs(_write(tmp_path, "a.txt", "3 4\r\n"))
    np.testing.assert_array_equal(inter.item, [4])


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2\n1 3\n3 abc\n", "ml-1m.txt line 3: item id 'abc' is not an integer"),
        ("1 2\n\n3 4 5\n", "ml-1m.txt line 3: expected 2 whitespace-separated fields, got 3"),
        ("1 2\n7\n", "ml-1m.txt line 2: expected 2 whitespace-separated fields, got 1"),
        ("1.5 2\n", "ml-1m.txt line 1: user id '1.5' is not an integer"),
        ("1 99999999999999999999\n", "line 1: item id '99999999999999999999' does not fit in int64"),
    ],
)
def test_sasrec_pairs_malformed(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_sasrec_pairs(_write(tmp_path, "ml-1m.txt", text))


def test_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope" / "ml-1m.txt"
    with pytest.raises(DataError, match="nope/ml-1m.txt: file not found"):
        read_sasrec_pairs(missing)
    with pytest.raises(DataError, match="ratings.dat: file not found"):
        read_movielens_ratings(tmp_path / "ratings.dat")
    with pytest.raises(DataError, match="no data lines"):
        read_sasrec_pairs(_write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(DataError, match="log.csv: no data lines"):
        read_delimited(_write(tmp_path, "log.csv", "user_id,item_id"), "user_id", "item_id")


RATINGS = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"


def test_movielens_ratings(tmp_path):
    inter = read_movielens_ratings(_write(tmp_path, "ratings.dat", RATINGS))
    np.testing.assert_array_equal(inter.user, [1, 1, 2])
    np.testing.assert_array_equal(inter.item, [1193, 661, 1193])
    np.testing.assert_array_equal(inter.timestamp, [978300760, 978302109, 978298413])
    np.testing.assert_array_equal(inter.extra["rating"], [5, 3, 4])
    assert inter.extra["rating"].dtype == np.int64


def test_movielens_ratings_gz_and_half_stars(tmp_path):
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(gzip.compress(b"1::2::4.5::10\n"))
    inter = read_movielens_ratings(path)
    assert inter.extra["rating"].dtype == np.float64 and inter.extra["rating"][0] == 4.5


@pytest.mark.parametrize(
    "line, message",
    [
        ("1::2::3", "ratings.dat line 3: expected 4 '::'-separated fields, got 3"),
        ("1::2::3::x", "ratings.dat line 3: timestamp 'x' is not an integer"),
        ("1::m::3::4", "ratings.dat line 3: movie id 'm' is not an integer"),
        ("1::2::bad::4", "ratings.dat line 3: rating 'bad' is not a number"),
    ],
)
def test_movielens_ratings_malformed(tmp_path, line, message):
    text = "1::1::5::1\n1::2::4::2\n" + line + "\n2::1::3::9\n"
    with pytest.raises(DataError, match=message):
        read_movielens_ratings(_write(tmp_path, "ratings.dat", text))


def test_movielens_genres(tmp_path):
    text = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Café Noir (1999)::Drama\n3::X::(no genres listed)\n"
    genres = read_movielens_genres(_write(tmp_path, "movies.dat", text, encoding="latin-1"))
    assert genres == {1: ["Animation", "Children's", "Comedy"], 2: ["Drama"], 3: []}
    with pytest.raises(DataError, match="movies.dat line 2: expected 3"):
        read_movielens_genres(_write(tmp_path, "movies.dat", "1::A::Drama\n2::B\n"))


def test_delimited_csv_with_extras(tmp_path):
    text = 'rating,item_id,title,user_id,ts,score\n5,10,"Heat, 1995",2,300,0.5\n3,11,Up,1,100,1\n'
    inter = read_delimited(_write(tmp_path, "log.csv", text), "user_id", "item_id", "ts")
    np.testing.assert_array_equal(inter.user, [2, 1])
    np.testing.assert_array_equal(inter.item, [10, 11])
    np.testing.assert_array_equal(inter.timestamp, [300, 100])
    assert sorted(inter.extra) == ["rating", "score", "title"]
    assert inter.extra["rating"].dtype == np.int64
    assert inter.extra["score"].dtype == np.float64
    assert inter.extra["title"].tolist() == ["Heat, 1995", "Up"]


def test_delimited_tsv_without_time(tmp_path):
    inter = read_delimited(_write(tmp_path, "log.tsv", "u\ti\n1\t2\n1\t3\n"), "u", "i", "")
    np.testing.assert_array_equal(inter.item, [2, 3])
    assert inter.timestamp is None and inter.extra == {}
    inter = read_delimited(_write(tmp_path, "log.txt", "u;i\n4;5\n"), "u", "i", delimiter=";")
    np.testing.assert_array_equal(inter.user, [4])


def test_delimited_missing_column_lists_header(tmp_path):
    path = _write(tmp_path, "log.csv", "user_id,item_id\n1,2\n")
    with pytest.raises(
        DataError, match=r"column 'timestamp' \(data.time_col\) is not in the header \['user_id', 'item_id'\]"
    ):
        read_delimited(path, "user_id", "item_id", "timestamp")
    with pytest.raises(DataError, match="column 'uid'"):
        read_delimited(path, "uid", "item_id")


@pytest.mark.parametrize(
    "body, message",
    [
        ("1,2,3\n4,x,6\n", r"log.csv line 3: item id \(item_id\) 'x' is not an integer"),
        ("1,2,3\n4,5\n", "log.csv line 3: expected 3 ','-separated fields, got 2"),
        ("1,2,3\n4,5,2020-01-01\n", r"line 3: timestamp \(ts\) '2020-01-01' is not an integer"),
        ("1,2,3\n4,5,6,x\n", "log.csv line 3: expected 3 ','-separated fields, got 4"),
    ],
)
def test_delimited_malformed(tmp_path, body, message):
    path = _write(tmp_path, "log.csv", "user_id,item_id,ts\n" + body)
    with pytest.raises(DataError, match=message):
        read_delimited(path, "user_id", "item_id", "ts")
