"""GymSlateEnv's signals: a declared per-slot mapping (several clicks per slate), per-item
reward credit, errors for declared keys a step lacks, and the warning when the default
one-click reader would lose an env's signals."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from recsys.policy.training.bridge import step_from_arrays
from recsys.policy.training.custom_env import ImportedEnvFactory
from recsys.policy.training.envs import (
    GymSlateEnv,
    check_signal_mapping,
    credit_env_reward,
    per_slot_info_keys,
)
from recsys.simulator.multiclick import MULTICLICK_REWARD_KEY, MULTICLICK_SIGNALS
from tests.unit.policy.custom_envs import make_env

Info = dict[str, Any]
#: ``(step index, actions) -> (reward [n], info)`` of a scripted step.
Script = Callable[[int, np.ndarray[Any, Any]], tuple[np.ndarray[Any, Any], Info]]

N, C, S = 2, 5, 3
CLICKS = np.array([[1, 0, 1], [0, 0, 0]], dtype=np.bool_)
SLOT_REWARDS = np.array([[2.0, 0.0, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
WATCH = np.array([[120.0, 0.0, 30.0], [0.0, 0.0, 0.0]], dtype=np.float32)


def _per_slot_info(step: int, actions: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], Info]:
    """Row 0 clicks slots 0 and 2 (rewards 2.0 and 0.5), row 1 nothing."""
    info = {"clicks": CLICKS.copy(), "slot_rewards": SLOT_REWARDS.copy(), "watch": WATCH.copy()}
    return SLOT_REWARDS.sum(axis=1), info


class ScriptedVectorEnv(VectorEnv[dict[str, Any], Any, Any]):  # type: ignore[misc]
    """``N`` rows, ``C`` candidates, slates of ``S``; every step's reward and info come from
    ``script``; episodes are truncated after ``horizon`` steps (next-step autoreset)."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, script: Script, horizon: int = 100) -> None:
        self.num_envs = N
        self.script = script
        self.horizon = horizon
        self.single_observation_space = spaces.Dict(
            {
                "user": spaces.Box(0.0, 1.0, (2,), np.float32),
                "candidates": spaces.Box(0.0, 1.0, (C, 2), np.float32),
            }
        )
        self.single_action_space = spaces.MultiDiscrete([C] * S)
        self.observation_space = batch_space(self.single_observation_space, N)
        self.action_space = batch_space(self.single_action_space, N)
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        return {
            "user": np.ones((N, 2), np.float32),
            "candidates": np.ones((N, C, 2), np.float32),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], Info]:
        self.t = 0
        return self._obs(), {}

    def step(self, actions: Any) -> tuple[dict[str, Any], Any, Any, Any, Info]:
        reward, info = self.script(self.t, np.asarray(actions))
        self.t += 1
        truncated = np.full(N, self.t % (self.horizon + 1) == self.horizon)
        return self._obs(), np.asarray(reward, np.float32), np.zeros(N, np.bool_), truncated, info


class DeclaringEnv(ScriptedVectorEnv):
    """The scripted env declaring its signals and per-slot reward as attributes."""

    slate_signals = {"click": "clicks"}  # noqa: RUF012
    slot_reward_key = "slot_rewards"


MAPPING = {"click": "clicks", "dwell_s": "watch"}
ACTION = np.array([[0, 1, 2], [2, 3, 4]])


def _env(script: Script = _per_slot_info, **kwargs: Any) -> GymSlateEnv:
    env = GymSlateEnv(ScriptedVectorEnv(script, kwargs.pop("horizon", 100)), **kwargs)
    env.reset(seed=0)
    return env


def test_two_clicks_in_one_slate_credit_each_slot_its_own_reward() -> None:
    env = _env(signals=MAPPING, reward_key="slot_rewards")
    step = env.step(ACTION)
    np.testing.assert_array_equal(step.response.click, CLICKS.astype(np.float32))
    np.testing.assert_array_equal(step.response.dwell_s, WATCH)
    assert step.env_reward is not None
    np.testing.assert_array_equal(step.env_reward, SLOT_REWARDS)
    np.testing.assert_allclose(step.env_reward.sum(axis=1), SLOT_REWARDS.sum(axis=1))
    assert step.response.like.sum() == 0  # unmapped signals are 0


def test_without_slot_rewards_the_scalar_reward_is_split_over_the_clicked_slots() -> None:
    env = _env(signals={"click": "clicks"})
    step = env.step(ACTION)
    assert step.env_reward is not None
    total = SLOT_REWARDS.sum(axis=1)
    expected = np.zeros((N, S), np.float32)
    expected[0, [0, 2]] = total[0] / 2  # two clicks: equal shares
    expected[1, 0] = total[1]  # no click: slot 0
    np.testing.assert_allclose(step.env_reward, expected)
    np.testing.assert_allclose(step.env_reward.sum(axis=1), total)


def test_credit_keeps_every_rows_sum_and_credits_a_remainder_by_the_rule() -> None:
    rng = np.random.default_rng(0)
    clicks = rng.random((50, 4)) < 0.4
    slot = np.where(clicks, rng.random((50, 4)), 0.0).astype(np.float32)
    bonus = rng.normal(size=50).astype(np.float32) * (rng.random(50) < 0.3)
    scalar = slot.sum(axis=1) + bonus
    out = credit_env_reward(scalar, clicks, slot)
    np.testing.assert_allclose(out.sum(axis=1), scalar, rtol=1e-5, atol=1e-5)
    exact = bonus == 0
    np.testing.assert_array_equal(out[exact], slot[exact])  # nothing left over: as sent
    one = credit_env_reward([1.0, 2.0], [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(one, [[0, 1, 0], [2, 0, 0]])  # the one-click rule


def test_a_declared_key_the_step_does_not_send_is_an_error_naming_it() -> None:
    def no_watch(step: int, actions: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], Info]:
        reward, info = _per_slot_info(step, actions)
        del info["watch"]
        return reward, info

    env = _env(no_watch, signals=MAPPING)
    with pytest.raises(ValueError, match=r"signal 'dwell_s' is declared as info\['watch'\]") as e:
        env.step(ACTION)
    assert "'clicks'" in str(e.value)  # the keys that were there
    assert "'slot_rewards'" in str(e.value)
    env = _env(no_watch, signals={"click": "clicks"}, reward_key="rewards")
    with pytest.raises(ValueError, match=r"per-slot reward is declared as info\['rewards'\]"):
        env.step(ACTION)


def test_a_sub_env_that_did_not_send_a_declared_key_is_an_error() -> None:
    def masked(step: int, actions: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], Info]:
        reward, info = _per_slot_info(step, actions)
        info["_clicks"] = np.array([True, False])  # Gymnasium's "sub-env 1 did not send it"
        return reward, info

    with pytest.raises(ValueError, match=r"sub-env\(s\) \[1\] sent no info\['clicks'\]"):
        _env(masked, signals=MAPPING).step(ACTION)


def test_misshapen_or_non_finite_per_slot_values_are_errors() -> None:
    def flat(step: int, actions: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], Info]:
        reward, info = _per_slot_info(step, actions)
        info["clicks"] = CLICKS[:, 0]
        return reward, info

    def nan(step: int, actions: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], Info]:
        reward, info = _per_slot_info(step, actions)
        info["slot_rewards"] = np.full((N, S), np.nan, np.float32)
        return reward, info

    with pytest.raises(ValueError, match=r"info\['clicks'\] .* shape \[2, 3\], got bool \[2\]"):
        _env(flat, signals=MAPPING).step(ACTION)
    with pytest.raises(ValueError, match="non-finite"):
        _env(nan, signals=MAPPING, reward_key="slot_rewards").step(ACTION)


def test_reset_step_rows_need_not_send_the_declared_keys() -> None:
    """After a time limit every row's next step is its reset step: an info without the keys
    (what a Gymnasium vector env merges from its sub-envs' resets) is no error there."""

    def keys_only_in_episodes(
        step: int, actions: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], Info]:
        return (np.zeros(N), {}) if step == 2 else _per_slot_info(step, actions)

    env = _env(keys_only_in_episodes, signals=MAPPING, reward_key="slot_rewards", horizon=2)
    steps = [env.step(ACTION) for _ in range(4)]
    assert steps[1].truncated is not None
    assert steps[1].truncated.all()
    assert steps[2].valid is not None
    assert not steps[2].valid.any()
    assert steps[2].response.click.sum() == 0
    np.testing.assert_array_equal(steps[3].env_reward, SLOT_REWARDS)


def test_the_mapping_is_checked_when_the_env_is_built() -> None:
    vec = ScriptedVectorEnv(_per_slot_info)
    with pytest.raises(ValueError, match=r"unknown signal\(s\) \['clik'\]; the signals are click"):
        GymSlateEnv(vec, signals={"clik": "clicks"})
    with pytest.raises(ValueError, match="'click' must map to an info key"):
        GymSlateEnv(vec, signals={"click": ""})
    with pytest.raises(ValueError, match="must map signal names to info keys"):
        check_signal_mapping(["click"])
    with pytest.raises(ValueError, match="not both"):
        GymSlateEnv(
            vec, signals=MAPPING, signals_fn=lambda info, b, s: np.zeros((b, s, 6), np.float32)
        )
    with pytest.raises(ValueError, match="reward_key must be an info key"):
        GymSlateEnv(DeclaringEnv(_per_slot_info), reward_key="")


def test_an_env_declares_its_mapping_and_the_arguments_win() -> None:
    env = GymSlateEnv(DeclaringEnv(_per_slot_info))
    assert env.signals == {"click": "clicks"}
    assert env.reward_key == "slot_rewards"
    env.reset(seed=0)
    step = env.step(ACTION)
    np.testing.assert_array_equal(step.env_reward, SLOT_REWARDS)
    override = GymSlateEnv(DeclaringEnv(_per_slot_info), signals=MAPPING, reward_key="watch")
    assert override.signals == MAPPING
    assert override.reward_key == "watch"


def test_sub_envs_must_declare_one_mapping() -> None:
    class Single(gymnasium.Env[dict[str, Any], Any]):  # type: ignore[misc]
        def __init__(self, key: str) -> None:
            self.slate_signals = {"click": key}
            self.observation_space = spaces.Dict(
                {"user": spaces.Box(0, 1, (1,)), "candidates": spaces.Box(0, 1, (C, 1))}
            )
            self.action_space = spaces.MultiDiscrete([C] * S)

    same = gymnasium.vector.SyncVectorEnv([lambda: Single("clicks")] * 2)
    assert GymSlateEnv(same).signals == {"click": "clicks"}
    mixed = gymnasium.vector.SyncVectorEnv([lambda: Single("clicks"), lambda: Single("c")])
    with pytest.raises(ValueError, match="sub-env 1's slate_signals differs from sub-env 0's"):
        GymSlateEnv(mixed)


class SingleClicksEnv(gymnasium.Env[dict[str, Any], Any]):  # type: ignore[misc]
    """A single (non-vector) env sending per-slot ``[S]`` clicks and rewards."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {"user": spaces.Box(0, 1, (1,)), "candidates": spaces.Box(0, 1, (C, 1))}
        )
        self.action_space = spaces.MultiDiscrete([C] * S)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], Info]:
        super().reset(seed=seed)
        return {"user": np.ones(1, np.float32), "candidates": np.ones((C, 1), np.float32)}, {}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, Info]:
        obs, _ = self.reset()
        info = {"clicks": np.array([0, 1, 1]), "slot_rewards": np.array([0.0, 1.0, 3.0])}
        return obs, 4.0, False, False, info


def test_a_single_env_sends_per_slot_values_of_shape_s() -> None:
    env = GymSlateEnv(SingleClicksEnv(), signals={"click": "clicks"}, reward_key="slot_rewards")
    env.reset(seed=0)
    step = env.step(np.array([[0, 1, 2]]))
    np.testing.assert_array_equal(step.response.click, [[0, 1, 1]])
    np.testing.assert_array_equal(step.env_reward, [[0, 1, 3]])


def test_the_default_reader_warns_once_when_it_would_lose_per_slot_signals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = _env()  # no mapping: the default one-click reader
    with caplog.at_level(logging.WARNING, logger="recsys.policy.training.envs"):
        steps = [env.step(ACTION) for _ in range(3)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'clicks', 'slot_rewards', 'watch'" in message
    assert "signals={'click': 'clicks'}" in message
    assert all(s.response.click.sum() == 0 for s in steps)  # what it warned about


def test_no_warning_when_the_default_reader_sees_clicks_or_the_env_says_it_sends_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="recsys.policy.training.envs"):
        two_topics = make_env(0)  # the docs' env: info['signals']['click_position']
        two_topics.reset(seed=0)
        for _ in range(10):
            two_topics.step(np.tile(np.arange(2), (two_topics.batch_size, 1)))
        silent = _env(signals={})
        step = silent.step(ACTION)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert step.response.click.sum() == 0
    assert step.env_reward is not None
    assert step.env_reward[:, 0].sum() == SLOT_REWARDS.sum()


def test_per_slot_info_keys_finds_arrays_of_the_slot_shape() -> None:
    info = {"clicks": CLICKS, "_clicks": np.ones(2, bool), "pos": np.zeros(2), "x": "text"}
    assert per_slot_info_keys(info, (N, S)) == ["clicks"]


def test_a_factory_by_import_path_gives_the_declared_mapping() -> None:
    env = ImportedEnvFactory.resolve("recsys.policy.training.multiclick:make_env")(0)
    assert isinstance(env, GymSlateEnv)
    assert env.signals == MULTICLICK_SIGNALS
    assert env.reward_key == MULTICLICK_REWARD_KEY


def test_the_bridge_passes_per_slot_signals_and_splits_a_scalar_reward_the_same_way() -> None:
    obs = {"next_obs.user_features": np.ones((N, 2), np.float32)}
    obs["next_obs.item_features"] = np.ones((N, C, 2), np.float32)
    arrays = {**obs, "done": np.zeros(N, np.bool_), "response.click": CLICKS.astype(np.float32)}
    step = step_from_arrays({**arrays, "env_reward": SLOT_REWARDS}, N, S)
    np.testing.assert_array_equal(step.response.click, CLICKS)
    np.testing.assert_array_equal(step.env_reward, SLOT_REWARDS)
    total = SLOT_REWARDS.sum(axis=1)
    step = step_from_arrays({**arrays, "reward": total}, N, S)
    assert step.env_reward is not None
    np.testing.assert_array_equal(step.env_reward, credit_env_reward(total, CLICKS))
