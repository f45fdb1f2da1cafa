"""The adaptation experiment's machinery over real HTTP, Redis, broker and Ray Serve.

A side app serves a copy of the session's trained SlateQ. A segment of simulated users is
driven through it (:func:`recsys.adaptation.adapt_on_service`). Their taste turns against
long-form items after a few hundred feedback events. Two runs on fresh copies:

- off: the same version answers every request, and the shift costs the segment clicks (the
  served policy cannot tell from the event-derived state which lengths went unclicked);
- on: at every barrier the joiner joins what the service published, the learner loop learns
  from it, and the gate decides; a promoted version is then served (hot reload) to the
  very next round.

Whether the click rate recovers to 80% is the benchmark's business
(``benchmarks/adaptation.py``, on the published experiment policy): the session's briefly
trained policy is too weak a starting point to measure it on.
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from recsys.adaptation import AdaptationConfig, Experiment, adapt_on_service
from recsys.config import AuthSettings
from recsys.live import LiveEvaluation
from recsys.policy.gate import GateConfig
from recsys.policy.online import OnlineConfig
from recsys.services import start_updater
from tests.conftest import ServingStack, copy_trained, side_app_settings, small_skeleton_config

pytestmark = pytest.mark.integration

#: Promote what the gate cannot show worse by more than a wide margin: the test is about the
#: loop (join, learn, gate, serve), not about how strict the gate is (the gate's own tests).
GATE = GateConfig(margin=1e9, min_ess=0.0, n_bootstrap=100, n_samples=16)
ONLINE = OnlineConfig(
    publish_every_rows=100,
    heldout_fraction=0.3,
    heldout_capacity=400,
    session_timeout_rows=5_000,
    replay_ratio=4.0,
    batch_size=32,
)


def _run(
    serving_stack: ServingStack, tmp_path: Path, name: str, learning: bool
) -> tuple[dict[str, Any], int]:
    """The run's summary and the served slate size."""
    from ray import serve

    from recsys.serving.deployment import deploy_app

    admin = secrets.token_hex(12)
    root = copy_trained(serving_stack, tmp_path / "artifacts", ("myopic", "reinforce"))
    base = serving_stack.settings.serving
    settings = side_app_settings(
        serving_stack,
        name,
        root,
        serving=base.model_copy(update={"auth": AuthSettings(admin_keys=[SecretStr(admin)])}),
    )
    config = small_skeleton_config(settings)
    live = LiveEvaluation(settings, config, users=2, max_steps=1, seed=0, concurrency=4)
    cfg = AdaptationConfig(
        users=tuple(range(40)),
        before_events=150,
        after_events=400,
        window_events=200,
        warmup_rounds=1,
        learn_every_events=120,
        concurrency=4,
        wait_s=0.5,
    )
    experiment = Experiment.served(live, cfg, ONLINE, GATE)
    with ExitStack() as stack:
        store = start_updater(stack, settings)  # the side app's own topics into its own keys
        deploy_app(settings, f"recsys-{name}", f"/{name}")
        stack.callback(serve.delete, f"recsys-{name}")
        run = adapt_on_service(
            f"{serving_stack.url}/{name}",
            store,
            settings,
            experiment,
            learning=learning,
            work=tmp_path,
            admin_key=admin,
            label=name,
        )
    return run.summary(), experiment.slate_size


def test_without_learning_the_shift_costs_clicks_and_one_version_serves(
    serving_stack: ServingStack, tmp_path: Path
) -> None:
    s, _ = _run(serving_stack, tmp_path, "adapt-off", learning=False)
    rounds = s["rounds"]
    assert {v for r in rounds for v in r["versions"]} == {rounds[0]["versions"][0]}
    assert any(r["shifted"] for r in rounds)
    assert not rounds[0]["shifted"]
    assert all(r["barrier"] is None for r in rounds)
    before = s["before"]["click_rate"]
    after = [w["click_rate"] for w in s["after"]]
    assert before > 0
    assert np.mean(after) < 0.8 * before, (before, after)
    assert s["recovered"] is False


def test_with_learning_each_barrier_learns_gates_and_serves_the_promoted_version(
    serving_stack: ServingStack, tmp_path: Path
) -> None:
    s, slate_size = _run(serving_stack, tmp_path, "adapt-on", learning=True)
    rounds = s["rounds"]
    barriers = [(i, r["barrier"]) for i, r in enumerate(rounds) if r["barrier"] is not None]
    assert len(barriers) >= 3
    learner = s["learner"]
    # Every impression became joined rows, and the learner consumed them all.
    last_rows = barriers[-1][1]["rows"]
    slates_then = sum(r["slates"] for r in rounds[: barriers[-1][0] + 1])
    assert last_rows == slates_then * slate_size
    assert learner["promotions"] >= 1
    assert learner["candidates"] == learner["promotions"] + learner["refusals"]
    # A promotion is served from the next round on, and only then.
    for i, b in barriers:
        if b["promoted"] and i + 1 < len(rounds):
            assert rounds[i + 1]["versions"] == [f"slateq@{b['model_version']}"], (i, b)
    # What each candidate learnt, gated or not: its own best slates on the newest rows.
    gated = [b for _, b in barriers if "gate" in b]
    assert gated
    assert all(0.0 <= b["candidate_greedy_long_share"] <= 1.0 for b in gated)
    served = {v for r in rounds for v in r["versions"]}
    assert len(served) >= 2
