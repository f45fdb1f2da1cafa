"""User-behavior simulator: user dynamics, choice models, a batched slate env, Gymnasium wrappers.

Importing this package registers the Gymnasium ids ``recsys/SlateEnv-v0`` (one user) and
``recsys/SlateVectorEnv-v0`` (a batch of users), idempotently.
"""

from recsys.simulator.calibration import (
    CalibrationProfile,
    SimulatedClickLog,
    calibrated_env,
    calibrated_world,
    calibration_report,
    compare_statistics,
    exposure_weights,
    fit_calibration,
    run_calibration_report,
    simulate_click_log,
)
from recsys.simulator.candidates import CandidateSampler, UniformCandidateSampler
from recsys.simulator.choice import (
    CascadeChoice,
    ChoiceModel,
    MultinomialLogitChoice,
    make_choice_model,
)
from recsys.simulator.env import SlateEnv, SlateObservation
from recsys.simulator.gym_env import (
    SLATE_ENV_ID,
    SLATE_VECTOR_ENV_ID,
    SlateGymEnv,
    SlateVectorEnv,
    register_envs,
)
from recsys.simulator.policies import (
    REFERENCE_POLICIES,
    ReferencePolicy,
    relevance_scores,
    top_k_slates,
)
from recsys.simulator.results import (
    REWARDS,
    HiddenTruth,
    ObservableResponses,
    RewardFn,
    SessionInfo,
    SlotSignals,
    StepResult,
    click_reward,
    engagement_reward,
    revenue_reward,
)
from recsys.simulator.rollout import LifetimeSummary, rollout_lifetimes
from recsys.simulator.sampling import PopularityCandidateSampler
from recsys.simulator.spec import SIMULATOR_METADATA_KEY, SimulatorSpec
from recsys.simulator.user import LatentUserState, UserModel

register_envs()

__all__ = [
    "REFERENCE_POLICIES",
    "REWARDS",
    "SIMULATOR_METADATA_KEY",
    "SLATE_ENV_ID",
    "SLATE_VECTOR_ENV_ID",
    "CalibrationProfile",
    "CandidateSampler",
    "CascadeChoice",
    "ChoiceModel",
    "HiddenTruth",
    "LatentUserState",
    "LifetimeSummary",
    "MultinomialLogitChoice",
    "ObservableResponses",
    "PopularityCandidateSampler",
    "ReferencePolicy",
    "RewardFn",
    "SessionInfo",
    "SimulatedClickLog",
    "SimulatorSpec",
    "SlateEnv",
    "SlateGymEnv",
    "SlateObservation",
    "SlateVectorEnv",
    "SlotSignals",
    "StepResult",
    "UniformCandidateSampler",
    "UserModel",
    "calibrated_env",
    "calibrated_world",
    "calibration_report",
    "click_reward",
    "compare_statistics",
    "engagement_reward",
    "exposure_weights",
    "fit_calibration",
    "make_choice_model",
    "register_envs",
    "relevance_scores",
    "revenue_reward",
    "rollout_lifetimes",
    "run_calibration_report",
    "simulate_click_log",
    "top_k_slates",
]
