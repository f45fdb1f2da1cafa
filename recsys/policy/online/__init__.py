"""Online learning from joined logs: a bounded replay of logged slates, a held-out split by
session, guarded incremental updates of the policy and its learned reward, and candidate
checkpoints published to a staging root for the promotion gate (:mod:`recsys.policy.gate`).
"""

from recsys.policy.online.guard import GuardStats, UpdateGuard
from recsys.policy.online.learner import (
    LearnerStats,
    ObserveReport,
    OnlineConfig,
    OnlineLearner,
    RewardTarget,
)
from recsys.policy.online.replay import SlateBuffer, clean_joined_rows, heldout_mask

__all__ = [
    "GuardStats",
    "LearnerStats",
    "ObserveReport",
    "OnlineConfig",
    "OnlineLearner",
    "RewardTarget",
    "SlateBuffer",
    "UpdateGuard",
    "clean_joined_rows",
    "heldout_mask",
]
