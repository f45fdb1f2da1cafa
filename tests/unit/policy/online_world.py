"""The world the online-learning and promotion-gate tests share: joined logs of an exploring
logger over the small policies' catalog, and learners observing through the small setup's
policy features (so their candidates are servable next to the small published policies)."""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.logged import LoggedFeedback
from recsys.pipeline import SimulatorSetup
from recsys.policy.online import OnlineConfig, OnlineLearner
from recsys.policy.training.checkpoint import load_policy_checkpoint, save_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig
from recsys.recording import RecordingConfig, record_feedback
from recsys.simulator import SimulatorSpec
from tests.unit.policy.configs import SMALL_SIMULATOR

#: Candidates per request and slots per slate of the joined logs: small, so slate-level
#: importance weights (the product over slots) stay usable on a few thousand requests.
CANDIDATES, SLATE = 6, 2
USERS, STEPS = 400, 20
#: The learners' config: the small simulator's SlateQ on slates of two without an ad load
#: (the logger ignores ads, so an ad floor would give most logged slates zero probability).
ONLINE_SLATEQ: PolicyTrainConfig = replace(
    SMALL_SIMULATOR,
    slate_size=SLATE,
    num_candidates=CANDIDATES,
    min_ads=0,
    max_ads=SLATE,
    batch_size=64,
    epsilon=0.3,
)


@functools.cache
def joined_logs(temperature: float = 2.0, seed: int = 0) -> LoggedFeedback:
    """``USERS`` users served ``STEPS`` slates each by Plackett-Luce at ``temperature`` over
    the myopic relevance (a softmax-exploring logger), as the joiner writes them: exact
    conditional propensities, candidate sets, event user features. Rows in serving order."""
    spec = SimulatorSpec(
        CatalogSettings(num_items=300, num_users=USERS, num_topics=6, seed=0),
        SimulatorSettings(num_candidates=CANDIDATES, slate_size=SLATE),
    )
    cfg = RecordingConfig(
        steps=STEPS, slate_size=SLATE, policy="boltzmann", temperature=temperature, seed=seed
    )
    return record_feedback(spec.build_env(), cfg)


def chunks(logs: LoggedFeedback, parts: int) -> list[LoggedFeedback]:
    """``logs`` in ``parts`` consecutive batches (a joiner's segments)."""
    edges = np.linspace(0, len(logs), parts + 1).astype(int)
    return [logs.take(np.arange(a, b)) for a, b in itertools.pairwise(edges)]


def online_config(**overrides: object) -> OnlineConfig:
    """Settings scaled to :func:`joined_logs`: a session has ended once its user skipped two
    serving rounds (``USERS * SLATE`` rows each)."""
    base = OnlineConfig(
        heldout_fraction=0.3,
        publish_every_rows=10**9,
        session_timeout_rows=2 * USERS * SLATE,
        replay_ratio=2.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def fresh_learner(
    setup: SimulatorSetup, staging: Path, online: OnlineConfig | None = None
) -> OnlineLearner:
    """An untrained SlateQ learner observing through the small setup's features."""
    return OnlineLearner.fresh(
        ONLINE_SLATEQ,
        setup.features(),
        staging,
        reward_model=setup.reward_model,
        online=online or online_config(),
    )


_VALUE_HEADS = re.compile(
    r"^(q_net|null_net|target_q|target_null|reward_net|reward_null)/(bilinear|mlp\.2\.|2\.)"
)


def publish_negated(candidate: Path, staging: Path, scale: float = 1.0) -> Path:
    """A deliberately degraded copy of a SlateQ candidate: the output layers of every value
    head multiplied by ``-scale``, so it ranks by minus its item values (it serves what it
    believes worst; a ``scale`` above 1 sharpens that under Boltzmann exploration)."""
    ckpt = load_policy_checkpoint(candidate)
    weights = ckpt.policy.weights()
    ckpt.policy.load_weights(
        {k: -scale * v if _VALUE_HEADS.match(k) else v for k, v in weights.items()}
    )
    assert ckpt.features is not None
    return save_policy_checkpoint(
        staging,
        ckpt.policy,
        ckpt.config,
        iteration=ckpt.iteration + 1,
        dims=(ckpt.user_dim, ckpt.item_dim, ckpt.slate_size),
        reward_scale=ckpt.reward_scale,
        features=ckpt.features,
        reward_tensors=ckpt.reward_tensors,
        curve=ckpt.curve,
        reward_report={},
        name=ckpt.artifact.name,
    ).path
