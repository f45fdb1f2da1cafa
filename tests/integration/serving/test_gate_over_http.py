"""The promotion gate in front of running Ray Serve replicas: a degraded candidate is refused
and never served; a candidate within the margin is promoted and then answers ``/recommend``.

A side application (``/gate``) serves its own copy of the session's trained SlateQ policy.
Its served logs are simulated in process: the serving checkpoint itself, with the exploration
serving applies, picks every slate on the session's simulator, so the logs carry the candidate
sets and exact propensities the service would log (the joiner's rows format), and the gate's
importance weights of the serving policy are exactly 1. They reach a :class:`LearnerLoop` as
committed joined segments, in two commits:

1. After the first, the loop has learned but published nothing; a degraded candidate (the
   serving checkpoint with the output layers of its value heads negated: it ranks by what it
   believes worst) is put to the gate and refused. What refuses it is missing evidence: it
   ranks unlike serving, so serving's logs support it poorly (ESS below the minimum, intervals
   reaching below -margin). Whether it is truly worse depends on the fixture's briefly trained
   policy; on-policy in the simulator it is not (measured: negating a 2-iteration SlateQ
   *raised* its learned-reward value, 1.37 -> 2.26), so this step shows "not shown not worse
   is refused", not an estimate of harm.
2. After the second, the learner publishes its candidate at the cadence; the gate promotes it
   and the replicas hot-reload it. Its learning rate is capped so low that its weights move
   but its slates stay the serving policy's: "not worse" by a paired difference within the
   margin (here 0 on every resample). That a *better* candidate passes and the estimates
   behind the rule are the gate's unit tests' business (``tests/unit/policy/test_gate.py``).

Meanwhile a client thread asks ``/recommend`` in a loop: every answer is a 200 from the
version serving at the start or the promoted one, never the refused one.
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

from recsys.config import AuthSettings, Settings, SimulatorSettings
from recsys.data.logged import LoggedFeedback
from recsys.policy.gate import GateConfig
from recsys.policy.online import OnlineConfig
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
USERS, STEPS = 120, 8


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
    settings = side_app_settings(
        serving_stack,
        "gate",
        root,
        serving=serving_stack.settings.serving.model_copy(
            update={"auth": AuthSettings(admin_keys=[ADMIN])}
        ),
    )
    deploy_app(settings, APP, "/gate")
    try:
        yield GateApp(f"{serving_stack.url}/gate", root, settings)
    finally:
        serve.delete(APP)


def _served_logs(settings: Settings, serving: Path) -> LoggedFeedback:
    """``USERS`` users of the app's world served ``STEPS`` slates each by ``serving``."""
    ckpt = load_policy_checkpoint(serving)
    simulator = SimulatorSettings(
        num_candidates=ckpt.config.num_candidates, slate_size=ckpt.slate_size
    )
    env = SimulatorSpec(settings.catalog, simulator).build_env(num_users=USERS)
    cfg = RecordingConfig(steps=STEPS, slate_size=ckpt.slate_size, seed=3)
    users = recording_users(env, cfg)
    log = record_sessions(users, ServedLogger(ckpt), max_steps=STEPS, seed=3, one_life=False)
    return session_feedback(log, users, policy="slateq", request_prefix="gate")


def test_the_gate_refuses_a_degraded_candidate_and_promotes_one_within_the_margin_over_http(
    gate_app: GateApp, tmp_path: Path
) -> None:
    base = gate_app.root / "policy-slateq"
    (first,) = [p for p in base.iterdir() if p.is_dir()]
    logs = _served_logs(gate_app.settings, first)
    slate = int(logs.slate_size[0])
    edges = np.linspace(0, len(logs) // slate, 7).astype(int) * slate  # whole slates each
    segments = [logs.take(np.arange(a, b)) for a, b in itertools.pairwise(edges)]
    dataset = JoinedDataset(str(tmp_path / "joined"))

    def commit(seqs: range) -> None:
        for seq in seqs:
            table = segments[seq - 1].to_table()
            dataset.commit("joiner", seq, f"imp.0-{seq}", "date=2024-01-01", table, {}, "{}")

    online = OnlineConfig(
        heldout_fraction=0.5,
        publish_every_rows=len(logs),  # one candidate, once every row is in
        replay_ratio=0.5,
        max_lr=1e-7,
        reward_lr=1e-7,
    )
    gate = GateConfig(margin=0.05)
    with RecommendTraffic(gate_app.url, "gate", 11, 5, pause_s=0.05) as traffic:
        traffic.wait_for(f"slateq@{first.name}")
        commit(range(1, 5))
        staging = tmp_path / "staging"
        with LearnerLoop.open(
            tmp_path / "joined", gate_app.root, "slateq", staging, online=online, gate=gate
        ) as loop:
            assert loop.step() == 4
            assert loop.stats.candidates == 0
            bad = publish_negated(first, staging)
            refusal = loop.consider(bad)
            assert refusal is not None
            assert not refusal.promote, refusal.reasons
            # Refused on the evidence, not because it could not be evaluated.
            evidence = ("SNIIPS", "POSITION_DR", "candidate ESS")
            assert all(r.startswith(evidence) for r in refusal.reasons)
            assert refusal.serving_version == first.name
            assert loop.stats.refusals == 1
            assert loop.gate.versions() == [first.name]

            commit(range(5, 7))
            assert loop.step() == 2
            assert loop.stats.rows == len(logs)
            decision = loop.last_decision
            assert decision is not None
            assert decision.candidate != bad
            assert decision.promote, decision.reasons
            # A learned candidate (its weights moved), whose slates stay serving's.
            assert loop.stats.updates > 0
            learned = load_policy_checkpoint(decision.candidate).policy.weights()
            before = load_policy_checkpoint(first).policy.weights()
            assert any(not np.array_equal(learned[k], before[k]) for k in before if k != "updates")
            for c in decision.comparisons.values():
                assert c.ci_low >= -gate.margin
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
