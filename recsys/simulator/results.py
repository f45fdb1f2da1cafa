"""What one simulator step returns, split by who may look at it.

``observable`` holds what a production system would log (clicks, dwell, likes, conversions,
revenue, skips); ``session`` is bookkeeping a logger needs (which life, session and step a row
belongs to, whether the user left); ``hidden`` is ground truth for evaluation only (latent
appeal, satisfaction, remaining time budget, lifetime value). Keeping them in separate
containers means a policy or reward model trained on ``observable`` cannot read the answer by
accident. The observed context (user features before the step, item features of the slate) is
on the result too, so one :class:`StepResult` is enough to write a logged row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]


class ObservableResponses(NamedTuple):
    """Per-user responses to a slate (``[B]`` unless noted); all are zero without a click.

    - ``clicked_item``: item id clicked, ``-1`` for no click.
    - ``click_position``: slot of the click, ``-1`` for no click.
    - ``clicks`` ``[B, S]``: one-hot of the click per slot.
    - ``dwell_s``: seconds spent on the clicked item (a fraction of its length).
    - ``like``: explicit thumbs-up on the clicked item.
    - ``conversion``: the clicked item was an ad and the user converted.
    - ``revenue``: the ad's bid when it converted (cost-per-action pricing), else 0.
    - ``skip``: the user clicked but bounced, consuming less than ``skip_fraction`` of the item
      (what a clickbait item typically gets).
    """

    clicked_item: IntArray
    click_position: IntArray
    clicks: BoolArray
    dwell_s: FloatArray
    like: BoolArray
    conversion: BoolArray
    revenue: FloatArray
    skip: BoolArray


class SessionInfo(NamedTuple):
    """Where each row sits in its user's history (``[B]``), as a logger would key it.

    ``life`` counts restarts of the user after churn (0 for the first life), ``session`` the
    sessions within the life, ``step`` the steps within the session (all 0-based, for the step
    just served). ``session_end``: the user's time budget ran out at this step.
    ``terminated``: the session ended and the user will not return (churn); the user's next
    step starts a new life.
    """

    life: IntArray
    session: IntArray
    step: IntArray
    session_end: BoolArray
    terminated: BoolArray


class HiddenTruth(NamedTuple):
    """Ground truth for evaluation only; a policy must not train on these.

    - ``appeal`` ``[B, S]``: the click utility per slot that the choice model saw.
    - ``probabilities`` ``[B, S + 1]``: the choice distribution the click was drawn from
      (last column = no click), for variance-free expected-click evaluation.
    - ``satisfaction``: latent satisfaction of the step (of the clicked item, or the
      no-click constant).
    - ``budget_s``: seconds left in the session after this step (<= 0 when it ended).
    - ``return_probability``: probability the user comes back, evaluated where a session
      ended; NaN elsewhere.
    - ``lifetime_value``: cumulative engagement (dwell seconds) of the user's current life,
      including this step. At a ``terminated`` row it is the life's final long-term value.
    - ``lifetime_revenue``: cumulative ad revenue of the current life, including this step.
    """

    appeal: FloatArray
    probabilities: FloatArray
    satisfaction: FloatArray
    budget_s: FloatArray
    return_probability: FloatArray
    lifetime_value: FloatArray
    lifetime_revenue: FloatArray


class SlotSignals(NamedTuple):
    """Responses spread over slots (``[B, S]`` each), one logged row per impressed item."""

    click: BoolArray
    dwell_s: FloatArray
    like: BoolArray
    conversion: BoolArray
    revenue: FloatArray
    skip: BoolArray


@dataclass(frozen=True, slots=True, eq=False)
class StepResult:
    """Responses of ``B`` users to slates of size ``S``, with the context needed to log them.

    ``user_idx`` ``[B]`` and ``slates`` ``[B, S]`` (item ids, in slot order) are what was
    served; the simulator itself uses no propensities, the logging policy supplies them.
    ``user_features`` ``[B, F_u]`` is the observation of each user *before* the step (what the
    policy could see when it chose); :attr:`item_features` gathers ``[B, S, F_i]`` for the
    slate from the read-only ``item_feature_table`` on demand, so stepping does not pay for it.
    Column names: :attr:`SlateEnv.user_feature_names` and ``item_feature_names``.
    """

    user_idx: IntArray
    slates: IntArray
    user_features: FloatArray
    observable: ObservableResponses
    session: SessionInfo
    hidden: HiddenTruth
    item_feature_table: FloatArray

    @property
    def item_features(self) -> FloatArray:
        """``[B, S, F_i]`` observable features of the served items."""
        out: FloatArray = np.take(self.item_feature_table, self.slates, axis=0)
        return out

    @property
    def clicked_item(self) -> IntArray:
        """Shortcut for ``observable.clicked_item``: item id clicked per user, ``-1`` if none."""
        return self.observable.clicked_item

    @property
    def click_position(self) -> IntArray:
        """Shortcut for ``observable.click_position``."""
        return self.observable.click_position

    @property
    def clicks(self) -> BoolArray:
        """Shortcut for ``observable.clicks`` ``[B, S]``."""
        return self.observable.clicks

    @property
    def terminated(self) -> BoolArray:
        """Shortcut for ``session.terminated``: the user churned at this step."""
        return self.session.terminated

    def per_slot(self) -> SlotSignals:
        """Observable signals as ``[B, S]`` arrays (non-zero only in the clicked slot)."""
        obs = self.observable
        clicks = obs.clicks
        return SlotSignals(
            click=clicks.copy(),
            dwell_s=clicks * obs.dwell_s[:, None],
            like=clicks & obs.like[:, None],
            conversion=clicks & obs.conversion[:, None],
            revenue=clicks * obs.revenue[:, None],
            skip=clicks & obs.skip[:, None],
        )


RewardFn = Callable[[StepResult], FloatArray]
"""Maps a step's (observable) responses to a per-user reward ``[B]``; plugged in at the edge."""


def engagement_reward(result: StepResult) -> FloatArray:
    """Dwell minutes: summed over a life this is exactly the hidden lifetime value / 60."""
    out: FloatArray = result.observable.dwell_s / np.float32(60.0)
    return out


def click_reward(result: StepResult) -> FloatArray:
    """1 for a click, else 0: the myopic objective that clickbait exploits."""
    return (result.observable.click_position >= 0).astype(np.float32)


def revenue_reward(result: StepResult) -> FloatArray:
    """Ad revenue of the step (bid of a converted ad)."""
    return result.observable.revenue.astype(np.float32, copy=True)


REWARDS: dict[str, RewardFn] = {
    "engagement": engagement_reward,
    "click": click_reward,
    "revenue": revenue_reward,
}
