"""Datasets: seeded synthetic worlds, MovieLens-100K (fetched into a local cache), and the
logged-feedback format."""

from recsys.data.movielens import (
    DatasetError,
    ensure_ml100k,
    load_grouplens,
    load_ml100k,
    load_movielens,
    load_recbole_atomic,
)
from recsys.data.synthetic import SyntheticWorld, make_world

__all__ = [
    "DatasetError",
    "SyntheticWorld",
    "ensure_ml100k",
    "load_grouplens",
    "load_ml100k",
    "load_movielens",
    "load_recbole_atomic",
    "make_world",
]
