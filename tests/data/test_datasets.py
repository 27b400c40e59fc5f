"""Registry, local copies, the verified download cache, and the real ML-1M (SASRec) data."""

import hashlib
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxrec.config import DataConfig
from jaxrec.data import (
    DataError,
    datasets,
    default_cache_dir,
    default_data_dir,
    fetch,
    load_dataset,
)
from jaxrec.tasks.next_item.split import leave_one_out, sample_eval_negatives


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # Never read the user's data folder or write to ~/.cache from these tests.
    monkeypatch.delenv("JAXREC_DATA", raising=False)
    monkeypatch.setenv("JAXREC_CACHE", str(tmp_path / "env-cache"))


def _sha256(data: bytes) -> tuple[str, str]:
    return ("sha256", hashlib.sha256(data).hexdigest())


def test_fetch_verifies_and_reuses_cache(tmp_path):
    source = tmp_path / "src" / "ml-1m.txt"
    source.parent.mkdir()
    source.write_bytes(b"1 1\n1 2\n")
    cache = tmp_path / "cache"
    path = fetch(source.as_uri(), _sha256(b"1 1\n1 2\n"), cache)
    assert path == cache / "ml-1m.txt" and path.read_bytes() == b"1 1\n1 2\n"
    source.unlink()  # the second call must not need the source
    assert fetch(source.as_uri(), _sha256(b"1 1\n1 2\n"), cache) == path
    assert sorted(p.name for p in cache.iterdir()) == ["ml-1m.txt"]
    md5 = ("md5", hashlib.md5(b"1 1\n1 2\n").hexdigest())
    assert fetch(source.as_uri(), md5, cache) == path


def test_fetch_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "data.zip"
    source.write_bytes(b"payload")
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(DataError, match=f"expected {wrong}") as info:
        fetch(source.as_uri(), ("sha256", wrong), cache)
    assert hashlib.sha256(b"payload").hexdigest() in str(info.value)
    assert list(cache.iterdir()) == []


def test_fetch_rechecks_cached_file(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "f.txt").write_bytes(b"tampered")
    with pytest.raises(DataError, match="cached copy .* delete it"):
        fetch((tmp_path / "f.txt").as_uri(), _sha256(b"original"), cache)


def test_fetch_unreachable_says_how_to_provide_a_copy(tmp_path):
    url = (tmp_path / "absent.txt").as_uri()
    with pytest.raises(DataError, match="could not fetch .*absent.txt.*JAXREC_DATA"):
        fetch(url, _sha256(b""), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_default_dirs(monkeypatch, tmp_path):
    assert default_data_dir("/some/where") == "/some/where"
    monkeypatch.setenv("JAXREC_DATA", str(tmp_path))
    assert default_data_dir("") == str(tmp_path)
    monkeypatch.delenv("JAXREC_DATA")
    shared = Path(datasets.__file__).resolve().parents[2] / ".." / "shared" / "data"
    assert default_data_dir("") == (str(shared.resolve()) if shared.is_dir() else None)
    assert default_cache_dir("x/y") == Path("x/y")
    assert default_cache_dir("") == tmp_path / "env-cache"


def test_registry_errors():
    with pytest.raises(DataError, match="unknown dataset 'nope'.*ml-1m-sasrec, ml-1m, ml-1m-partial, beauty-bert4rec"):
        load_dataset(DataConfig(name="nope"))
    with pytest.raises(DataError, match="needs data.path"):
        load_dataset(DataConfig(name="file"))


def test_load_file_with_kcore(tmp_path):
    rows = ["user_id,item_id,timestamp"] + [f"{u},{i},{u * 10 + i}" for u in (1, 2, 3) for i in (5, 6, 7)]
    rows.append("4,8,1")  # removed by the k-core filter
    path = tmp_path / "clicks.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(name="file", path=str(path), min_user_interactions=2, min_item_interactions=2)
    ds = load_dataset(cfg)
    assert ds.name == "clicks" and ds.num_users == 3 and ds.num_items == 3
    assert ds.sequences[0].tolist() == [1, 2, 3] and ds.timestamps[0].tolist() == [15, 16, 17]


def test_load_synthetic_is_deterministic():
    cfg = DataConfig(name="synthetic", synthetic_users=50, synthetic_items=40, synthetic_mean_length=8, seed=3)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.num_users == 50 and a.item_genres
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))


def _sasrec_tree(root: Path) -> Path:
    (root / "sasrec-format").mkdir(parents=True)
    (root / "ml-1m").mkdir()
    (root / "sasrec-format" / "ml-1m.txt").write_text("1 1\n1 2\n1 3\n2 2\n2 1\n2 3\n")
    (root / "sasrec-format" / "ml-1m_sas_to_original_items.txt").write_text("1 10\n2 20\n3 30\n")
    (root / "ml-1m" / "movies.dat").write_text("10::A (1990)::Drama\n20::B (1991)::War|Drama\n")
    return root


def test_load_sasrec_from_data_dir_with_genres(tmp_path):
    root = _sasrec_tree(tmp_path / "data")
    ds = load_dataset(DataConfig(name="ml-1m-sasrec", data_dir=str(root)))
    assert ds.num_users == 2 and ds.num_items == 3 and ds.timestamps is None
    assert [s.tolist() for s in ds.sequences] == [[1, 2, 3], [2, 1, 3]]
    assert ds.item_genres == {1: ["Drama"], 2: ["War", "Drama"]}
    explicit = tmp_path / "mine.txt"
    explicit.write_text("5 9\n")
    assert load_dataset(DataConfig(name="ml-1m-sasrec", path=str(explicit))).num_items == 1
    with pytest.raises(DataError, match="missing.txt: file not found"):
        load_dataset(DataConfig(name="ml-1m-sasrec", path=str(tmp_path / "missing.txt")))


def test_load_sasrec_downloads_when_no_local_copy(tmp_path, monkeypatch):
    payload = b"1 1\n1 2\n"
    source = tmp_path / "remote" / "ml-1m.txt"
    source.parent.mkdir()
    source.write_bytes(payload)
    monkeypatch.setattr(datasets, "SASREC_ML1M_URL", source.as_uri())
    monkeypatch.setattr(datasets, "SASREC_ML1M_CHECKSUM", _sha256(payload))
    cfg = DataConfig(name="ml-1m-sasrec", data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c"))
    assert load_dataset(cfg).num_interactions == 2
    assert (tmp_path / "c" / "ml-1m.txt").read_bytes() == payload


def test_load_ml1m_zip_and_local_ratings(tmp_path, monkeypatch):
    ratings = "1::10::5::300\n1::20::4::100\n2::10::3::50\n2::30::3::60\n"
    movies = "10::A (1990)::Drama\n20::B (1991)::Comedy\n"
    archive = tmp_path / "remote" / "ml-1m.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ratings)
        zf.writestr("ml-1m/movies.dat", movies)
    monkeypatch.setattr(datasets, "ML1M_URL", archive.as_uri())
    monkeypatch.setattr(datasets, "ML1M_CHECKSUM", ("md5", hashlib.md5(archive.read_bytes()).hexdigest()))
    cfg = DataConfig(name="ml-1m", data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c"))
    ds = load_dataset(cfg)
    assert [s.tolist() for s in ds.sequences] == [[2, 1], [1, 3]]  # by timestamp
    assert ds.item_genres == {1: ["Drama"], 2: ["Comedy"]}
    assert (tmp_path / "c" / "ml-1m" / "ratings.dat").read_text() == ratings
    # A local ratings.dat wins over the download; k-core from the config applies.
    local = tmp_path / "data" / "ml-1m"
    local.mkdir(parents=True)
    (local / "ratings.dat").write_text(ratings + "3::40::1::1\n")
    cfg = DataConfig(name="ml-1m", data_dir=str(tmp_path / "data"), min_user_interactions=2)
    ds = load_dataset(cfg)
    assert ds.num_users == 2 and ds.item_genres is None


def _shared_data_dir() -> Path:
    found = default_data_dir("")
    if found is None or not (Path(found) / "sasrec-format" / "ml-1m.txt").is_file():
        pytest.skip("ML-1M (SASRec format) not found: set JAXREC_DATA to the shared data folder")
    return Path(found)


def test_real_ml1m_sasrec(monkeypatch):
    monkeypatch.undo()  # let JAXREC_DATA through, if the user set it
    root = _shared_data_dir()
    local = root / "sasrec-format" / "ml-1m.txt"
    assert datasets._digest(local, "sha256") == datasets.SASREC_ML1M_CHECKSUM[1]
    ds = load_dataset(DataConfig(name="ml-1m-sasrec", data_dir=str(root)))
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (6040, 3416, 999_611)
    assert ds.item_raw_ids[0] == -1 and (ds.item_raw_ids[1:] == np.arange(1, 3417)).all()
    if (root / "ml-1m" / "movies.dat").is_file():
        assert len(ds.item_genres) == 3416
    split = leave_one_out(ds)
    assert (split.test_target > 0).all() and (split.valid_target > 0).all()
    start = time.perf_counter()
    valid, test = sample_eval_negatives(split, 100, seed=0)
    assert time.perf_counter() - start < 10  # ~0.4 s here; loose for slow machines
    for u in (0, 1234, 6039):
        assert not set(valid[u].tolist() + test[u].tolist()) & set(ds.sequences[u].tolist())
