"""Bad simulator configuration fails fast, with a message that names the problem."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.config import CatalogSettings, Settings, SimulatorSettings
from recsys.data import make_world
from recsys.simulator import SlateEnv, SlateGymEnv, SlateVectorEnv


def test_defaults_are_valid_and_nested_in_settings() -> None:
    cfg = Settings().simulator
    assert cfg == SimulatorSettings()
    assert cfg.slate_size <= cfg.num_candidates


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_candidates": -5}, "num_candidates"),
        ({"slate_size": 0}, "slate_size"),
        ({"history_size": -1}, "history_size"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"slate_size": 20, "num_candidates": 10}, r"slate_size \(20\) exceeds"),
        ({"fatigue_weight": float("nan")}, "fatigue_weight"),
        ({"no_click_logit": float("nan")}, "no_click_logit"),
        ({"session_budget_s": float("inf")}, "session_budget_s"),
        ({"fatigue_half_life_steps": 0.0}, "fatigue_half_life_steps"),
        ({"satiation_gain": float("nan")}, "satiation_gain"),
        ({"satiation_half_life_steps": 0.0}, "satiation_half_life_steps"),
        ({"satiation_satisfaction_weight": -1.0}, "satiation_satisfaction_weight"),
        ({"satiation_appeal_weight": float("inf")}, "satiation_appeal_weight"),
        ({"extension_gain": 1.0}, "extension_gain"),
        ({"choice_model": "probit"}, "choice_model"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        SimulatorSettings(**kwargs)  # type: ignore[arg-type]


def test_bad_settings_from_the_environment_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SIMULATOR__POSITION_BIAS", "nan")
    with pytest.raises(ValidationError, match="position_bias"):
        Settings()
    monkeypatch.setenv("RECSYS_SIMULATOR__POSITION_BIAS", "0.3")
    monkeypatch.setenv("RECSYS_SIMULATOR__SLATE_SIZE", "500")
    with pytest.raises(ValidationError, match="slate_size"):
        Settings()


def test_env_revalidates_unchecked_settings() -> None:
    world = make_world(CatalogSettings(num_items=50, num_users=5, num_topics=3))
    sneaky = SimulatorSettings.model_construct(
        **{**SimulatorSettings().model_dump(), "affinity_scale": float("nan")}
    )
    with pytest.raises(ValidationError, match="affinity_scale"):
        SlateEnv(world, settings=sneaky)


def test_candidates_larger_than_catalog_raise_where_used() -> None:
    world = make_world(CatalogSettings(num_items=50, num_users=5, num_topics=3))
    env = SlateEnv(world)  # stepping chosen slates needs no candidates
    env.step([0], [[1, 2]])
    with pytest.raises(ValueError, match=r"num_candidates \(100\) exceeds the catalog \(50"):
        env.sample_candidates()
    with pytest.raises(ValueError, match="num_candidates"):
        SlateGymEnv(world)
    with pytest.raises(ValueError, match="num_candidates"):
        SlateVectorEnv(2, world)
