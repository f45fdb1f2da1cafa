"""The simulated user: latent state, click appeal, responses and state transitions.

A user has signed topic interests that drift towards what satisfied them, per-topic boredom
(fatigue) that grows with consumption and decays with time, per-topic satiation after a
purchase (an ad conversion sates the user on the ad's topics for a long while), a memory of
recently consumed items (re-showing one is unappealing), ad fatigue, a session time budget
that good content extends and clickbait, irrelevant slates and ads drain, and a probability
of returning for another session that depends on how satisfying the last one was. The
equations are in ``docs/simulator.md``; parameters live in
:class:`recsys.config.SimulatorSettings`.

Everything is vectorized over a batch of users ``[B]`` and slate slots ``[B, S]``: the only
per-step gathers are of the slate's items and the clicked item, never ``[B, num_items]``.
:class:`LatentUserState` is a bag of arrays that is either the whole population (updated in
place) or a gathered batch of it (written back by the environment).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recsys.config import SimulatorSettings
from recsys.data.synthetic import SyntheticWorld
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]
F64Array = npt.NDArray[np.float64]


def _decay(half_life: float) -> float:
    """Per-step retention factor of a quantity that halves every ``half_life`` steps."""
    return float(2.0 ** (-1.0 / half_life))


@dataclass(slots=True, eq=False)
class LatentUserState:
    """Mutable per-user simulator state, one row per user (all arrays share the first axis).

    ``clock`` is the user's own time in steps, including the gaps between sessions; it drives
    the decay of the consumed-item memory (``hist_items`` / ``hist_time``, a ring buffer of the
    last ``history_size`` clicked items with ``-1`` for empty slots). ``alive`` is False once
    the user has churned; stepping such a user starts a new life.
    """

    interests: FloatArray  # [B, T] in [-1, 1]
    fatigue: FloatArray  # [B, T] >= 0
    satiation: FloatArray  # [B, T] >= 0, grows with conversions
    ad_fatigue: FloatArray  # [B] >= 0
    budget: FloatArray  # [B] seconds left in the session
    clock: FloatArray  # [B] steps lived, gaps included
    hist_items: IntArray  # [B, K] recently clicked items, -1 = empty
    hist_time: FloatArray  # [B, K] clock at which they were clicked
    hist_next: IntArray  # [B] ring-buffer write position
    life: IntArray  # [B]
    session: IntArray  # [B] session index within the life
    session_step: IntArray  # [B] steps served in the current session
    life_step: IntArray  # [B] steps served in the current life
    session_sat: FloatArray  # [B] summed satisfaction of the session
    ltv: F64Array  # [B] dwell seconds in the current life
    revenue: F64Array  # [B] ad revenue in the current life
    alive: BoolArray  # [B]

    @property
    def size(self) -> int:
        """Number of users (rows)."""
        return int(self.budget.shape[0])

    def take(self, rows: IntArray) -> LatentUserState:
        """A copy of the given rows (duplicates allowed)."""
        return LatentUserState(
            **{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)}
        )

    def put(self, rows: IntArray, batch: LatentUserState, batch_rows: IntArray) -> None:
        """Write ``batch[batch_rows]`` into rows ``rows`` of this state (rows must be unique)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name)[rows] = getattr(batch, f.name)[batch_rows]


class Responses(NamedTuple):
    """Per-user outcome of one step before it is packaged into a StepResult."""

    clicked_item: IntArray
    click_position: IntArray
    clicked: BoolArray
    dwell_s: FloatArray
    like: BoolArray
    conversion: BoolArray
    revenue: FloatArray
    skip: BoolArray
    satisfaction: FloatArray
    session_end: BoolArray
    terminated: BoolArray
    return_probability: FloatArray


class SlateView(NamedTuple):
    """A slate as the user sees it before choosing: appeal and the pieces the step reuses."""

    appeal: FloatArray  # [B, S]
    repeat: FloatArray | None  # [B, S] recency of consumption, None when nothing consumed
    num_ads: FloatArray  # [B] ads in the slate
    pref: FloatArray  # [B, T] interests less fatigue and satiation, as click appeal weighs them
    satiation: FloatArray | None  # [B, T] the users' satiation, None when it has no effect


class UserModel:
    """Parameters and item tables of the user dynamics, with the vectorized update rules.

    Item-level constants that appear in every step (static appeal, static satisfaction) are
    folded into one ``[num_items]`` table each at construction, so a step gathers one float
    per slot for them.
    """

    def __init__(self, world: SyntheticWorld, settings: SimulatorSettings) -> None:
        s = settings
        self.settings = s
        self.world = world
        self.num_topics = world.num_topics
        self.history_size = s.history_size
        self.topics: FloatArray = np.ascontiguousarray(world.item_topics, dtype=np.float32)
        self.is_ad: BoolArray = world.item_is_ad
        self.bid: FloatArray = world.item_bid
        self.length_s: FloatArray = world.item_length_s
        self.static_appeal: FloatArray = (
            s.quality_weight * world.item_quality
            + s.clickbait_appeal * world.item_clickbait
            + s.ad_appeal * world.item_is_ad
        ).astype(np.float32)
        self.static_satisfaction: FloatArray = (
            s.satisfaction_quality_weight * world.item_quality
            - s.clickbait_penalty * world.item_clickbait
        ).astype(np.float32)
        self.fatigue_decay = np.float32(_decay(s.fatigue_half_life_steps))
        self.ad_fatigue_decay = np.float32(_decay(s.ad_fatigue_half_life_steps))
        self.repeat_rate = np.float32(np.log(2.0) / s.repeat_half_life_steps)
        self.gap_fatigue_decay = np.float32(
            _decay(s.fatigue_half_life_steps) ** s.session_gap_steps
        )
        self.gap_ad_fatigue_decay = np.float32(
            _decay(s.ad_fatigue_half_life_steps) ** s.session_gap_steps
        )
        self.satiation_decay = np.float32(_decay(s.satiation_half_life_steps))
        self.gap_satiation_decay = np.float32(
            _decay(s.satiation_half_life_steps) ** s.session_gap_steps
        )
        # Satiation changes nothing when it never grows or weighs nothing; the step then skips
        # its terms, so such settings give exactly the trajectories of a model without it.
        self.satiation_acts = s.satiation_gain > 0 and (
            s.satiation_appeal_weight > 0 or s.satiation_satisfaction_weight > 0
        )
        self.log_activity: FloatArray = np.log(world.user_activity).astype(np.float32)

    # -- state construction -------------------------------------------------------------

    def initial_state(self, users: IntArray) -> LatentUserState:
        """Fresh lives for ``users`` (population indices): initial interests, full budget."""
        b, t, k = users.shape[0], self.num_topics, self.history_size
        return LatentUserState(
            interests=self.world.user_interests[users].astype(np.float32, copy=True),
            fatigue=np.zeros((b, t), dtype=np.float32),
            satiation=np.zeros((b, t), dtype=np.float32),
            ad_fatigue=np.zeros(b, dtype=np.float32),
            budget=(self.settings.session_budget_s * self.world.user_activity[users]).astype(
                np.float32
            ),
            clock=np.zeros(b, dtype=np.float32),
            hist_items=np.full((b, k), -1, dtype=np.int64),
            hist_time=np.zeros((b, k), dtype=np.float32),
            hist_next=np.zeros(b, dtype=np.int64),
            life=np.zeros(b, dtype=np.int64),
            session=np.zeros(b, dtype=np.int64),
            session_step=np.zeros(b, dtype=np.int64),
            life_step=np.zeros(b, dtype=np.int64),
            session_sat=np.zeros(b, dtype=np.float32),
            ltv=np.zeros(b, dtype=np.float64),
            revenue=np.zeros(b, dtype=np.float64),
            alive=np.ones(b, dtype=np.bool_),
        )

    def restart(self, state: LatentUserState, rows: IntArray, users: IntArray) -> None:
        """Start a new life for ``state`` rows ``rows`` (population users ``users``), in place."""
        fresh = self.initial_state(users)
        life = state.life[rows] + 1
        state.put(rows, fresh, np.arange(rows.shape[0]))
        state.life[rows] = life

    # -- one step ------------------------------------------------------------------------

    def repeat_penalty(self, state: LatentUserState, items: IntArray) -> FloatArray | None:
        """``[B, S]`` memory of having consumed each slotted item recently (None if no memory).

        ``sum_k [hist_k == item] * 2 ** (-(clock - t_k) / half_life)``: a loop over the
        ``history_size`` memory slots (a small constant), each a ``[B, S]`` comparison into
        reused buffers.
        """
        hist = state.hist_items
        filled = hist >= 0
        if not filled.any():
            return None
        weight = np.exp(-self.repeat_rate * (state.clock[:, None] - state.hist_time))
        weight *= filled
        penalty = np.zeros(items.shape, dtype=np.float32)
        match = np.empty(items.shape, dtype=np.bool_)
        term = np.empty(items.shape, dtype=np.float32)
        for k in range(hist.shape[1]):
            np.equal(items, hist[:, k : k + 1], out=match)
            np.multiply(match, weight[:, k : k + 1], out=term)
            penalty += term
        return penalty

    def slate_view(self, state: LatentUserState, items: IntArray) -> SlateView:
        """Click appeal ``[B, S]`` of the slotted items, with intermediates the step reuses.

        ``appeal = topics_i . (I - w_F F - w_Sa S) + static_i - w_R R_i - w_A A [i is ad]``.
        Satiation enters through the ``[B, T]`` preference, so it costs no extra ``[B, S, T]``
        work; satisfaction re-weighs it (``w_Ss``) for the one clicked item.
        """
        s = self.settings
        pref = state.interests - np.float32(s.fatigue_weight) * state.fatigue  # [B, T]
        satiation: FloatArray | None = None
        if self.satiation_acts:
            satiation = state.satiation
            pref -= np.float32(s.satiation_appeal_weight) * satiation
        topics = np.take(self.topics, items, axis=0)  # [B, S, T]
        appeal: FloatArray = np.matmul(topics, pref[:, :, None])[:, :, 0]
        appeal += np.take(self.static_appeal, items)
        ads: BoolArray = np.take(self.is_ad, items)
        repeat = self.repeat_penalty(state, items)
        if repeat is not None:
            appeal -= np.float32(s.repeat_weight) * repeat
        ad_penalty = np.float32(s.ad_fatigue_weight) * state.ad_fatigue
        appeal -= ads * ad_penalty[:, None]
        # Row counts via a GEMV: numpy reduces a short last axis slowly.
        num_ads = ads.astype(np.float32) @ np.ones(items.shape[1], dtype=np.float32)
        return SlateView(
            appeal=appeal, repeat=repeat, num_ads=num_ads, pref=pref, satiation=satiation
        )

    def respond_and_update(
        self,
        state: LatentUserState,
        users: IntArray,
        items: IntArray,
        choice: IntArray,
        view: SlateView,
        rng: np.random.Generator,
    ) -> Responses:
        """Responses to the chosen slot and the state transition, in place on ``state``.

        ``choice`` ``[B]`` is a slot or ``S`` for no click. Draws a fixed number of random
        variates per row whatever happens, so trajectories depend only on the seed and inputs.
        """
        s = self.settings
        batch, slate_size = items.shape
        rows = np.arange(batch)
        clicked = choice < slate_size
        pos = np.where(clicked, choice, 0)
        chosen = items[rows, pos]  # the item in slot 0 stands in for rows without a click
        clicked_item = np.where(clicked, chosen, -1)
        click_position = np.where(clicked, choice, -1)
        clicked_f = clicked.astype(np.float32)
        # One draw for all per-row randomness: noise, like, conversion, return.
        uniform = rng.random((4, batch), dtype=np.float32)
        # Logistic noise with standard deviation 1 (cheaper than a float32 normal draw).
        noise = np.log(uniform[3] / (1.0 - uniform[3]) + np.float32(1e-30))
        noise *= np.float32(np.sqrt(3.0) / np.pi)

        # Satisfaction with the clicked item: topic match (bored and sated topics satisfy
        # less), quality, clickbait paid back, a recently consumed item satisfies less, noise.
        theta = np.take(self.topics, chosen, axis=0)  # [B, T]
        sat = np.einsum("bt,bt->b", theta, view.pref)
        sat += np.take(self.static_satisfaction, chosen)
        if view.repeat is not None:
            sat -= np.float32(s.repeat_weight) * view.repeat[rows, pos]
        if view.satiation is not None:
            # view.pref already holds -w_Sa S: satisfaction weighs satiation w_Ss in total.
            extra = np.float32(s.satiation_satisfaction_weight - s.satiation_appeal_weight)
            sat -= extra * np.einsum("bt,bt->b", theta, view.satiation)
        sat += np.float32(s.satisfaction_noise) * noise
        sat = np.where(clicked, sat, np.float32(s.no_click_satisfaction)).astype(np.float32)

        # Observable responses.
        frac = 1.0 / (1.0 + np.exp(-(np.float32(s.dwell_sharpness) * sat + s.dwell_bias)))
        dwell = (np.take(self.length_s, chosen) * frac * clicked).astype(np.float32)
        skip = clicked & (frac < s.skip_fraction)
        p_like = 1.0 / (1.0 + np.exp(-np.float32(s.like_sharpness) * (sat - s.like_threshold)))
        like = clicked & (uniform[0] < p_like)
        p_conv = np.float32(2.0 * s.conversion_rate) / (1.0 + np.exp(-sat))
        p_conv *= np.take(self.is_ad, chosen)
        conversion = clicked & (uniform[1] < p_conv)
        revenue = (np.take(self.bid, chosen) * conversion).astype(np.float32)
        num_ads = view.num_ads

        # Time budget: browsing costs time, consumed time is partly refunded by satisfying
        # content (extension_gain < 1 keeps every step a net drain), bad content, empty slates
        # and ads (more so for an ad-fatigued user) drain extra.
        pos_sat = np.maximum(sat, 0.0)
        neg_sat = np.maximum(-sat, 0.0) * clicked_f
        drain = np.float32(s.browse_cost_s) + dwell * (
            1.0 - np.float32(s.extension_gain) * np.tanh(pos_sat)
        )
        drain += np.float32(s.bad_content_cost_s) * neg_sat
        drain += np.float32(s.no_click_cost_s) * (1.0 - clicked_f)
        drain += np.float32(s.ad_cost_s) * num_ads * (1.0 + state.ad_fatigue)
        state.budget -= drain

        # Interest drift: satisfying consumption pulls interests towards the item's topics,
        # a disappointing one pushes them away; (1 -+ I) keeps interests inside [-1, 1].
        # Rows without a click have drift 0 (in-place ops: this is [B, T] work).
        drift = np.float32(s.interest_drift) * np.tanh(sat) * clicked_f
        step = np.sign(drift)[:, None] * state.interests
        np.subtract(np.float32(1.0), step, out=step)
        step *= theta
        step *= drift[:, None]
        state.interests += step
        np.clip(state.interests, -1.0, 1.0, out=state.interests)  # float rounding only
        # Satiation grows with a purchase on the item's topics and decays slowly (before the
        # fatigue update below, which scales theta in place).
        state.satiation *= self.satiation_decay
        bought = np.flatnonzero(conversion)
        if bought.size:
            state.satiation[bought] += np.float32(s.satiation_gain) * theta[bought]
        # Boredom and ad fatigue grow with exposure and decay with time.
        state.fatigue *= self.fatigue_decay
        theta *= (np.float32(s.fatigue_gain) * clicked_f)[:, None]
        state.fatigue += theta
        state.ad_fatigue *= self.ad_fatigue_decay
        state.ad_fatigue += np.float32(s.ad_fatigue_gain) * num_ads
        # Remember the clicked item (ring buffer).
        hit = np.flatnonzero(clicked)
        if hit.size:
            slot = state.hist_next[hit]
            state.hist_items[hit, slot] = chosen[hit]
            state.hist_time[hit, slot] = state.clock[hit]
            state.hist_next[hit] = (slot + 1) % self.history_size

        state.clock += 1.0
        state.session_step += 1
        state.life_step += 1
        state.session_sat += sat
        state.ltv += dwell
        state.revenue += revenue

        # Session end: the user leaves; returns with a probability that grows with the
        # session's mean satisfaction and the user's activity, or churns for good.
        session_end = state.budget <= 0.0
        terminated = np.zeros(batch, dtype=np.bool_)
        return_probability = np.full(batch, np.nan, dtype=np.float32)
        ended = np.flatnonzero(session_end)
        if ended.size:
            mean_sat = state.session_sat[ended] / state.session_step[ended]
            logit = (
                s.return_bias
                + s.return_satisfaction_weight * mean_sat
                + self.log_activity[users[ended]]
            )
            p_return = (s.return_max / (1.0 + np.exp(-logit))).astype(np.float32)
            return_probability[ended] = p_return
            back = uniform[2, ended] < p_return
            churned = ended[~back]
            terminated[churned] = True
            state.alive[churned] = False
            again = ended[back]
            if again.size:
                self._start_next_session(state, again, users[again])
        return Responses(
            clicked_item=clicked_item,
            click_position=click_position,
            clicked=clicked,
            dwell_s=dwell,
            like=like,
            conversion=conversion,
            revenue=revenue,
            skip=skip,
            satisfaction=sat,
            session_end=session_end,
            terminated=terminated,
            return_probability=return_probability,
        )

    def _start_next_session(self, state: LatentUserState, rows: IntArray, users: IntArray) -> None:
        """A returning user: fresh budget; boredom, satiation, ad fatigue decayed over the gap."""
        s = self.settings
        state.budget[rows] = s.session_budget_s * self.world.user_activity[users]
        state.fatigue[rows] *= self.gap_fatigue_decay
        state.satiation[rows] *= self.gap_satiation_decay
        state.ad_fatigue[rows] *= self.gap_ad_fatigue_decay
        state.clock[rows] += np.float32(s.session_gap_steps)
        state.session[rows] += 1
        state.session_step[rows] = 0
        state.session_sat[rows] = 0.0

    # -- observation -----------------------------------------------------------------------

    def user_feature_names(self) -> tuple[str, ...]:
        """Column names of :meth:`user_features`."""
        t = range(self.num_topics)
        return (
            *(f"interest_{k}" for k in t),
            *(f"fatigue_{k}" for k in t),
            "ad_fatigue",
            "log1p_session_step",
            "log1p_session",
            "log1p_life_step",
            "activity",
            *(f"satiation_{k}" for k in t),
        )

    def user_features(self, state: LatentUserState, users: IntArray) -> FloatArray:
        """``[B, 3T + 5]`` what a production system could know about each user.

        Current interests (a system with a good user model knows them), boredom per topic and
        ad fatigue (functions of the consumption log), how deep into the session and life the
        user is, their activity level, and satiation per topic (a function of the purchase
        log). Satiation is the last block so the older columns keep their positions. The time
        budget and satisfaction stay hidden.
        """
        t = self.num_topics
        out = np.empty((state.size, 3 * t + 5), dtype=np.float32)
        out[:, :t] = state.interests
        out[:, t : 2 * t] = state.fatigue
        out[:, 2 * t] = state.ad_fatigue
        out[:, 2 * t + 1] = np.log1p(state.session_step)
        out[:, 2 * t + 2] = np.log1p(state.session)
        out[:, 2 * t + 3] = np.log1p(state.life_step)
        out[:, 2 * t + 4] = np.take(self.world.user_activity, users)
        out[:, 2 * t + 5 :] = state.satiation
        return out

    def user_feature_bounds(self, slate_size: int) -> tuple[FloatArray, FloatArray]:
        """Bounds ``(low, high)`` of :meth:`user_features` for slates of ``slate_size`` items.

        Fatigue is a decayed sum of topic mixtures (each adds at most ``fatigue_gain`` to a
        topic), so it stays below ``gain / (1 - decay)``; satiation likewise (at most one
        conversion per step); ad fatigue with at most ``slate_size`` ads per step. Counts are
        log1p'd (50 covers any feasible run).
        """
        s = self.settings
        t = self.num_topics
        fatigue_max = s.fatigue_gain / (1.0 - float(self.fatigue_decay))
        satiation_max = s.satiation_gain / (1.0 - float(self.satiation_decay))
        ad_max = s.ad_fatigue_gain * slate_size / (1.0 - float(self.ad_fatigue_decay))
        low = np.zeros(3 * t + 5, dtype=np.float32)
        high = np.empty(3 * t + 5, dtype=np.float32)
        low[:t] = -1.0
        high[:t] = 1.0
        high[t : 2 * t] = fatigue_max * 1.01 + 1e-3
        high[2 * t] = ad_max * 1.01 + 1e-3
        high[2 * t + 1 : 2 * t + 4] = 50.0
        high[2 * t + 4] = float(self.world.user_activity.max()) if self.world.num_users else 1.0
        high[2 * t + 5 :] = satiation_max * 1.01 + 1e-3
        return low, high

    def item_feature_names(self) -> tuple[str, ...]:
        """Column names of :meth:`item_feature_table`."""
        return (
            *(f"topic_{k}" for k in range(self.num_topics)),
            "log_length_min",
            "is_ad",
            "bid",
            "log_popularity",
        )

    def item_feature_table(self) -> FloatArray:
        """``[num_items, T + 4]`` observable item features (read-only).

        Topic mixture, log length in minutes, ad flag, bid, and log popularity relative to
        uniform. Quality and clickbait are hidden: a policy must learn them from responses.
        """
        w = self.world
        t = self.num_topics
        table = np.empty((w.num_items, t + 4), dtype=np.float32)
        table[:, :t] = w.item_topics
        table[:, t] = np.log(w.item_length_s / 60.0)
        table[:, t + 1] = w.item_is_ad
        table[:, t + 2] = w.item_bid
        table[:, t + 3] = np.log(np.maximum(w.item_popularity, 1e-12) * w.num_items)
        table.setflags(write=False)
        return table
