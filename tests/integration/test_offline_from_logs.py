"""Offline retraining from the service's own logs, end to end over the real components.

A side application on the session's Ray Serve serves its copy of the session's SlateQ policy
with its own exploring sampler, on topics and a Redis prefix of its own, with an online
updater for them. Simulated users are its HTTP clients (``/recommend``, their responses to
``/feedback``); the joiner turns the broker's impressions and feedback into a joined dataset;
``recsys train policy --logs`` trains a new policy from it and ``recsys evaluate ope --logs
--policy`` estimates it, both through the command line. The served policy re-run from its
checkpoint on the joined rows gives every logged slot exactly its logged propensity: the
candidate sets, user features and propensities survived HTTP, Kafka and the joiner intact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys.artifacts import latest_version
from recsys.cli import app
from recsys.config import Settings, SimulatorSettings
from recsys.data.logged import read_logged_feedback
from recsys.data.synthetic import SyntheticWorld
from recsys.live import run_live
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.served_logs import drive_and_join
from recsys.services import start_updater
from recsys.serving.wiring import build_fold
from recsys.simulator.env import SlateEnv
from tests.conftest import ServingStack, copy_trained, side_app_settings

pytestmark = pytest.mark.integration

APP = "recsys-offline"
USERS, STEPS = 24, 6
runner = CliRunner()


@dataclass(frozen=True)
class OfflineApp:
    url: str
    root: Path
    settings: Settings
    world: SyntheticWorld


@pytest.fixture(scope="module")
def offline_app(
    serving_stack: ServingStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfflineApp]:
    from ray import serve

    from recsys.serving.deployment import deploy_app

    root = copy_trained(
        serving_stack, tmp_path_factory.mktemp("offline") / "artifacts", ("myopic",)
    )
    settings = side_app_settings(serving_stack, "offline", root)
    deploy_app(settings, APP, "/offline")
    try:
        yield OfflineApp(f"{serving_stack.url}/offline", root, settings, serving_stack.models.world)
    finally:
        serve.delete(APP)


def test_logs_of_the_served_policy_train_a_policy_that_ope_evaluates(
    offline_app: OfflineApp, tmp_path: Path
) -> None:
    settings, root = offline_app.settings, offline_app.root
    base = latest_version(root, "policy-slateq")
    ckpt = load_policy_checkpoint(base)
    simulator = SimulatorSettings(
        num_candidates=ckpt.config.num_candidates, slate_size=ckpt.slate_size
    )

    def env(population: SyntheticWorld, seed: int) -> SlateEnv:
        return SlateEnv(population, seed=seed, settings=simulator)

    with ExitStack() as stack:
        store = start_updater(stack, settings)  # the app's own topics into its Redis prefix
        fold = build_fold(settings)
        traffic = partial(
            run_live,
            offline_app.url,
            offline_app.world,
            env,
            store,
            fold,
            users=np.arange(USERS),
            max_steps=STEPS,
            seed=1,
            slate_size=ckpt.slate_size,
            num_candidates=ckpt.config.num_candidates,
            concurrency=4,
            label="offline",
        )
        served = drive_and_join(settings, tmp_path / "joined", fold, traffic)
    requests = len(served.clients.recommend_latencies_s)
    assert served.join.impressions == requests > USERS
    assert served.join.joined_feedback == served.clients.feedback_posts
    assert sum(served.join.orphans.values()) == served.join.late == 0
    logs = read_logged_feedback(tmp_path / "joined")
    assert len(logs) == requests * ckpt.slate_size  # every slot of every slate, once
    assert logs.candidate_ids is not None
    assert set(logs.policy.tolist()) == {f"slateq@slateq@{base.name}"}
    assert int(logs.click.sum()) == int(served.evaluation.clicks.sum())

    trained = runner.invoke(
        app,
        ["train", "policy", "--logs", str(tmp_path / "joined"), "--artifacts", str(root),
         "--epochs", "2"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.output.strip().splitlines()[-1])
    assert (summary["base_from"], summary["base"]) == ("logs", str(base))
    assert summary["slates"] == requests
    new = Path(summary["checkpoint"])
    assert new.parent == root / "staging" / "policy-slateq"

    def ope(policy: Path, *extra: str) -> dict[str, dict[str, float]]:
        result = runner.invoke(
            app,
            ["evaluate", "ope", "--logs", str(tmp_path / "joined"), "--policy", str(policy),
             "--json", "--bootstrap", "50", "--samples", "4", *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        estimates: dict[str, dict[str, float]] = out["estimates"]
        if "--choice-model" in extra:
            assert out["choice_model"]["clicks"] in ("single", "multi")
            estimates["choice_model"] = out["choice_model"]
        return estimates

    estimates = ope(new)
    assert {"logged", "ips", "snips", "dr"} <= set(estimates)
    assert all(np.isfinite(estimates[e]["value"]) for e in ("ips", "snips", "dr"))
    # The choice model among the slate's items, fitted on the served log on the new policy's
    # features: its expected clicks per slate (at most one each under a single-click model).
    chosen = ope(new, "--choice-model")
    assert (
        0.0
        < chosen["dm"]["value"]
        <= (1.0 if chosen["choice_model"]["clicks"] == "single" else ckpt.slate_size)
    )
    assert chosen["dm"]["ci_low"] <= chosen["dm"]["value"] <= chosen["dm"]["ci_high"]
    assert chosen["ips"]["value"] == pytest.approx(estimates["ips"]["value"])  # unchanged
    assert chosen["dr"]["value"] != pytest.approx(estimates["dr"]["value"])  # a new baseline
    own = ope(base)  # the served policy itself: every importance weight is exactly 1
    assert own["ips"]["mean_weight"] == pytest.approx(1.0, abs=1e-6)
    assert own["ips"]["ess"] == pytest.approx(requests)
    assert own["ips"]["value"] == pytest.approx(own["logged"]["value"], abs=1e-9)
