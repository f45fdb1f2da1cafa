"""Slate policies and their exploration: the myopic Plackett-Luce baseline today."""

from recsys.policy.exploration import (
    plackett_luce_propensities,
    plackett_luce_sample,
    slate_log_probability,
)
from recsys.policy.myopic import MyopicPolicy

__all__ = [
    "MyopicPolicy",
    "plackett_luce_propensities",
    "plackett_luce_sample",
    "slate_log_probability",
]
