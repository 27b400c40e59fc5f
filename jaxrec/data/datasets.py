"""Dataset registry, local copies and a verified download cache.

`load_dataset(cfg.data)` resolves a registry entry to an interaction log, applies the
k-core filter from the config and returns dense sequences. Local copies come first
(`data.path`, then `data.data_dir` / $JAXREC_DATA / ../shared/data); otherwise the file is
downloaded once into the cache (`data.cache_dir` / $JAXREC_CACHE / ~/.cache/jaxrec) and
checked against a pinned digest.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxrec.config import DataConfig
from jaxrec.data.preprocess import kcore_filter, to_sequences
from jaxrec.data.readers import (
    read_delimited,
    read_movielens_genres,
    read_movielens_ratings,
    read_movielens_users,
    read_sasrec_pairs,
)
from jaxrec.data.synthetic import generate_interactions
from jaxrec.data.types import DataError, Interactions, SequenceDataset

log = logging.getLogger(__name__)

SASREC_ML1M_URL = "https://raw.githubusercontent.com/kang205/SASRec/master/data/ml-1m.txt"
# sha256 of kang205/SASRec data/ml-1m.txt (git blob 9ab8e3edb8742f8d8cc4911e3dee25e82a6fcc24).
SASREC_ML1M_CHECKSUM = ("sha256", "b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2")
BERT4REC_BEAUTY_URL = (
    "https://raw.githubusercontent.com/FeiSun/BERT4Rec/615eaf2004abecda487a38d5b0c72f3dcfcae5b3/data/beauty.txt"
)
# sha256 of FeiSun/BERT4Rec data/beauty.txt (git blob 16718a33ebdb33504f257421b18ae8bf3ddfe327).
BERT4REC_BEAUTY_CHECKSUM = ("sha256", "f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49")
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_CHECKSUM = ("md5", "c4d9eecfca2ab87c1945afe126590906")  # published by GroupLens

# Users 1..2999 of ML-1M's ratings.dat with timestamps (see <data_dir>/ml-1m/PROVENANCE.md).
ML1M_PARTIAL_FILE = "ratings_partial_users1-2999.dat.gz"

RawGenres = dict[int, list[str]] | None
Loader = Callable[[DataConfig], tuple[Interactions, RawGenres]]


def default_data_dir(cfg_data_dir: str) -> str | None:
    """The folder of local dataset copies: the config value, $JAXREC_DATA, or ../shared/data."""
    if cfg_data_dir:
        return cfg_data_dir
    if os.environ.get("JAXREC_DATA"):
        return os.environ["JAXREC_DATA"]
    shared = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return str(shared.resolve()) if shared.is_dir() else None


def default_cache_dir(cfg_cache_dir: str) -> Path:
    """The download cache: the config value, $JAXREC_CACHE, or ~/.cache/jaxrec."""
    chosen = cfg_cache_dir or os.environ.get("JAXREC_CACHE") or "~/.cache/jaxrec"
    return Path(chosen).expanduser()


def _new_hash(algorithm: str):
    # An integrity check, not security: lets md5 work on FIPS-restricted Pythons too.
    return hashlib.new(algorithm, usedforsecurity=False)


def _digest(path: Path, algorithm: str) -> str:
    h = _new_hash(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, checksum: tuple[str, str], cache_dir: str | os.PathLike = "", hint: str = "") -> Path:
    """Returns the cached copy of `url`, downloading it first if needed.

    The download goes to a temporary file in the cache and is renamed into place only once
    its digest matches, so the cache never holds a partial or wrong file. A cached file is
    verified again on every call.

    Args:
        url: http(s) or file URL; the cached file is named after its last path segment.
        checksum: (algorithm, hex digest), e.g. ("sha256", "b725...").
        cache_dir: cache folder; "" = $JAXREC_CACHE, else ~/.cache/jaxrec.
        hint: how to provide a local copy instead, appended to network errors.

    Returns:
        Path of the verified file in the cache.

    Raises:
        DataError: unknown algorithm, digest mismatch, or the URL could not be fetched.
    """
    algorithm, expected = checksum[0].lower(), checksum[1].lower()
    if algorithm not in hashlib.algorithms_available:
        raise DataError(f"{url}: unknown checksum algorithm {checksum[0]!r}")
    cache = default_cache_dir(str(cache_dir))
    target = cache / (Path(urllib.parse.urlparse(url).path).name or "download")
    if target.exists():
        actual = _digest(target, algorithm)
        if actual != expected:
            raise DataError(
                f"{target}: cached copy of {url} has {algorithm} {actual}, expected {expected}; "
                "delete it to download again"
            )
        return target
    hint = hint or "Without network access, put a local copy under $JAXREC_DATA or set data.path."
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot write to the download cache {cache}: {exc}") from None
    tmp = Path(tmp_name)
    try:
        h = _new_hash(algorithm)
        log.info("downloading %s to %s", url, target)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        actual = h.hexdigest()
        if actual != expected:
            raise DataError(f"{url}: downloaded file has {algorithm} {actual}, expected {expected}; not cached")
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DataError(f"could not fetch {url} ({reason}). {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _is_file(path: Path | None) -> bool:
    try:
        return path is not None and path.is_file()
    except OSError:  # e.g. a name too long: not a file we can read (the reader says why)
        return False


def _first_existing(*paths: Path | None) -> Path | None:
    return next((p for p in paths if _is_file(p)), None)


def _sasrec_genres(path: Path, data_dir: str | None) -> RawGenres:
    """SASRec item id -> ML-1M genres, when the id map and movies.dat are at hand (best effort)."""
    shared = Path(data_dir) if data_dir else None
    id_map = _first_existing(
        path.parent / "ml-1m_sas_to_original_items.txt",
        shared / "sasrec-format" / "ml-1m_sas_to_original_items.txt" if shared else None,
    )
    movies = _first_existing(
        id_map.parent.parent / "ml-1m" / "movies.dat" if id_map else None,
        shared / "ml-1m" / "movies.dat" if shared else None,
    )
    if id_map is None or movies is None:
        return None
    try:
        mapping = read_sasrec_pairs(id_map)  # `sas_id original_id` lines
        movie_genres = read_movielens_genres(movies)
    except DataError as exc:
        log.warning("ml-1m-sasrec: genres not attached: %s", exc)
        return None
    return {
        sas: movie_genres[orig]
        for sas, orig in zip(mapping.user.tolist(), mapping.item.tolist(), strict=True)
        if orig in movie_genres
    }


def _load_ml1m_sasrec(cfg: DataConfig) -> tuple[Interactions, RawGenres]:
    data_dir = default_data_dir(cfg.data_dir)
    if cfg.path:
        path = Path(cfg.path)  # an explicit copy that is missing is an error, not a download
    else:
        local = [Path(data_dir) / "sasrec-format" / "ml-1m.txt", Path(data_dir) / "ml-1m.txt"] if data_dir else []
        path = _first_existing(*local) or fetch(
            SASREC_ML1M_URL,
            SASREC_ML1M_CHECKSUM,
            cfg.cache_dir,
            hint="Put SASRec's ml-1m.txt in <data_dir>/sasrec-format/ ($JAXREC_DATA or data.data_dir) "
            "or set data.path to it.",
        )
    return read_sasrec_pairs(path), _sasrec_genres(path, data_dir)


def _load_beauty_bert4rec(cfg: DataConfig) -> tuple[Interactions, RawGenres]:
    data_dir = default_data_dir(cfg.data_dir)
    if cfg.path:
        path = Path(cfg.path)
    else:
        local = [Path(data_dir) / "bert4rec" / "beauty.txt"] if data_dir else []
        path = _first_existing(*local) or fetch(
            BERT4REC_BEAUTY_URL,
            BERT4REC_BEAUTY_CHECKSUM,
            cfg.cache_dir,
            hint="Put BERT4Rec's beauty.txt in <data_dir>/bert4rec/ ($JAXREC_DATA or data.data_dir) "
            "or set data.path to it.",
        )
    return read_sasrec_pairs(path), None


def _extract(archive: Path, member: str, target: Path) -> Path:
    """Extracts one zip member to `target` through a temporary file (no partial files)."""
    if target.is_file():
        return target
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract {member}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _load_ml1m(cfg: DataConfig) -> tuple[Interactions, RawGenres]:
    data_dir = default_data_dir(cfg.data_dir)
    shared = Path(data_dir) / "ml-1m" if data_dir else None
    if cfg.path:
        ratings = Path(cfg.path)
    else:
        ratings = _first_existing(shared / "ratings.dat" if shared else None)
    if ratings is None:
        archive = fetch(
            ML1M_URL,
            ML1M_CHECKSUM,
            cfg.cache_dir,
            hint="Put the GroupLens ml-1m ratings.dat (and movies.dat) in <data_dir>/ml-1m/ "
            "($JAXREC_DATA or data.data_dir) or set data.path to ratings.dat.",
        )
        unpacked = archive.parent / "ml-1m"
        ratings = _extract(archive, "ml-1m/ratings.dat", unpacked / "ratings.dat")
        _extract(archive, "ml-1m/movies.dat", unpacked / "movies.dat")
    movies = _first_existing(ratings.parent / "movies.dat", shared / "movies.dat" if shared else None)
    return read_movielens_ratings(ratings), read_movielens_genres(movies) if movies else None


def _load_ml1m_partial(cfg: DataConfig) -> tuple[Interactions, RawGenres]:
    """The local partial ML-1M ratings (users 1..2999, with timestamps); never downloaded."""
    data_dir = default_data_dir(cfg.data_dir)
    shared = Path(data_dir) / "ml-1m" if data_dir else None
    ratings = Path(cfg.path) if cfg.path else _first_existing(shared / ML1M_PARTIAL_FILE if shared else None)
    if ratings is None:
        where = f"{shared}" if shared else "no data folder (data.data_dir, $JAXREC_DATA and ../shared/data are unset)"
        raise DataError(
            f"ml-1m-partial: {ML1M_PARTIAL_FILE} not found in {where}; put it in <data_dir>/ml-1m/ "
            "or set data.path to it (it has no download)"
        )
    movies = _first_existing(ratings.parent / "movies.dat", shared / "movies.dat" if shared else None)
    return read_movielens_ratings(ratings), read_movielens_genres(movies) if movies else None


def _load_file(cfg: DataConfig) -> tuple[Interactions, RawGenres]:
    if not cfg.path:
        raise DataError("data.name='file' needs data.path: the CSV/TSV file to read")
    return read_delimited(cfg.path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.delimiter), None


def _load_synthetic(cfg: DataConfig) -> tuple[Interactions, RawGenres]:
    return generate_interactions(cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_mean_length, cfg.seed)


REGISTRY: dict[str, Loader] = {
    "ml-1m-sasrec": _load_ml1m_sasrec,
    "ml-1m": _load_ml1m,
    "ml-1m-partial": _load_ml1m_partial,
    "beauty-bert4rec": _load_beauty_bert4rec,
    "file": _load_file,
    "synthetic": _load_synthetic,
}


def load_dataset(cfg: DataConfig) -> SequenceDataset:
    """Loads the registry entry `cfg.name`, k-core filters it and builds sequences.

    Raises:
        DataError: unknown name, missing or malformed files, failed download, or a filter
            that leaves nothing.
    """
    loader = REGISTRY.get(cfg.name)
    if loader is None:
        raise DataError(f"unknown dataset {cfg.name!r} (data.name); known: {', '.join(REGISTRY)}")
    inter, genres = loader(cfg)
    inter = kcore_filter(inter, cfg.min_user_interactions, cfg.min_item_interactions)
    name = Path(cfg.path).stem if cfg.name == "file" else cfg.name
    return to_sequences(inter, name, raw_item_genres=genres)


USER_INPUT_COLUMNS = 4  # user_BxF: dense user id + 1, then gender, age, occupation codes (0 = unknown)
ML1M_AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # users.dat age codes
# Rows of the gender (F = 1, M = 2), age (1 + group index) and occupation (1 + 0..20) code tables; 0 = unknown.
ML1M_USER_FEATURE_ROWS = (3, len(ML1M_AGE_GROUPS) + 1, 22)


def _ml1m_user_codes(users_dat: Path) -> dict[int, tuple[int, int, int]]:
    """Original user id -> (gender, age, occupation) codes of users.dat; out-of-range values are 0 (unknown)."""
    users = read_movielens_users(users_dat)
    age_index = {age: i + 1 for i, age in enumerate(ML1M_AGE_GROUPS)}
    return {
        int(u): (
            {"F": 1, "M": 2}.get(str(g).strip(), 0),
            age_index.get(int(a), 0),
            int(o) + 1 if 0 <= int(o) <= 20 else 0,
        )
        for u, g, a, o in zip(users["user"], users["gender"], users["age"], users["occupation"])
    }


def _ml1m_original_users(dataset: SequenceDataset, cfg: DataConfig) -> tuple[np.ndarray, list[Path]]:
    """Original ML-1M user id of each dense user, and the folders where users.dat may be."""
    data_dir = default_data_dir(cfg.data_dir)
    shared = Path(data_dir) if data_dir else None
    folders = [Path(cfg.path).parent] if cfg.path else []
    folders += [shared / "ml-1m"] if shared else []
    folders += [default_cache_dir(cfg.cache_dir) / "ml-1m"]
    if dataset.name in ("ml-1m", "ml-1m-partial"):
        return np.asarray(dataset.user_raw_ids), folders
    # ml-1m-sasrec renumbers users; kang205/SASRec's id map (see sasrec-format/PROVENANCE.md) undoes it.
    id_map = _first_existing(
        Path(cfg.path).parent / "ml-1m_sas_to_original_users.txt" if cfg.path else None,
        shared / "sasrec-format" / "ml-1m_sas_to_original_users.txt" if shared else None,
    )
    if id_map is None:
        raise DataError(
            "model.user_features on ml-1m-sasrec needs ml-1m_sas_to_original_users.txt beside data.path or in "
            "<data_dir>/sasrec-format/"
        )
    pairs = read_sasrec_pairs(id_map)
    original = dict(zip(pairs.user.tolist(), pairs.item.tolist()))
    folders.insert(0, id_map.parent.parent / "ml-1m")
    return np.array([original.get(int(u), -1) for u in dataset.user_raw_ids], np.int64), folders


def user_inputs(dataset: SequenceDataset, cfg: DataConfig, features: bool = False) -> np.ndarray:
    """Per-user model inputs, (num users, USER_INPUT_COLUMNS) int32; row u is dense user u.

    Column 0 is u + 1 (0 is left for padding rows); columns 1-3 are ML-1M's gender, age and occupation
    codes from users.dat (`read_movielens_users`; 0 = unknown) when `features`, else 0. Features exist
    for ml-1m, ml-1m-partial and ml-1m-sasrec (through kang205/SASRec's user id map).
    """
    table = np.zeros((dataset.num_users, USER_INPUT_COLUMNS), np.int32)
    table[:, 0] = np.arange(1, dataset.num_users + 1)
    if not features:
        return table
    if dataset.name not in ("ml-1m", "ml-1m-partial", "ml-1m-sasrec"):
        raise DataError(f"model.user_features: dataset {dataset.name!r} has no users.dat (ML-1M entries only)")
    originals, folders = _ml1m_original_users(dataset, cfg)
    users_dat = _first_existing(*(folder / "users.dat" for folder in folders))
    if users_dat is None:
        raise DataError(f"model.user_features: users.dat not found in {', '.join(map(str, folders))}")
    codes = _ml1m_user_codes(users_dat)
    for u, original in enumerate(originals.tolist()):
        table[u, 1:] = codes.get(original, (0, 0, 0))
    known = (table[:, 1] > 0).mean()
    log.info("user features from %s: %.1f%% of users known", users_dat, 100 * known)
    return table
