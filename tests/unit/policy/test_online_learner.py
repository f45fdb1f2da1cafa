"""The online learner on joined logs: bounded replay, the held-out split, guarded updates,
candidates at the cadence, and learning that shows off-policy on held-out data."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.logged import LoggedFeedback
from recsys.pipeline import SimulatorSetup
from recsys.policy.evaluation.ope import evaluate_off_policy
from recsys.policy.evaluation.ope_policies import (
    CheckpointTarget,
    CrossFittedRewardModel,
    LoggedRequests,
    target_propensities,
)
from recsys.policy.online import OnlineLearner, SlateBuffer, heldout_mask
from recsys.policy.online.guard import PolicySnapshot
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig
from tests.unit.policy.online_world import (
    ONLINE_SLATEQ,
    SLATE,
    chunks,
    fresh_learner,
    joined_logs,
    online_config,
)


def _weights_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _request_order(logs: LoggedFeedback) -> list[str]:
    """Distinct request ids in order of first appearance."""
    _, first = np.unique(logs.request_id, return_index=True)
    return [str(r) for r in logs.request_id[np.sort(first)]]


# ---- replay and split --------------------------------------------------------------------


def test_the_replay_buffer_is_bounded_in_slates_and_keeps_the_newest(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    logs = joined_logs()
    learner = fresh_learner(
        small_setup, tmp_path, online_config(replay_capacity=300, heldout_capacity=40)
    )
    for batch in chunks(logs, 8):
        learner.observe(batch)
        assert learner.replay.num_slates <= 300
        assert learner.heldout_buffer.num_slates <= 40
        assert learner.replay.num_rows == SLATE * learner.replay.num_slates
    held = heldout_mask(logs, 0.3, "recsys-heldout")
    trained_order = _request_order(logs.take(~held))
    assert sorted(learner.replay.request_ids().tolist()) == sorted(trained_order[-300:])
    assert learner.stats.slates_evicted == len(trained_order) - 300
    heldout = learner.heldout()
    assert heldout is not None
    assert set(heldout.request_id.tolist()) == set(_request_order(logs.take(held))[-40:])


def test_a_buffer_append_evicts_whole_slates_oldest_first() -> None:
    logs = joined_logs()
    first, second = chunks(logs.take(np.arange(40)), 2)  # 10 slates each
    buf = SlateBuffer(capacity=14)
    assert buf.append(first, arrival=20) == 0
    assert buf.append(second, arrival=40) == 6
    assert buf.logs is not None
    assert buf.arrival is not None
    assert buf.num_slates == 14
    assert _request_order(buf.logs) == _request_order(first)[6:] + _request_order(second)
    np.testing.assert_array_equal(np.unique(buf.arrival[:8]), [20])  # stamps move with rows
    with pytest.raises(ValueError, match="capacity"):
        SlateBuffer(capacity=0)


def test_sessions_are_held_out_whole_stably_and_never_replayed(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    logs = joined_logs()
    held = heldout_mask(logs, 0.3, "recsys-heldout")
    # Whole sessions on one side, about the configured share of them.
    sessions = np.char.add(logs.user_id, logs.session_id.astype(str))
    per_session = {s: set(held[sessions == s].tolist()) for s in np.unique(sessions)}
    assert all(len(v) == 1 for v in per_session.values())
    share = np.mean([v == {True} for v in per_session.values()])
    assert abs(share - 0.3) < 0.05  # ~700 sessions: binomial sd 0.017
    # Stable: the same rows in another batching, order or salt-less recomputation agree.
    np.testing.assert_array_equal(heldout_mask(logs.take(np.arange(len(logs))[::-1]),
                                               0.3, "recsys-heldout"), held[::-1])  # fmt: skip
    assert not np.array_equal(heldout_mask(logs, 0.3, "other-salt"), held)

    learner = fresh_learner(small_setup, tmp_path)
    for batch in chunks(logs, 5):
        learner.observe(batch)
    heldout = learner.heldout()
    assert heldout is not None
    replayed = set(learner.replay.request_ids().tolist())
    assert replayed.isdisjoint(heldout.request_id.tolist())
    assert set(heldout.request_id.tolist()) == set(logs.request_id[held].tolist())
    assert learner.stats.rows_heldout == int(held.sum())


def test_heldout_rows_never_reach_an_update(small_setup: SimulatorSetup, tmp_path: Path) -> None:
    """Poison exactly the held-out sessions (an absurd dwell): training never sees them, so no
    update is taken back; the same poison on training rows trips the guard."""
    logs = joined_logs()
    held = heldout_mask(logs, 0.3, "recsys-heldout")
    poisoned_heldout = replace(logs, dwell_s=np.where(held, 1e30, logs.dwell_s).astype(np.float32))
    learner = fresh_learner(small_setup, tmp_path / "a")
    for batch in chunks(poisoned_heldout, 5):
        learner.observe(batch)
    assert learner.stats.policy.applied > 0
    assert learner.stats.policy.refused == 0
    assert learner.stats.reward.refused == 0

    poisoned_train = replace(logs, dwell_s=np.where(~held, 1e30, logs.dwell_s).astype(np.float32))
    other = fresh_learner(small_setup, tmp_path / "b")
    first = chunks(logs, 5)[0]
    other.observe(first)
    for batch in chunks(poisoned_train.take(np.arange(len(first), len(logs))), 4):
        other.observe(batch)
    assert other.stats.policy.refused + other.stats.reward.refused > 0


def test_everything_held_out_means_nothing_is_learned(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    learner = fresh_learner(small_setup, tmp_path, online_config(heldout_fraction=1.0))
    before = learner.policy.weights()
    report = learner.observe(joined_logs())
    assert report.heldout_rows == len(joined_logs())
    assert report.policy_updates == report.reward_updates == 0
    assert _weights_equal(learner.policy.weights(), before)


def test_rows_that_cannot_be_trained_on_are_dropped_and_counted(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    logs = joined_logs().take(np.arange(40))  # 20 slates of 2
    assert logs.candidate_ids is not None
    dwell = logs.dwell_s.copy()
    dwell[2] = np.nan  # slate 1
    items, cands = logs.item_id.copy(), logs.candidate_ids.copy()
    cands[10, cands[10] == items[10]] = 999  # slate 5 names an item outside the catalog
    items[10] = 999
    bad = replace(logs, dwell_s=dwell, item_id=items, candidate_ids=cands)
    partial = bad.take(np.r_[np.arange(4), np.arange(5, 40)])  # slate 2 loses a slot
    learner = fresh_learner(small_setup, tmp_path, online_config(heldout_fraction=0.0))
    report = learner.observe(partial)
    assert report.dropped == {"non_finite": 2, "incomplete_slate": 1, "unknown_item": 2}
    assert report.replayed_rows == 34
    again = learner.observe(logs.take(np.arange(36, 40)))  # slates already replayed
    assert again.dropped == {"duplicate_request": 4}
    with pytest.raises(ValueError, match="candidate sets"):
        learner.observe(replace(logs, candidate_ids=None))
    assert learner.stats.rows_dropped["non_finite"] == 2


# ---- guarded updates ---------------------------------------------------------------------


def test_a_non_finite_update_is_taken_back_and_the_weights_are_unchanged(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    first, second, third = chunks(joined_logs(), 3)
    learner = fresh_learner(small_setup, tmp_path, online_config(update_reward_model=False))
    learner.observe(first)
    assert learner.stats.policy.applied > 0
    # The learned reward goes NaN (say, a broken reward-model update got through).
    assert learner.reward_model is not None
    healthy = {k: v.clone() for k, v in learner.reward_model.state_dict().items()}
    weights = learner.policy.weights()
    moments = PolicySnapshot(learner.policy).optimizers
    last = learner.reward_model.net[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.bias.fill_(float("nan"))
    report = learner.observe(second)
    assert report.policy_updates == 0
    assert report.policy_refused > 0
    assert learner.stats.policy.non_finite == report.policy_refused
    assert _weights_equal(learner.policy.weights(), weights)
    after = PolicySnapshot(learner.policy).optimizers
    for name, state in moments.items():
        for pid, values in state["state"].items():
            for key, value in values.items():
                assert torch.equal(after[name]["state"][pid][key], value)
    # Once the reward is healthy again, learning resumes: the guard holds no grudge.
    learner.reward_model.load_state_dict(healthy)
    assert learner.observe(third).policy_updates > 0


def test_learning_rates_and_gradient_clip_are_capped(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    config = replace(ONLINE_SLATEQ, lr=0.5)
    learner = OnlineLearner.fresh(
        config,
        small_setup.features(),
        tmp_path,
        reward_model=small_setup.reward_model,
        online=online_config(max_lr=2e-4, max_grad_norm=0.5),
    )
    lrs = [g["lr"] for opt in learner.policy.optimizers().values() for g in opt.param_groups]
    assert max(lrs) == 2e-4  # the choice model's 1e-2 and the config's 0.5 alike
    assert learner.policy.config.grad_clip == 0.5
    assert learner.config.lr == 2e-4  # what a candidate records


# ---- publishing --------------------------------------------------------------------------


def test_candidates_are_published_at_the_cadence(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    logs = joined_logs()
    every = 3000
    learner = fresh_learner(small_setup, tmp_path, online_config(publish_every_rows=every))
    sizes = [1000, 1000, 1500, 4000, 500, 3000]  # crosses 3000, 6000 (once), 9000, 12000
    edges = np.cumsum([0, *sizes])
    published = []
    for a, b in itertools.pairwise(edges):
        report = learner.observe(logs.take(np.arange(a, b)))
        published.append(report.candidate)
    assert [p is not None for p in published] == [False, False, True, True, False, True]
    paths = [p for p in published if p is not None]
    assert learner.stats.candidates == paths
    assert all(p.parent == tmp_path / "policy-slateq" for p in paths)
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    ckpt = load_policy_checkpoint(paths[-1])
    assert ckpt.iteration == 3
    assert ckpt.features is not None
    assert ckpt.features.retrieval_version == small_setup.features().retrieval_version
    online = ckpt.artifact.metadata["online"]
    assert online["stats"]["rows_observed"] == int(edges[-1])
    assert "never trained on" in online["heldout_rule"]
    np.testing.assert_array_equal(
        ckpt.policy.weights()["q_net/bilinear"], learner.policy.weights()["q_net/bilinear"]
    )


def test_a_learner_continues_from_the_serving_checkpoint(
    small_policies: dict[str, Path], tmp_path: Path
) -> None:
    base = load_policy_checkpoint(small_policies["slateq"])
    learner = OnlineLearner.from_checkpoint(small_policies["slateq"], tmp_path)
    assert learner.name == "slateq"
    assert learner.base_version == base.artifact.version
    assert learner.reward_scale == base.reward_scale
    assert _weights_equal(learner.policy.weights(), base.policy.weights())
    candidate = learner.publish_candidate()
    ckpt = load_policy_checkpoint(candidate)
    assert ckpt.iteration == base.iteration + 1
    assert candidate.name > small_policies["slateq"].name  # newer by name, as serving sorts


def test_reinforce_learns_from_joined_logs_too(small_setup: SimulatorSetup, tmp_path: Path) -> None:
    config: PolicyTrainConfig = replace(ONLINE_SLATEQ, algo="reinforce", hidden=(8,))
    learner = OnlineLearner.fresh(
        config, small_setup.features(), tmp_path, reward_model=small_setup.reward_model,
        online=online_config(),
    )  # fmt: skip
    before = learner.policy.weights()
    for batch in chunks(joined_logs(), 4):
        learner.observe(batch)
    assert learner.stats.policy.applied > 0
    assert learner.stats.policy.refused == 0
    assert not _weights_equal(learner.policy.weights(), before)
    assert load_policy_checkpoint(learner.publish_candidate()).config.algo == "reinforce"


# ---- learning ----------------------------------------------------------------------------


def test_learning_from_an_exploring_logger_beats_it_off_policy_on_heldout_data(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    """SlateQ learned online from a softmax-exploring logger's joined logs is worth more than
    the logger on the held-out sessions (SNIPS and DR re-running the policy on the logged
    candidate sets, scored by the setup's learned reward), and more than it was untrained."""
    learner = fresh_learner(small_setup, tmp_path)
    untrained = learner.publish_candidate()
    for batch in chunks(joined_logs(), 10):
        learner.observe(batch)
    assert learner.stats.policy.refused == 0
    trained = learner.publish_candidate()

    heldout = learner.heldout()
    assert heldout is not None
    requests = LoggedRequests.from_feedback(heldout)
    signals = np.stack(
        [heldout.click, heldout.dwell_s, heldout.like, heldout.conversion, heldout.revenue,
         heldout.skip], axis=1,
    ).astype(np.float32)  # fmt: skip
    rewards = small_setup.reward_model.rewards(signals).astype(np.float64)
    model = CrossFittedRewardModel.fit(requests, heldout.item_id, rewards)
    estimates = {}
    for name, path in (("untrained", untrained), ("trained", trained)):
        ckpt = load_policy_checkpoint(path)
        assert ckpt.features is not None
        target = CheckpointTarget(ckpt.policy, ckpt.features, name)  # type: ignore[arg-type]
        tp = target_propensities(requests, target, n_samples=32, reward_model=model)
        tp = replace(tp, position_propensity=None, position_propensity_stderr=None)
        estimates[name] = evaluate_off_policy(
            requests.slates, tp, slot_rewards=rewards, n_bootstrap=400
        )
    logged = estimates["trained"]["logged"]
    for e in ("snips", "dr"):
        trained_e, untrained_e = estimates["trained"][e], estimates["untrained"][e]
        assert trained_e.ci_low > logged.ci_high, (e, trained_e, logged)
        assert trained_e.value > untrained_e.ci_high, (e, trained_e, untrained_e)
    assert estimates["trained"]["snips"].ess > 100
