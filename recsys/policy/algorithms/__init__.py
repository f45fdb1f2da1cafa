"""Slate policies, one module per algorithm: SlateQ, REINFORCE-top-K, the baselines they must
beat, and the Plackett-Luce policy that serves by default."""

from recsys.policy.algorithms.baselines import (
    LinUCBPolicy,
    MyopicGreedyPolicy,
    PopularityPolicy,
    RandomPolicy,
)
from recsys.policy.algorithms.myopic import MyopicPolicy
from recsys.policy.algorithms.reinforce import ReinforceConfig, ReinforceTopKPolicy
from recsys.policy.algorithms.slateq import SlateQConfig, SlateQPolicy

__all__ = [
    "LinUCBPolicy",
    "MyopicGreedyPolicy",
    "MyopicPolicy",
    "PopularityPolicy",
    "RandomPolicy",
    "ReinforceConfig",
    "ReinforceTopKPolicy",
    "SlateQConfig",
    "SlateQPolicy",
]
