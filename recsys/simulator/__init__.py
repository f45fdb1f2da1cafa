"""User-behavior simulator: choice models, a batched slate environment and logged feedback."""

from recsys.simulator.choice import ChoiceModel, MultinomialLogitChoice
from recsys.simulator.env import SlateEnv, SlateObservation, StepResult
from recsys.simulator.logs import LoggedClicks, simulate_logs, uniform_random_slates

__all__ = [
    "ChoiceModel",
    "LoggedClicks",
    "MultinomialLogitChoice",
    "SlateEnv",
    "SlateObservation",
    "StepResult",
    "simulate_logs",
    "uniform_random_slates",
]
