"""Data layer: readers, preprocessing, synthetic data and the dataset registry (the sources every task reads)."""

from jaxrec.data.datasets import (
    ML1M_CHECKSUM,
    ML1M_URL,
    REGISTRY,
    SASREC_ML1M_CHECKSUM,
    SASREC_ML1M_URL,
    default_cache_dir,
    default_data_dir,
    fetch,
    load_dataset,
)
from jaxrec.data.preprocess import kcore_filter, to_sequences
from jaxrec.data.readers import (
    read_delimited,
    read_movielens_genres,
    read_movielens_ratings,
    read_sasrec_pairs,
)
from jaxrec.data.synthetic import generate, generate_interactions
from jaxrec.data.types import DataError, Interactions, SequenceDataset

__all__ = [
    "ML1M_CHECKSUM",
    "ML1M_URL",
    "REGISTRY",
    "SASREC_ML1M_CHECKSUM",
    "SASREC_ML1M_URL",
    "DataError",
    "Interactions",
    "SequenceDataset",
    "default_cache_dir",
    "default_data_dir",
    "fetch",
    "generate",
    "generate_interactions",
    "kcore_filter",
    "load_dataset",
    "read_delimited",
    "read_movielens_genres",
    "read_movielens_ratings",
    "read_sasrec_pairs",
    "to_sequences",
]
