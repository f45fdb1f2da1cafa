"""The promotion gate in front of running Ray Serve replicas: a deliberately degraded
candidate is refused and never served; a better one is promoted, hot-reloaded and served.

A side application (``/gate``) serves its own copy of the session's trained SlateQ with
Boltzmann exploration (``TEMPERATURE``, about three times the spread of this policy's item
scores): every slate a candidate might show has support, which the gate's importance weights
need. The simulated users' taste has just changed: long-form items (above the catalog's
median length) lost their appeal (:meth:`~recsys.simulator.env.SlateEnv.shift_preferences`),
which the serving version, trained before, still favours.

The service's logs are simulated in process: the serving checkpoint, with the app's
exploration, picks every slate on the shifted simulator, so the logs carry the candidate
sets and exact propensities the service would log (the joiner's rows format). They reach a
:class:`LearnerLoop` as committed joined segments. Then:

1. The loop's learner publishes what it learnt (a *better* candidate: it moved away from
   long items). A deliberately degraded copy of it (its value heads multiplied by -5: it
   serves what the learner believes worst, sharply) is put to the gate first and refused,
   with the interval of its difference reaching below the margin (measured: -0.35
   [-0.53, -0.10], ESS 191).
2. The learnt candidate is put to the gate and promoted (estimated better; measured
   +0.31 [+0.07, +0.57] learned reward per slate, ESS 197). The replicas hot-reload it while
   a client thread asks ``/recommend`` in a loop: every answer is a 200 from the starting
   version or the promoted one, never the refused one.

"Better" and "degraded" are measured, not assumed: each policy serves the same shifted
simulated users with the app's exploration (``ON_POLICY_USERS`` users, ``ON_POLICY_STEPS``
slates each, one seed for all) and is scored with the gate's reward (the serving checkpoint's
learned reward per slate) and by clicks per slate. Measured: serving 1.04 and 0.524, the
learnt candidate 1.47 and 0.583, the degraded one 0.67 and 0.452.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from recsys.adaptation import boltzmann_gate, long_items
from recsys.config import AuthSettings, Settings, SimulatorSettings
from recsys.data.logged import LoggedFeedback
from recsys.policy.base import SlateSampler
from recsys.policy.batch import SIGNAL_NAMES
from recsys.policy.online import OnlineConfig
from recsys.policy.reward.spec import reward_model_from_tensors
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.sessions import record_sessions
from recsys.recording import RecordingConfig, recording_users, session_feedback
from recsys.simulator import SimulatorSpec
from recsys.stream.joined_dataset import JoinedDataset
from recsys.stream.learner_loop import LearnerLoop
from tests.conftest import ServingStack, copy_trained, side_app_settings
from tests.integration.serving.traffic import RecommendTraffic
from tests.unit.policy.online_world import publish_negated
from tests.unit.policy.served_world import ServedLogger

pytestmark = pytest.mark.integration

ADMIN = "gate-admin-key-0123456789"
APP = "recsys-gate"
USERS, STEPS = 200, 8
ON_POLICY_USERS, ON_POLICY_STEPS = 300, 10
TEMPERATURE = 0.1
GATE = boltzmann_gate(TEMPERATURE)


@dataclass(frozen=True)
class GateApp:
    url: str
    root: Path
    settings: Settings


@pytest.fixture(scope="module")
def gate_app(
    serving_stack: ServingStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GateApp]:
    from ray import serve

    from recsys.serving.deployment import deploy_app

    root = copy_trained(serving_stack, tmp_path_factory.mktemp("gate") / "artifacts", ("myopic",))
    base = serving_stack.settings
    settings = side_app_settings(
        serving_stack,
        "gate",
        root,
        serving=base.serving.model_copy(update={"auth": AuthSettings(admin_keys=[ADMIN])}),
        policy=base.policy.model_copy(
            update={"exploration": "boltzmann", "temperature": TEMPERATURE}
        ),
    )
    deploy_app(settings, APP, "/gate")
    try:
        yield GateApp(f"{serving_stack.url}/gate", root, settings)
    finally:
        serve.delete(APP)


def _serve_shifted(
    settings: Settings, checkpoint: Path, *, users: int, steps: int, seed: int
) -> LoggedFeedback:
    """``users`` users of the app's world, whose taste turned against long-form items, served
    ``steps`` slates each by ``checkpoint`` with the app's exploration, as joined rows."""
    ckpt = load_policy_checkpoint(checkpoint)
    sampler = ckpt.policy.config.sampler
    ckpt.policy.set_sampler(
        SlateSampler(
            "boltzmann", temperature=TEMPERATURE, max_ads=sampler.max_ads, min_ads=sampler.min_ads
        )
    )
    simulator = SimulatorSettings(
        num_candidates=ckpt.config.num_candidates, slate_size=ckpt.slate_size
    )
    env = SimulatorSpec(settings.catalog, simulator).build_env(num_users=users)
    long = long_items(env.world, 0.5)
    env.shift_preferences(np.arange(users), np.where(long, -4.0, 0.0))
    cfg = RecordingConfig(steps=steps, slate_size=ckpt.slate_size, seed=seed)
    sim = recording_users(env, cfg)
    log = record_sessions(sim, ServedLogger(ckpt), max_steps=steps, seed=seed, one_life=False)
    return session_feedback(log, sim, policy="slateq", request_prefix=f"gate{seed}")


def _on_policy(settings: Settings, checkpoint: Path, serving: Path) -> tuple[float, float]:
    """(learned reward per slate by serving's reward model, clicks per slate) of
    ``checkpoint`` served on the shifted world, one seed for every policy."""
    rows = _serve_shifted(
        settings, checkpoint, users=ON_POLICY_USERS, steps=ON_POLICY_STEPS, seed=11
    )
    tensors = load_policy_checkpoint(serving).reward_tensors
    assert tensors is not None
    signals = np.stack([np.asarray(getattr(rows, s), np.float32) for s in SIGNAL_NAMES], 1)
    per_slate = reward_model_from_tensors(tensors).rewards(signals).reshape(-1, rows.slate_size[0])
    clicks = np.asarray(rows.click, np.float64).reshape(per_slate.shape)
    return float(per_slate.sum(1).mean()), float(clicks.sum(1).mean())


def test_the_gate_refuses_a_degraded_candidate_and_promotes_a_better_one_over_http(
    gate_app: GateApp, tmp_path: Path
) -> None:
    base = gate_app.root / "policy-slateq"
    (first,) = [p for p in base.iterdir() if p.is_dir()]
    logs = _serve_shifted(gate_app.settings, first, users=USERS, steps=STEPS, seed=3)
    slate = int(logs.slate_size[0])
    edges = np.linspace(0, len(logs) // slate, 7).astype(int) * slate  # whole slates each
    segments = [logs.take(np.arange(a, b)) for a, b in itertools.pairwise(edges)]
    dataset = JoinedDataset(str(tmp_path / "joined"))
    for seq, segment in enumerate(segments, start=1):
        table = segment.to_table()
        dataset.commit("joiner", seq, f"imp.0-{seq}", "date=2024-01-01", table, {}, "{}")

    online = OnlineConfig(
        heldout_fraction=0.5,
        publish_every_rows=10**9,  # the test asks for the candidate itself, below
        replay_ratio=8.0,
        batch_size=32,
        update_reward_model=False,
        session_timeout_rows=10**6,
    )
    staging = tmp_path / "staging"
    with RecommendTraffic(gate_app.url, "gate", 11, 5, pause_s=0.05) as traffic:
        traffic.wait_for(f"slateq@{first.name}")
        with LearnerLoop.open(
            tmp_path / "joined", gate_app.root, "slateq", staging, online=online, gate=GATE
        ) as loop:
            assert loop.step() == len(segments)
            assert loop.stats.updates > 0
            learnt = loop.learner.publish_candidate()
            bad = publish_negated(learnt, staging, scale=5.0)

            # Measured on-policy: the learnt candidate is better than serving, the degraded
            # one worse, by the gate's reward and by clicks.
            v_serving, c_serving = _on_policy(gate_app.settings, first, first)
            v_learnt, c_learnt = _on_policy(gate_app.settings, learnt, first)
            v_bad, c_bad = _on_policy(gate_app.settings, bad, first)
            assert v_learnt > 1.2 * v_serving, (v_learnt, v_serving)
            assert v_bad < 0.85 * v_serving, (v_bad, v_serving)
            assert c_learnt > c_serving > c_bad, (c_learnt, c_serving, c_bad)

            refusal = loop.consider(bad)
            assert refusal is not None
            assert not refusal.promote, refusal.reasons
            (worse,) = refusal.comparisons.values()
            assert worse.ess >= GATE.min_ess  # judged on evidence, not for lack of it
            assert worse.difference < 0
            assert worse.ci_low < -GATE.margin
            assert refusal.serving_version == first.name
            assert loop.stats.refusals == 1
            assert loop.gate.versions() == [first.name]

            decision = loop.consider(learnt)
            assert decision is not None
            assert decision.promote, decision.reasons
            (better,) = decision.comparisons.values()
            assert better.difference > 0, better  # estimated better (measured: 0.31 [0.07, 0.57])
            assert better.ess >= GATE.min_ess
            assert loop.stats.promotions == 1
            promoted = loop.stats.model_version
            assert loop.gate.versions() == [first.name, promoted]
        traffic.wait_for(f"slateq@{promoted}")
        served_after = len(traffic.versions)
        deadline = time.monotonic() + 10.0
        while len(traffic.versions) < served_after + 5:  # a few more answers after the swap
            assert time.monotonic() < deadline, "no answers after the promotion"
            time.sleep(0.1)

    assert set(traffic.statuses) == {200}
    assert set(traffic.versions) == {f"slateq@{first.name}", f"slateq@{promoted}"}
    assert traffic.versions[-1] == f"slateq@{promoted}"
    listing = httpx.get(
        f"{gate_app.url}/admin/policies", headers={"X-API-Key": ADMIN}, timeout=30.0
    ).json()
    (arm,) = [a for a in listing["arms"] if a["arm"] == "slateq"]
    assert arm["serving_version"] == promoted
    assert arm["versions"] == [first.name, promoted]
    assert bad.name not in arm["versions"]
    assert arm["refused"] == []
