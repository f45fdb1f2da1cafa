"""A seeded synthetic world: items with topic mixtures, quality, length, clickbait and ads; users.

The demo, the simulator and the tests all need a catalog whose ground truth is known, so a
learned retriever or policy can be checked against it. Every array is drawn from its own child
of one :class:`numpy.random.SeedSequence`, so the same seed always yields identical arrays and
adding a new per-item or per-user attribute does not shift the ones that already exist (the
clickbait, ad, length and activity attributes were added that way: worlds drawn before them
keep their topics, quality, popularity and interests bit for bit).

Calibration to a real dataset plugs in through :func:`make_world`'s optional arrays
(``item_topics``, ``item_quality``, ``item_popularity``, ``user_interests``,
``user_activity``): what is given replaces the draw, everything else is still drawn from the
seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from recsys.config import CatalogSettings
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

# Child stream indices of the world's SeedSequence. Append new ones; never renumber, or worlds
# built from the same seed stop being identical across versions.
_STREAM_TOPICS = 0
_STREAM_QUALITY = 1
_STREAM_POPULARITY = 2
_STREAM_INTERESTS = 3
_STREAM_LENGTH = 4
_STREAM_CLICKBAIT = 5
_STREAM_ADS = 6
_STREAM_ACTIVITY = 7
_NUM_STREAMS = 8

#: Length of an item a hand-built world does not specify (seconds).
DEFAULT_ITEM_LENGTH_S = 180.0

# Identity sentinels: "not given" for the attributes hand-built worlds may omit. Compared with
# ``is``, so an explicitly passed empty array is still validated (and rejected) as such.
_UNSET_F32: FloatArray = np.zeros(0, dtype=np.float32)
_UNSET_BOOL: BoolArray = np.zeros(0, dtype=np.bool_)


def _unset_f32() -> FloatArray:
    return _UNSET_F32


def _unset_bool() -> BoolArray:
    return _UNSET_BOOL


def _read_only(arr: npt.NDArray[np.generic]) -> None:
    arr.setflags(write=False)


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticWorld:
    """Ground truth of a simulated catalog and user population (arrays are read-only).

    - ``item_topics`` ``[num_items, num_topics]`` float32: each row is a topic mixture on the
      simplex (non-negative, sums to 1). A small Dirichlet concentration makes most mass sit on
      one or two topics, like real genres.
    - ``item_quality`` ``[num_items]`` float32 in ``[-1, 1]``: topic-independent appeal, so
      that "what the user likes" and "what is good" are separable signals. Hidden from policies.
    - ``item_popularity`` ``[num_items]`` float32, sums to 1: a Zipf-like prior (rank ``r`` gets
      mass proportional to ``(r + 1) ** -exponent``; ranks are a random permutation of items),
      for popularity baselines and biased logging policies.
    - ``user_interests`` ``[num_users, num_topics]`` float32 in ``[-1, 1]``: signed interests,
      as in RecSim's interest-evolution model; a negative value means the user dislikes the
      topic. With topic mixtures on the simplex, ``user_interests @ item_topics.T`` is then an
      affinity in ``[-1, 1]``. These are the *initial* interests; the simulator evolves a copy.
    - ``user_ids``: wire ids ``"u0" .. "u{num_users-1}"``, in the same order as the rows.
    - ``item_length_s`` ``[num_items]`` float32 > 0: seconds it takes to consume the item fully
      (dwell is a fraction of it). Defaults to :data:`DEFAULT_ITEM_LENGTH_S`.
    - ``item_clickbait`` ``[num_items]`` float32 in ``[0, 1]``: extra click appeal that is paid
      back as dissatisfaction after the click. Hidden from policies. Defaults to 0.
    - ``item_is_ad`` ``[num_items]`` bool and ``item_bid`` ``[num_items]`` float32 >= 0:
      sponsored items and the advertiser's payment per conversion (0 for organic items).
      Default: no ads.
    - ``user_activity`` ``[num_users]`` float32 > 0: how engaged a user is by nature; 1.0 is an
      average user. It multiplies the session time budget and adds ``ln(activity)`` to the
      return logit, so active users have longer sessions and come back more often. Default 1.

    The last five may be omitted by hand-built worlds (tests); they then take the neutral
    defaults above.
    """

    item_topics: FloatArray
    item_quality: FloatArray
    item_popularity: FloatArray
    user_interests: FloatArray
    user_ids: list[str]
    item_length_s: FloatArray = field(default_factory=_unset_f32)
    item_clickbait: FloatArray = field(default_factory=_unset_f32)
    item_is_ad: BoolArray = field(default_factory=_unset_bool)
    item_bid: FloatArray = field(default_factory=_unset_f32)
    user_activity: FloatArray = field(default_factory=_unset_f32)

    def __post_init__(self) -> None:
        if self.item_topics.ndim != 2:
            raise ValueError(
                f"item_topics must be 2-D [num_items, num_topics], got shape "
                f"{self.item_topics.shape}"
            )
        num_items, num_topics = self.item_topics.shape
        num_users = len(self.user_ids)
        defaults: dict[str, npt.NDArray[np.generic]] = {
            "item_length_s": np.full(num_items, DEFAULT_ITEM_LENGTH_S, dtype=np.float32),
            "item_clickbait": np.zeros(num_items, dtype=np.float32),
            "item_is_ad": np.zeros(num_items, dtype=np.bool_),
            "item_bid": np.zeros(num_items, dtype=np.float32),
            "user_activity": np.ones(num_users, dtype=np.float32),
        }
        for name, value in defaults.items():
            if getattr(self, name) is _UNSET_F32 or getattr(self, name) is _UNSET_BOOL:
                _read_only(value)
                object.__setattr__(self, name, value)
        expected = {
            "item_quality": (self.item_quality.shape, (num_items,)),
            "item_popularity": (self.item_popularity.shape, (num_items,)),
            "user_interests": (self.user_interests.shape, (num_users, num_topics)),
            "item_length_s": (self.item_length_s.shape, (num_items,)),
            "item_clickbait": (self.item_clickbait.shape, (num_items,)),
            "item_is_ad": (self.item_is_ad.shape, (num_items,)),
            "item_bid": (self.item_bid.shape, (num_items,)),
            "user_activity": (self.user_activity.shape, (num_users,)),
        }
        for name, (got, want) in expected.items():
            if got != want:
                raise ValueError(f"{name} has shape {got}, expected {want}")
        floats = {
            "item_topics": self.item_topics,
            "item_quality": self.item_quality,
            "item_popularity": self.item_popularity,
            "user_interests": self.user_interests,
            "item_length_s": self.item_length_s,
            "item_clickbait": self.item_clickbait,
            "item_bid": self.item_bid,
            "user_activity": self.user_activity,
        }
        for name, arr in floats.items():
            if arr.dtype != np.float32:
                raise ValueError(f"{name} must be float32, got {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite (no NaN or inf)")
        if self.item_is_ad.dtype != np.bool_:
            raise ValueError(f"item_is_ad must be bool, got {self.item_is_ad.dtype}")
        if self.item_length_s.size and self.item_length_s.min() <= 0:
            raise ValueError("item_length_s must be > 0")
        if self.item_clickbait.size and (
            self.item_clickbait.min() < 0 or self.item_clickbait.max() > 1
        ):
            raise ValueError("item_clickbait must lie in [0, 1]")
        if self.item_bid.size and self.item_bid.min() < 0:
            raise ValueError("item_bid must be >= 0")
        if self.user_activity.size and self.user_activity.min() <= 0:
            raise ValueError("user_activity must be > 0")

    @property
    def num_items(self) -> int:
        """Catalog size; item ids are dense indices ``0 .. num_items - 1``."""
        return int(self.item_topics.shape[0])

    @property
    def num_users(self) -> int:
        """Population size; user indices are ``0 .. num_users - 1``."""
        return int(self.user_interests.shape[0])

    @property
    def num_topics(self) -> int:
        """Dimension of the topic space shared by items and users."""
        return int(self.item_topics.shape[1])

    def select_users(self, user_idx: IntArray) -> SyntheticWorld:
        """The same catalog with the population ``user_idx`` (rows may repeat).

        A vectorized environment with more slots than users, or one that serves a subset of
        the population as a whole batch, builds its own population this way. Repeated users
        keep their wire id, so ids are unique only if ``user_idx`` is.
        """
        idx = np.asarray(user_idx, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"user_idx must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_users):
            raise ValueError(f"user_idx must lie in [0, {self.num_users})")
        interests = self.user_interests[idx]
        activity = self.user_activity[idx]
        _read_only(interests)
        _read_only(activity)
        return SyntheticWorld(
            item_topics=self.item_topics,
            item_quality=self.item_quality,
            item_popularity=self.item_popularity,
            user_interests=interests,
            user_ids=[self.user_ids[i] for i in idx.tolist()],
            item_length_s=self.item_length_s,
            item_clickbait=self.item_clickbait,
            item_is_ad=self.item_is_ad,
            item_bid=self.item_bid,
            user_activity=activity,
        )


def _external(
    name: str, value: npt.ArrayLike, shape: tuple[int, ...], hint: str
) -> npt.NDArray[np.float64]:
    """Validate an externally supplied array's shape and finiteness (float64 working copy)."""
    arr = np.array(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape} ({hint})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def make_world(
    settings: CatalogSettings,
    *,
    item_topics: npt.ArrayLike | None = None,
    item_quality: npt.ArrayLike | None = None,
    item_popularity: npt.ArrayLike | None = None,
    user_interests: npt.ArrayLike | None = None,
    user_activity: npt.ArrayLike | None = None,
    topic_concentration: float = 0.1,
    zipf_exponent: float = 1.0,
    quality_scale: float = 0.35,
    clickbait_fraction: float = 0.1,
    ad_fraction: float = 0.1,
    activity_spread: float = 0.4,
) -> SyntheticWorld:
    """Draw a world from ``settings`` (sizes and seed); the same arguments give identical arrays.

    ``topic_concentration`` is the symmetric Dirichlet parameter (smaller = sparser mixtures),
    ``zipf_exponent`` shapes the popularity prior and ``quality_scale`` is the standard
    deviation of item quality before clipping to ``[-1, 1]``. A ``clickbait_fraction`` of items
    get a clickbait score uniform in ``[0.5, 1]`` (0 for the rest); an ``ad_fraction`` of items
    are ads with a log-normal bid (median 2.0 per conversion) and a short landing-page length
    (median 30 s; organic items have median 150 s). ``activity_spread`` is the log-normal sigma
    of user activity (normalized to mean 1; 0 makes every user average).

    External arrays (calibration to a real dataset) replace the corresponding draw; their
    shapes must agree with ``settings`` (``num_items``, ``num_users``, ``num_topics``):

    - ``item_topics`` ``[num_items, num_topics]``, non-negative, each row with positive mass;
      rows are normalized to sum to 1 (a multi-hot genre matrix is fine).
    - ``item_quality`` ``[num_items]`` in ``[-1, 1]`` (e.g. a rescaled mean rating).
    - ``item_popularity`` ``[num_items]`` non-negative with positive sum (e.g. rating counts);
      normalized to sum to 1.
    - ``user_interests`` ``[num_users, num_topics]`` in ``[-1, 1]``.
    - ``user_activity`` ``[num_users]`` > 0, float32-castable; 1.0 is an average user. It
      scales the session time budget and adds ``ln(activity)`` to the return logit (e.g. a
      user's rating count divided by the mean count). Used as given, not renormalized.
    """
    for name, size in (
        ("num_items", settings.num_items),
        ("num_users", settings.num_users),
        ("num_topics", settings.num_topics),
    ):
        if size < 1:
            raise ValueError(f"catalog.{name} must be >= 1, got {size}")
    for name, value, low_ok in (
        ("topic_concentration", topic_concentration, False),
        ("zipf_exponent", zipf_exponent, True),
        ("quality_scale", quality_scale, True),
        ("activity_spread", activity_spread, True),
    ):
        if not (np.isfinite(value) and (value >= 0 if low_ok else value > 0)):
            raise ValueError(f"{name} must be {'>= 0' if low_ok else '> 0'}, got {value}")
    for name, fraction in (
        ("clickbait_fraction", clickbait_fraction),
        ("ad_fraction", ad_fraction),
    ):
        if not (np.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"{name} must lie in [0, 1], got {fraction}")

    num_items, num_users, num_topics = settings.num_items, settings.num_users, settings.num_topics
    streams = [
        np.random.default_rng(child)
        for child in np.random.SeedSequence(settings.seed).spawn(_NUM_STREAMS)
    ]
    item_shape = (num_items,)
    item_hint = "catalog.num_items"

    if item_topics is None:
        topics = streams[_STREAM_TOPICS].dirichlet(
            np.full(num_topics, topic_concentration), size=num_items
        )
    else:
        topics = _external(
            "item_topics", item_topics, (num_items, num_topics), "catalog.num_items x num_topics"
        )
        mass = topics.sum(axis=1)
        if topics.min() < 0 or mass.min() <= 0:
            raise ValueError("item_topics must be non-negative with positive mass in every row")
        topics = topics / mass[:, None]

    if item_quality is None:
        quality = np.clip(
            streams[_STREAM_QUALITY].normal(0.0, quality_scale, size=num_items), -1, 1
        )
    else:
        quality = _external("item_quality", item_quality, item_shape, item_hint)
        if quality.min() < -1 or quality.max() > 1:
            raise ValueError("item_quality must lie in [-1, 1]")

    if item_popularity is None:
        ranks = streams[_STREAM_POPULARITY].permutation(num_items)
        popularity = (ranks + 1.0) ** -zipf_exponent
    else:
        popularity = _external("item_popularity", item_popularity, item_shape, item_hint)
        if popularity.min() < 0 or popularity.sum() <= 0:
            raise ValueError("item_popularity must be non-negative with a positive sum")
    popularity = popularity / popularity.sum()

    if user_interests is None:
        interests = streams[_STREAM_INTERESTS].uniform(-1.0, 1.0, size=(num_users, num_topics))
    else:
        interests = _external(
            "user_interests",
            user_interests,
            (num_users, num_topics),
            "catalog.num_users x num_topics",
        )
        if interests.min() < -1 or interests.max() > 1:
            raise ValueError("user_interests must lie in [-1, 1]")

    ads = streams[_STREAM_ADS]
    is_ad = ads.random(num_items) < ad_fraction
    bid = np.where(is_ad, np.exp(np.log(2.0) + 0.5 * ads.standard_normal(num_items)), 0.0)

    log_len = streams[_STREAM_LENGTH].standard_normal(num_items)
    length = np.where(
        is_ad,
        np.exp(np.log(30.0) + 0.3 * log_len),
        np.exp(np.log(150.0) + 0.6 * log_len),
    )
    length = np.clip(length, 5.0, 3600.0)

    bait = streams[_STREAM_CLICKBAIT]
    clickbait = np.where(
        bait.random(num_items) < clickbait_fraction, bait.uniform(0.5, 1.0, num_items), 0.0
    )

    if user_activity is None:
        activity = np.exp(activity_spread * streams[_STREAM_ACTIVITY].standard_normal(num_users))
        activity /= activity.mean()
    else:
        activity = _external("user_activity", user_activity, (num_users,), "catalog.num_users")
        if activity.min() <= 0:
            raise ValueError("user_activity must be > 0")

    floats = [
        a.astype(np.float32)
        for a in (topics, quality, popularity, interests, length, clickbait, bid, activity)
    ]
    is_ad_arr = is_ad.astype(np.bool_)
    for arr in [*floats, is_ad_arr]:
        _read_only(arr)
    return SyntheticWorld(
        item_topics=floats[0],
        item_quality=floats[1],
        item_popularity=floats[2],
        user_interests=floats[3],
        user_ids=[f"u{i}" for i in range(num_users)],
        item_length_s=floats[4],
        item_clickbait=floats[5],
        item_is_ad=is_ad_arr,
        item_bid=floats[6],
        user_activity=floats[7],
    )
