"""Calibrate the simulator to a real interaction log (MovieLens-100K) and measure the fit.

Three steps, each a plain function:

1. :func:`fit_calibration` reads an :class:`~recsys.types.InteractionDataset` into a
   :class:`CalibrationProfile`: genre-based item topics, interaction-share popularity, user
   activity (interactions per user, mean 1), shrunk mean-rating quality and user interests
   from each user's genre history.
2. :func:`calibrated_world` turns the profile into a :class:`~recsys.data.SyntheticWorld`
   through :func:`~recsys.data.make_world`'s calibration hook, and :func:`calibrated_env`
   builds a :class:`~recsys.simulator.env.SlateEnv` whose candidates follow the fitted
   exposure (:func:`exposure_weights`).
3. :func:`simulate_click_log` logs clicks with users arriving in proportion to their activity
   and slates drawn from the exposure sampler in random order, and
   :func:`compare_statistics` sets the simulated click log's item-popularity, user-activity and
   genre-share distributions against the real ones. :func:`calibration_report` /
   :func:`run_calibration_report` do all of it, with an uncalibrated default world for
   contrast.

Why the statistics come out right, to first order. Under the multinomial logit the clicks
within a slate are shared in proportion to ``exp(alpha * appeal)``, so with impressions of
item ``i`` proportional to its real share ``p_i``:

- *Interests*. A user's interest in genre ``k`` is ``ln(lift_uk) / alpha``, where
  ``lift_uk = g_uk / g_k`` is the user's (shrunk) share of genre ``k`` over the population's.
  Their clicks on a single-genre item are then weighted by ``lift_uk``, so their expected
  genre mix is ``g_k lift_uk = g_uk``, their real mix; and because the activity-weighted mean
  lift of every genre is 1, each item's click share stays ``p_i``.
- *Exposure*. Quality, clickbait and ads add a static term ``s_i`` to the appeal, which would
  multiply item ``i``'s clicks by ``exp(alpha s_i)``. Candidates are therefore sampled with
  weight ``p_i exp(-alpha s_i)``: the real counts are read as exposure times appeal, and the
  exposure is what is left after dividing the appeal out.
- *Activity*. Requests come from user ``u`` with probability proportional to ``a_u`` and the
  expected click probability of a request is about the same for every user, so clicks per
  user follow ``a_u``. (Activity still scales session budgets and return probability inside
  the environment, as it always does.)

Second-order effects (the no-click option and slate size, position bias, fatigue, item memory,
interest drift, geometric rather than arithmetic averaging of multi-genre lifts) are not
corrected; :func:`compare_statistics` measures what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.simulator.env import SlateEnv
from recsys.simulator.policies import random_policy
from recsys.simulator.sampling import PopularityCandidateSampler
from recsys.simulator.user import UserModel
from recsys.types import FloatArray, IntArray, InteractionDataset

F64Array = npt.NDArray[np.float64]

#: Quantiles of the normalized per-user interaction count reported by compare_statistics.
ACTIVITY_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
#: Head fractions of the catalog whose interaction share compare_statistics reports.
TOP_FRACTIONS = (0.01, 0.1, 0.2)
#: Points of the Lorenz curves stored in the report (for plots).
LORENZ_POINTS = 201


@dataclass(frozen=True, slots=True, eq=False)
class CalibrationProfile:
    """What :func:`fit_calibration` reads from a real log: arrays for :func:`make_world`.

    - ``item_topics`` ``[N, T]``: genre mixture per item, rows on the simplex (a multi-genre
      item splits its mass evenly; an item without any genre is spread uniformly).
    - ``item_popularity`` ``[N]``: interaction shares with a small additive pseudo-count, so
      an item that nobody touched can still be exposed; sums to 1.
    - ``item_quality`` ``[N]`` in ``[-1, 1]``: shrunk mean rating, standardized across items
      and scaled to the default world's quality spread (0 when ratings are constant, as in
      implicit feedback).
    - ``user_activity`` ``[U]``: interactions per user (plus a pseudo-count, so a user with no
      interactions stays valid), normalized to mean 1.
    - ``user_interests`` ``[U, T]`` in ``[-1, 1]``: ``ln(lift) / affinity_scale`` per genre,
      where lift is the user's shrunk genre share over the population's (see module docs).
    - ``topic_names`` (the dataset's category names), ``num_interactions`` and
      ``affinity_scale`` (the ``alpha`` the interests were fitted for) are kept for reports.

    Arrays are float32 and read-only, in the dataset's dense index order.
    """

    name: str
    topic_names: tuple[str, ...]
    item_topics: FloatArray
    item_popularity: FloatArray
    item_quality: FloatArray
    user_activity: FloatArray
    user_interests: FloatArray
    num_interactions: int
    affinity_scale: float

    def __post_init__(self) -> None:
        if self.item_topics.ndim != 2 or 0 in self.item_topics.shape:
            raise ValueError(
                f"item_topics must be a non-empty [num_items, num_topics] array, got "
                f"{self.item_topics.shape}"
            )
        n, t = self.item_topics.shape
        u = self.user_activity.shape[0] if self.user_activity.ndim == 1 else -1
        expected = {
            "item_popularity": (self.item_popularity.shape, (n,)),
            "item_quality": (self.item_quality.shape, (n,)),
            "user_activity": (self.user_activity.shape, (u,)),
            "user_interests": (self.user_interests.shape, (u, t)),
        }
        for name, (got, want) in expected.items():
            if got != want or u < 1:
                raise ValueError(f"{name} has shape {got}, expected {want} (num_users >= 1)")
        if len(self.topic_names) != t:
            raise ValueError(f"topic_names has {len(self.topic_names)} names for {t} topics")

    @property
    def num_items(self) -> int:
        """Catalog size (the dataset's items, in index order)."""
        return int(self.item_topics.shape[0])

    @property
    def num_users(self) -> int:
        """Population size (the dataset's users, in index order)."""
        return int(self.user_activity.shape[0])

    @property
    def num_topics(self) -> int:
        """Topics of the simulated world: one per genre of the dataset."""
        return int(self.item_topics.shape[1])

    def catalog_settings(self, seed: int = 0) -> CatalogSettings:
        """The :class:`CatalogSettings` whose sizes match the profile (world built from it)."""
        return CatalogSettings(
            num_items=self.num_items,
            num_users=self.num_users,
            num_topics=self.num_topics,
            seed=seed,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the fitted arrays (sizes and spreads)."""
        return {
            "name": self.name,
            "num_items": self.num_items,
            "num_users": self.num_users,
            "num_topics": self.num_topics,
            "num_interactions": self.num_interactions,
            "affinity_scale": self.affinity_scale,
            "user_activity_max": float(self.user_activity.max()),
            "user_activity_min": float(self.user_activity.min()),
            "item_popularity_max": float(self.item_popularity.max()),
            "item_quality_std": float(self.item_quality.std()),
            "user_interests_mean_abs": float(np.abs(self.user_interests).mean()),
        }


def _frozen(arr: npt.NDArray[Any]) -> FloatArray:
    out = np.ascontiguousarray(arr, dtype=np.float32)
    out.setflags(write=False)
    return out


def _user_topic_mass(
    user_idx: IntArray, item_idx: IntArray, item_topics: F64Array, num_users: int
) -> F64Array:
    """``[U, T]`` summed topic mixtures of each user's interactions (one bincount, no loops)."""
    t = item_topics.shape[1]
    flat = (user_idx[:, None] * t + np.arange(t)).ravel()
    weights = item_topics[item_idx].ravel()
    mass: F64Array = np.bincount(flat, weights=weights, minlength=num_users * t).astype(np.float64)
    return mass.reshape(num_users, t)


def fit_calibration(
    dataset: InteractionDataset,
    *,
    affinity_scale: float | None = None,
    popularity_pseudocount: float = 0.5,
    activity_pseudocount: float = 0.5,
    interest_prior_strength: float = 10.0,
    quality_prior_strength: float = 10.0,
    quality_scale: float = 0.35,
) -> CalibrationProfile:
    """Fit a :class:`CalibrationProfile` to ``dataset`` (every row counts as an interaction).

    - ``affinity_scale``: the simulator's ``alpha`` the interests are fitted for (default
      :class:`SimulatorSettings`' 4.0); use the value the environment will run with.
    - ``popularity_pseudocount``: added to every item's count before normalizing (0.5 shifts
      under 1 % of ML-100K's mass; it only keeps never-seen items exposable).
    - ``activity_pseudocount``: likewise per user (keeps activity > 0 as the world requires).
    - ``interest_prior_strength``: pseudo-interactions at the population's genre mix added to
      each user's history before taking the lift, so a user with 20 ratings is not read as
      hating every genre they have not rated yet.
    - ``quality_prior_strength``, ``quality_scale``: mean rating shrunk towards the global
      mean with that many pseudo-ratings, standardized across items and multiplied by
      ``quality_scale`` (the default world's quality spread), then clipped to ``[-1, 1]``.

    Raises :class:`ValueError` for a dataset without interactions or without item categories
    (topics are the categories), and for non-positive or non-finite hyper-parameters.
    """
    alpha = SimulatorSettings().affinity_scale if affinity_scale is None else affinity_scale
    for name, value, strict in (
        ("affinity_scale", alpha, True),
        ("popularity_pseudocount", popularity_pseudocount, True),
        ("activity_pseudocount", activity_pseudocount, True),
        ("interest_prior_strength", interest_prior_strength, False),
        ("quality_prior_strength", quality_prior_strength, False),
        ("quality_scale", quality_scale, False),
    ):
        if not (np.isfinite(value) and (value > 0 if strict else value >= 0)):
            raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'}, got {value}")
    n_rows = dataset.num_interactions
    if n_rows == 0:
        raise ValueError(f"dataset {dataset.name!r} has no interactions to calibrate to")
    num_items, num_users = dataset.num_items, dataset.num_users
    categories = dataset.item_categories
    num_topics = categories.shape[1]
    if num_topics == 0:
        raise ValueError(
            f"dataset {dataset.name!r} has no item categories; topics are fitted from them"
        )
    names = dataset.category_names
    topic_names = (
        tuple(names) if len(names) == num_topics else tuple(f"topic_{k}" for k in range(num_topics))
    )

    # Topics: multi-hot genres normalized, so a two-genre film is half of each. An item with
    # no genre gets the uniform mixture rather than an invalid all-zero row.
    topics = categories.astype(np.float64)
    mass = topics.sum(axis=1, keepdims=True)
    topics = np.where(mass > 0, topics / np.maximum(mass, 1.0), 1.0 / num_topics)

    # Popularity: interaction shares, lightly smoothed.
    item_counts = np.bincount(dataset.item_idx, minlength=num_items).astype(np.float64)
    popularity = item_counts + popularity_pseudocount
    popularity /= popularity.sum()

    # Activity: interactions per user relative to the mean user.
    user_counts = np.bincount(dataset.user_idx, minlength=num_users).astype(np.float64)
    activity = user_counts + activity_pseudocount
    activity /= activity.mean()

    # Interests: log-lift of the user's shrunk genre mix over the population's, divided by the
    # choice model's scale, so that MNL click odds reproduce the user's genre mix (module docs).
    population_mix = item_counts @ topics / n_rows  # [T], sums to 1
    user_mass = _user_topic_mass(dataset.user_idx, dataset.item_idx, topics, num_users)
    user_mix = (user_mass + interest_prior_strength * population_mix) / (
        user_counts + interest_prior_strength
    )[:, None]
    seen = population_mix > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lift = np.where(seen, np.log(user_mix / np.where(seen, population_mix, 1.0)), 0.0)
    # A user with interactions only in genres they alone watch has user_mix > 0 where the
    # population share is tiny; a zero user share (no prior) gives -inf: both end at the clip.
    log_lift = np.nan_to_num(log_lift, nan=0.0, posinf=alpha, neginf=-alpha)
    interests = np.clip(log_lift / alpha, -1.0, 1.0)

    # Quality: shrunk mean rating, standardized across items.
    rating = dataset.rating.astype(np.float64)
    global_mean = float(rating.mean())
    rating_sum = np.bincount(dataset.item_idx, weights=rating, minlength=num_items)
    weight = item_counts + quality_prior_strength
    shrunk = np.where(
        weight > 0,
        (rating_sum + quality_prior_strength * global_mean) / np.where(weight > 0, weight, 1.0),
        global_mean,  # an unrated item with no prior: the global mean, i.e. quality 0
    )
    spread = float(shrunk.std())
    if spread > 1e-9 and quality_scale > 0:
        quality = np.clip(quality_scale * (shrunk - shrunk.mean()) / spread, -1.0, 1.0)
    else:
        quality = np.zeros(num_items)

    return CalibrationProfile(
        name=dataset.name,
        topic_names=topic_names,
        item_topics=_frozen(topics),
        item_popularity=_frozen(popularity),
        item_quality=_frozen(quality),
        user_activity=_frozen(activity),
        user_interests=_frozen(interests),
        num_interactions=n_rows,
        affinity_scale=float(alpha),
    )


def calibrated_world(
    profile: CalibrationProfile,
    seed: int = 0,
    *,
    clickbait_fraction: float = 0.1,
    ad_fraction: float = 0.1,
) -> SyntheticWorld:
    """The simulated world of ``profile``: its topics, popularity, quality, activity, interests.

    Sizes come from :meth:`CalibrationProfile.catalog_settings`, so they always match. What
    the log cannot tell (item lengths, clickbait, ads and bids) is drawn from ``seed`` as in
    :func:`make_world`; ``clickbait_fraction`` and ``ad_fraction`` default to make_world's
    10 % so that the calibrated world keeps the simulator's click-versus-value trade-off (set
    them to 0 for a catalog of organic items only). :func:`exposure_weights` compensates
    their extra appeal, so they do not distort the click statistics.
    """
    return make_world(
        profile.catalog_settings(seed),
        item_topics=profile.item_topics,
        item_quality=profile.item_quality,
        item_popularity=profile.item_popularity,
        user_interests=profile.user_interests,
        user_activity=profile.user_activity,
        clickbait_fraction=clickbait_fraction,
        ad_fraction=ad_fraction,
    )


def exposure_weights(world: SyntheticWorld, settings: SimulatorSettings | None = None) -> F64Array:
    """``[N]`` candidate weights ``popularity_i * exp(-alpha * static_appeal_i)``, sum 1.

    The exposure model that makes the clicks, not the impressions, follow
    ``world.item_popularity``: an item's static appeal (quality, clickbait, ad penalty) would
    multiply its click share by ``exp(alpha * static_appeal)`` under the multinomial logit, so
    it is divided out of its exposure (exact for the MNL's click shares within a slate; a
    first-order correction for the cascade model).
    """
    cfg = settings or SimulatorSettings()
    static = UserModel(world, cfg).static_appeal.astype(np.float64)
    log_w = np.log(np.maximum(world.item_popularity.astype(np.float64), 1e-300))
    log_w -= cfg.affinity_scale * static
    w = np.exp(log_w - log_w.max())
    out: F64Array = w / w.sum()
    return out


def calibrated_env(
    world: SyntheticWorld, settings: SimulatorSettings | None = None, seed: int | None = 0
) -> SlateEnv:
    """A :class:`SlateEnv` over ``world`` whose candidates are drawn by exposure weight.

    The candidate sampler is a :class:`PopularityCandidateSampler` over
    :func:`exposure_weights`, so candidates (and a uniformly random slate of them, or a slate
    drawn from the sampler directly as :func:`simulate_click_log` does) show items in
    proportion to their exposure. Works for any world (the uncalibrated default one too).
    With ``env.sample_candidates`` (``num_candidates`` per row) an item's inclusion is capped
    at 1, i.e. at ``1 / num_candidates`` of the exposure: on ML-100K with 100 candidates two
    items hit the cap (the heaviest would need 1.57 slots per row); slates of 10 drawn
    directly from the sampler leave every item uncapped.
    """
    cfg = settings or SimulatorSettings()
    sampler = PopularityCandidateSampler(exposure_weights(world, cfg))
    return SlateEnv(world, seed=seed, settings=cfg, candidate_sampler=sampler)


class SimulatedClickLog(NamedTuple):
    """The clicks of a simulated log, one row per click in time order, plus its volume.

    ``requests`` counts served slates (clicked or not), so ``ctr = clicks / requests``.
    """

    user_idx: IntArray
    item_idx: IntArray
    requests: int

    @property
    def num_clicks(self) -> int:
        """Rows of the log."""
        return int(self.user_idx.shape[0])

    @property
    def ctr(self) -> float:
        """Clicks per served slate."""
        return self.num_clicks / max(self.requests, 1)


def _occurrence_index(values: IntArray) -> IntArray:
    """For each entry, how many equal entries come before it (0 for a first occurrence)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    positions = np.arange(values.shape[0])
    first = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group_start = np.maximum.accumulate(np.where(first, positions, 0))
    out = np.empty_like(positions)
    out[order] = positions - group_start
    return out.astype(np.int64)


def simulate_click_log(
    env: SlateEnv,
    num_clicks: int,
    *,
    rng: np.random.Generator,
    user_weights: npt.ArrayLike | None = None,
    slate_size: int | None = None,
    batch_size: int = 128,
    max_requests: int | None = None,
) -> SimulatedClickLog:
    """Serve requests until ``num_clicks`` clicks are logged; return exactly that many.

    Each step, ``batch_size`` requests arrive, each from user ``u`` with probability
    proportional to ``user_weights[u]`` (default ``env.world.user_activity``: a Poisson
    process per user at a rate set by their activity). Each request's slate is a draw of
    ``slate_size`` (default ``env.settings.slate_size``) items from ``env.candidate_sampler``
    in random order: with a :class:`PopularityCandidateSampler` every item is shown with
    probability ``slate_size * weight`` (capped at 1). The slate is drawn at slate size rather
    than cut from ``num_candidates`` candidates because the cap then binds only for items
    heavier than ``1 / slate_size`` of the exposure instead of ``1 / num_candidates``.

    Users evolve as in any rollout (fatigue, drift, sessions; a churned user starts a new life
    when they next arrive). A user who arrives more than once in a batch is served in
    successive rounds, one request per round, so each request sees the state the previous one
    left (a single batched step would show both the same state, sparing a heavy user the
    fatigue of their own consumption). ``rng`` drives arrivals and slates, the env's own
    stream the responses. Raises :class:`ValueError` for bad arguments and :class:`RuntimeError` if
    ``max_requests`` (default ``100 * num_clicks``) pass first.
    """
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be >= 1, got {num_clicks}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    weights = np.array(
        env.world.user_activity if user_weights is None else user_weights, dtype=np.float64
    )
    if weights.shape != (env.num_users,):
        raise ValueError(f"user_weights has shape {weights.shape}, expected ({env.num_users},)")
    if not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("user_weights must be finite, non-negative and have a positive sum")
    arrival = weights / weights.sum()
    size = env.settings.slate_size if slate_size is None else slate_size
    if not 1 <= size <= env.num_items:
        raise ValueError(f"slate_size must be in [1, {env.num_items}], got {size}")
    limit = 100 * num_clicks if max_requests is None else max_requests

    users_out: list[IntArray] = []
    items_out: list[IntArray] = []
    clicks = requests = 0
    while clicks < num_clicks:  # a loop over time steps; each step is batched over requests
        if requests >= limit:
            raise RuntimeError(
                f"only {clicks} of {num_clicks} clicks after {requests} requests (max_requests)"
            )
        arrivals = rng.choice(env.num_users, size=batch_size, p=arrival).astype(np.int64)
        occurrence = _occurrence_index(arrivals)
        for rank in range(int(occurrence.max()) + 1):  # a user's k-th request goes in round k
            users = arrivals[occurrence == rank]
            drawn = env.candidate_sampler.sample(users, size, rng)
            slates = random_policy(env, users, drawn, size, rng)  # random order: no slot bias
            clicked = env.step(users, slates, check=False).observable.clicked_item
            hit = clicked >= 0
            users_out.append(users[hit])
            items_out.append(clicked[hit])
            clicks += int(hit.sum())
        requests += batch_size
    return SimulatedClickLog(
        user_idx=np.concatenate(users_out)[:num_clicks],
        item_idx=np.concatenate(items_out)[:num_clicks],
        requests=requests,
    )


# -- statistics -------------------------------------------------------------------------------


def gini(counts: npt.ArrayLike) -> float:
    """Gini coefficient of non-negative counts (0: all equal; near 1: one holds everything)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.shape[0], float(x.sum())
    if n == 0 or total <= 0:
        raise ValueError("gini needs a non-empty array with a positive sum")
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks @ x) / (n * total) - (n + 1.0) / n)


def lorenz_curve(counts: npt.ArrayLike) -> tuple[F64Array, F64Array]:
    """``(x, L)``: the poorest fraction ``x`` of units holds the share ``L`` (``n + 1`` points)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    total = float(x.sum())
    if x.shape[0] == 0 or total <= 0:
        raise ValueError("lorenz_curve needs a non-empty array with a positive sum")
    share = np.concatenate([[0.0], np.cumsum(x) / total])
    return np.linspace(0.0, 1.0, x.shape[0] + 1), share


def lorenz_distance(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Largest vertical gap between the Lorenz curves of ``a`` and ``b`` (a KS-type distance).

    Both curves are piecewise linear, so the maximum over the union of their breakpoints is
    the exact supremum; ``a`` and ``b`` may have different lengths.
    """
    xa, la = lorenz_curve(a)
    xb, lb = lorenz_curve(b)
    grid = np.union1d(xa, xb)
    return float(np.abs(np.interp(grid, xa, la) - np.interp(grid, xb, lb)).max())


def ks_distance(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup |F_a - F_b|`` of the empirical CDFs."""
    sa = np.sort(np.asarray(a, dtype=np.float64))
    sb = np.sort(np.asarray(b, dtype=np.float64))
    if sa.shape[0] == 0 or sb.shape[0] == 0:
        raise ValueError("ks_distance needs two non-empty samples")
    values = np.concatenate([sa, sb])
    fa = np.searchsorted(sa, values, side="right") / sa.shape[0]
    fb = np.searchsorted(sb, values, side="right") / sb.shape[0]
    return float(np.abs(fa - fb).max())


def _average_ranks(x: F64Array) -> F64Array:
    """Ranks 0..n-1 with ties sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts_flag = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts_flag) - 1
    starts = np.flatnonzero(starts_flag)
    ends = np.concatenate([starts[1:], [x.shape[0]]])
    ranks = np.empty(x.shape[0], dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0)[group]
    return ranks


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float | None:
    """Spearman rank correlation of two equal-length arrays (None if either is constant)."""
    ra = _average_ranks(np.asarray(a, dtype=np.float64))
    rb = _average_ranks(np.asarray(b, dtype=np.float64))
    if ra.shape != rb.shape:
        raise ValueError(f"spearman needs equal lengths, got {ra.shape} and {rb.shape}")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb / denom) if denom > 0 else None


def _popularity_stats(counts: F64Array) -> dict[str, float]:
    desc = np.sort(counts)[::-1]
    head = np.cumsum(desc) / desc.sum()
    out = {"gini": gini(counts)}
    for frac in TOP_FRACTIONS:
        k = max(1, int(np.ceil(frac * counts.shape[0])))
        out[f"top_{round(frac * 100)}pct_share"] = float(head[k - 1])
    out["items_with_no_interaction"] = float(np.mean(counts == 0))
    return out


def _activity_stats(counts: F64Array) -> dict[str, float]:
    normalized = counts / counts.mean()
    out = {
        "gini": gini(counts),
        "mean_count": float(counts.mean()),
        "min_count": float(counts.min()),
        "max_count": float(counts.max()),
        "top_10pct_share": _popularity_stats(counts)["top_10pct_share"],
    }
    for q, v in zip(ACTIVITY_QUANTILES, np.quantile(normalized, ACTIVITY_QUANTILES), strict=True):
        out[f"q{round(q * 100):02d}_relative"] = float(v)
    return out


def _category_weights(categories: npt.ArrayLike, num_items: int, width: int) -> F64Array:
    w = np.asarray(categories, dtype=np.float64)
    if w.shape != (num_items, width):
        raise ValueError(
            f"item_categories has shape {w.shape}, expected ({num_items}, {width}): one row per "
            f"catalog item, one column per genre of the real dataset"
        )
    if not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
        raise ValueError("item_categories must be finite and non-negative")
    mass = w.sum(axis=1, keepdims=True)
    out: F64Array = np.where(mass > 0, w / np.where(mass > 0, mass, 1.0), 0.0)
    return out


def genre_shares(item_counts: npt.ArrayLike, item_categories: npt.ArrayLike) -> F64Array:
    """``[G]`` share of interactions per genre, a multi-genre item's count split evenly.

    Items without any genre are left out, so the shares sum to 1 over the genred interactions.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    cats = np.asarray(item_categories)
    weights = _category_weights(cats, counts.shape[0], cats.shape[1] if cats.ndim == 2 else -1)
    mass = counts @ weights
    if mass.sum() <= 0:
        raise ValueError("no interaction falls on an item with a genre")
    out: F64Array = mass / mass.sum()
    return out


def _index_array(name: str, value: npt.ArrayLike, upper: int) -> IntArray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: no simulated interactions to compare")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=False)
    if out.min() < 0 or out.max() >= upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got [{out.min()}, {out.max()}]")
    return out


def compare_statistics(
    real: InteractionDataset,
    simulated_user_idx: npt.ArrayLike,
    simulated_item_idx: npt.ArrayLike,
    item_categories: npt.ArrayLike,
) -> dict[str, Any]:
    """Distances between a simulated interaction log and ``real``, JSON-ready.

    The simulated log lives on ``real``'s catalog and population (same index ranges; a
    calibrated world shares its ids, any other world of the same sizes is compared as a
    distribution). ``item_categories`` ``[num_items, G]`` tags the *simulated* items with the
    real dataset's ``G`` genres (bool multi-hot or float mixtures, e.g. a world's
    ``item_topics``); real shares always use ``real.item_categories``. Zero-count items and
    users are included, so an unexposed part of the catalog shows up as inequality.

    - ``item_popularity``: Gini of per-item counts, the share of interactions held by the top
      1 / 10 / 20 % of items, ``lorenz_ks`` (largest gap between Lorenz curves) and the
      Spearman correlation of per-item counts (meaningful only when ids correspond).
    - ``user_activity``: Gini, quantiles of counts relative to the mean user, ``ks`` (two-
      sample KS statistic of the relative counts), ``lorenz_ks`` and Spearman per user.
    - ``genre_shares``: per-genre share of interactions (split evenly over an item's genres),
      total variation distance ``tv_distance`` (half the ``l1_distance``).

    Raises :class:`ValueError` for an empty log, mismatched lengths, ids out of range or a
    category matrix of the wrong shape.
    """
    if real.num_interactions == 0:
        raise ValueError(f"real dataset {real.name!r} has no interactions")
    users = _index_array("simulated_user_idx", simulated_user_idx, real.num_users)
    items = _index_array("simulated_item_idx", simulated_item_idx, real.num_items)
    if users.shape != items.shape:
        raise ValueError(
            f"simulated_user_idx has {users.shape[0]} rows but simulated_item_idx has "
            f"{items.shape[0]}"
        )
    width = real.item_categories.shape[1]
    sim_cats = _category_weights(item_categories, real.num_items, width)

    real_items = np.bincount(real.item_idx, minlength=real.num_items).astype(np.float64)
    sim_items = np.bincount(items, minlength=real.num_items).astype(np.float64)
    real_users = np.bincount(real.user_idx, minlength=real.num_users).astype(np.float64)
    sim_users = np.bincount(users, minlength=real.num_users).astype(np.float64)

    real_pop, sim_pop = _popularity_stats(real_items), _popularity_stats(sim_items)
    real_act, sim_act = _activity_stats(real_users), _activity_stats(sim_users)
    real_genres = genre_shares(real_items, real.item_categories)
    sim_genres = genre_shares(sim_items, sim_cats)
    names = real.category_names if len(real.category_names) == width else range(width)
    l1 = float(np.abs(real_genres - sim_genres).sum())
    return {
        "num_interactions": {"real": real.num_interactions, "simulated": int(items.shape[0])},
        "item_popularity": {
            "real": real_pop,
            "simulated": sim_pop,
            "gini_abs_diff": abs(real_pop["gini"] - sim_pop["gini"]),
            "lorenz_ks": lorenz_distance(real_items, sim_items),
            "spearman": spearman(real_items, sim_items),
        },
        "user_activity": {
            "real": real_act,
            "simulated": sim_act,
            "gini_abs_diff": abs(real_act["gini"] - sim_act["gini"]),
            "ks": ks_distance(real_users / real_users.mean(), sim_users / sim_users.mean()),
            "lorenz_ks": lorenz_distance(real_users, sim_users),
            "spearman": spearman(real_users, sim_users),
        },
        "genre_shares": {
            "tv_distance": 0.5 * l1,
            "l1_distance": l1,
            "per_genre": {
                str(name): {"real": float(r), "simulated": float(s)}
                for name, r, s in zip(names, real_genres, sim_genres, strict=True)
            },
        },
    }


# -- the report -------------------------------------------------------------------------------


def _lorenz_points(counts: F64Array) -> list[float]:
    x, share = lorenz_curve(counts)
    grid = np.linspace(0.0, 1.0, LORENZ_POINTS)
    return [round(float(v), 6) for v in np.interp(grid, x, share)]


def calibration_report(
    dataset: InteractionDataset,
    seed: int = 0,
    *,
    num_clicks: int | None = None,
    settings: SimulatorSettings | None = None,
    batch_size: int = 128,
    clickbait_fraction: float = 0.1,
    ad_fraction: float = 0.1,
    ablations: bool = True,
) -> dict[str, Any]:
    """Fit ``dataset``, simulate click logs from calibrated and default worlds, compare.

    Every variant has the dataset's sizes (topics = genres) and logs ``num_clicks`` clicks
    (default: the real log's size) with :func:`simulate_click_log`:

    - ``calibrated``: :func:`calibrated_world` + :func:`calibrated_env`, users arriving in
      proportion to activity.
    - ``uncalibrated``: :func:`make_world`'s default draw at the same sizes (Dirichlet(0.1)
      topics standing in for genres, Zipf(1) popularity over a random ranking,
      log-normal(0.4) activity, uniform interests), logged the same way, so the difference
      from ``calibrated`` is the fitted arrays.
    - with ``ablations``: ``calibrated_uniform_logging`` (the calibrated world with the
      default uniform candidates and uniform arrivals: the world carries the statistics but
      the log does not show them) and ``calibrated_no_appeal_correction`` (candidates in
      proportion to popularity itself, without dividing out the static appeal).

    ``comparison["real_bootstrap"]`` compares the real log resampled with replacement to the
    same size: the distances a perfect simulator would still show from sampling noise alone.
    JSON-ready; ``curves`` holds Lorenz curves (``LORENZ_POINTS`` points) for plotting.
    """
    cfg = settings or SimulatorSettings()
    profile = fit_calibration(dataset, affinity_scale=cfg.affinity_scale)
    clicks = dataset.num_interactions if num_clicks is None else num_clicks
    world = calibrated_world(
        profile, seed, clickbait_fraction=clickbait_fraction, ad_fraction=ad_fraction
    )
    default_world = make_world(
        profile.catalog_settings(seed),
        clickbait_fraction=clickbait_fraction,
        ad_fraction=ad_fraction,
    )
    uniform_users = np.ones(world.num_users)
    # label -> (env, arrival weights, the simulated items' genre tags)
    variants: dict[str, tuple[SlateEnv, npt.ArrayLike, npt.ArrayLike]] = {
        "calibrated": (
            calibrated_env(world, cfg, seed=seed + 1),
            world.user_activity,
            dataset.item_categories,
        ),
        "uncalibrated": (
            calibrated_env(default_world, cfg, seed=seed + 1),
            default_world.user_activity,
            default_world.item_topics,
        ),
    }
    if ablations:
        variants["calibrated_uniform_logging"] = (
            SlateEnv(world, seed=seed + 1, settings=cfg),
            uniform_users,
            dataset.item_categories,
        )
        variants["calibrated_no_appeal_correction"] = (
            SlateEnv(
                world,
                seed=seed + 1,
                settings=cfg,
                candidate_sampler=PopularityCandidateSampler(world.item_popularity),
            ),
            world.user_activity,
            dataset.item_categories,
        )
    real_items = np.bincount(dataset.item_idx, minlength=dataset.num_items).astype(np.float64)
    real_users = np.bincount(dataset.user_idx, minlength=dataset.num_users).astype(np.float64)
    report: dict[str, Any] = {
        "config": {
            "dataset": dataset.name,
            "seed": seed,
            "num_clicks": clicks,
            "batch_size": batch_size,
            "slate_size": cfg.slate_size,
            "choice_model": cfg.choice_model,
            "affinity_scale": cfg.affinity_scale,
            "clickbait_fraction": clickbait_fraction,
            "ad_fraction": ad_fraction,
            "logging": "users arrive in proportion to activity; each slate is a draw of "
            "slate_size items by exposure weight (PopularityCandidateSampler over "
            "exposure_weights) in random order",
        },
        "profile": profile.summary(),
        "simulation": {},
        "comparison": {},
        "curves": {
            "item_lorenz": {"real": _lorenz_points(real_items)},
            "user_lorenz": {"real": _lorenz_points(real_users)},
        },
    }
    # Sampling-noise floor: the real log resampled with replacement to the same size, i.e.
    # what a perfect simulator's distances would look like at this number of clicks.
    rows = np.random.default_rng(seed + 3).integers(0, dataset.num_interactions, size=clicks)
    report["comparison"]["real_bootstrap"] = compare_statistics(
        dataset, dataset.user_idx[rows], dataset.item_idx[rows], dataset.item_categories
    )
    for label, (env, arrivals, cats) in variants.items():
        # The same logging stream for every variant: differences come from the worlds.
        log = simulate_click_log(
            env,
            clicks,
            rng=np.random.default_rng(seed + 2),
            user_weights=arrivals,
            batch_size=batch_size,
        )
        sampler = env.candidate_sampler
        capped = (
            int(np.sum(sampler.inclusion_probabilities(cfg.slate_size) >= 1.0))
            if isinstance(sampler, PopularityCandidateSampler)
            else 0
        )
        report["simulation"][label] = {
            "clicks": log.num_clicks,
            "requests": log.requests,
            "ctr": log.ctr,
            # Items the exposure model wants in more than every slate (shown in all of them).
            "exposure_capped_items": capped,
        }
        report["comparison"][label] = compare_statistics(dataset, log.user_idx, log.item_idx, cats)
        sim_items = np.bincount(log.item_idx, minlength=dataset.num_items).astype(np.float64)
        sim_users = np.bincount(log.user_idx, minlength=dataset.num_users).astype(np.float64)
        report["curves"]["item_lorenz"][label] = _lorenz_points(sim_items)
        report["curves"]["user_lorenz"][label] = _lorenz_points(sim_users)
    return report


def run_calibration_report(
    data_dir: Path | None = None,
    seed: int = 0,
    *,
    num_clicks: int | None = None,
    settings: SimulatorSettings | None = None,
    batch_size: int = 128,
    ablations: bool = True,
) -> dict[str, Any]:
    """:func:`calibration_report` on MovieLens-100K (fetched into ``data_dir`` if missing).

    Reads (and on first use downloads) the dataset through
    :func:`recsys.data.movielens.load_ml100k`; ``data_dir`` is its cache root.
    """
    from recsys.data.movielens import load_ml100k  # file I/O only when a report is asked for

    return calibration_report(
        load_ml100k(data_dir),
        seed,
        num_clicks=num_clicks,
        settings=settings,
        batch_size=batch_size,
        ablations=ablations,
    )
