"""A user's env by ``module:factory``: clear errors, pickles for Ray workers, and a learning
curve that fits the env (episode return and length; no simulator-only or all-zero columns)."""

from __future__ import annotations

import csv
import math
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from recsys.policy.batch import SlateObs
from recsys.policy.seeds import rollout_reset_seed
from recsys.policy.testing import TinySlateEnv
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.custom_env import CustomEnvError, ImportedEnvFactory
from recsys.policy.training.envs import GymSlateEnv, TinyEnvAdapter
from recsys.policy.training.trainer import SIMULATOR_COLUMNS, train_policy
from tests.unit.policy import custom_envs

MODULE = "tests.unit.policy.custom_envs"

#: The docs' SlateQ settings for the two-topic env, shrunk to a few iterations.
DOCS_CONFIG = PolicyTrainConfig(
    algo="slateq",
    reward="env",
    gamma=0.0,
    iterations=8,
    steps_per_iteration=4,
    users=16,
    batch_size=64,
    updates_per_iteration=5,
    epsilon=0.2,
    lr=1e-2,
    hidden=(16,),
)


def test_a_factory_resolves_builds_and_pickles() -> None:
    factory = ImportedEnvFactory.resolve(f"{MODULE}:make_env")
    clone = pickle.loads(pickle.dumps(factory))
    assert clone == factory
    env = clone(1)
    assert isinstance(env, GymSlateEnv)
    assert (env.batch_size, env.slate_size) == (custom_envs.USERS, 2)


def test_the_search_path_makes_a_module_outside_the_tree_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards
    (tmp_path / "outside_env_xyz.py").write_text(
        f"from {MODULE} import make_env as build\n", encoding="utf-8"
    )
    factory = ImportedEnvFactory.resolve("outside_env_xyz:build", [str(tmp_path)])
    assert factory.search_path == (str(tmp_path),)
    monkeypatch.delitem(sys.modules, "outside_env_xyz")
    sys.path.remove(str(tmp_path))  # as on a fresh Ray worker: the factory puts it back
    assert pickle.loads(pickle.dumps(factory))(0).batch_size == custom_envs.USERS


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("make_env", "must be module:factory"),
        (":make_env", "must be module:factory"),
        (f"{MODULE}:", "must be module:factory"),
        ("no_such_module_abc:make_env", "cannot import 'no_such_module_abc'"),
        (f"{MODULE}:make_nothing", "has no attribute 'make_nothing'"),
        (f"{MODULE}:NOT_CALLABLE", "is a int, not a callable"),
    ],
)
def test_a_bad_spec_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(CustomEnvError, match=message):
        ImportedEnvFactory.resolve(spec)


def test_a_module_that_fails_on_import_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "broken_env_xyz.py").write_text("raise KeyError('gym')\n", encoding="utf-8")
    message = "importing 'broken_env_xyz' for --env raised KeyError"
    with pytest.raises(CustomEnvError, match=message):
        ImportedEnvFactory.resolve("broken_env_xyz:make_env", [str(tmp_path)])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("raising_factory", r"raising_factory\(2\) raised RuntimeError: no simulator licence"),
        ("not_an_env", "returned a TwoTopicEnv, not a slate env"),
    ],
)
def test_a_factory_that_fails_is_a_clear_error(name: str, message: str) -> None:
    factory = ImportedEnvFactory.resolve(f"{MODULE}:{name}")  # imports fine
    with pytest.raises(CustomEnvError, match=message):
        factory(2)


def _curve(path: Path) -> dict[str, list[float]]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


@pytest.mark.usefixtures("one_torch_thread")
def test_the_learning_curve_of_a_custom_env_has_episode_return_and_no_all_zero_column(
    tmp_path: Path,
) -> None:
    factory = ImportedEnvFactory.resolve(f"{MODULE}:make_env")
    result = train_policy(DOCS_CONFIG, env_factory=factory, output_dir=tmp_path)
    assert result.curve_csv is not None
    columns = _curve(result.curve_csv)
    assert {"episode_return", "episode_length", "episodes", "reward_per_user_step"} <= set(columns)
    assert not set(SIMULATOR_COLUMNS) & set(columns)  # no hidden reward here
    assert "revenue_per_user_step" not in columns  # the env sends no revenue
    all_zero = [k for k, v in columns.items() if all(x == 0 for x in v)]
    assert all_zero == []
    # Users leave after 5 to 14 slates: every iteration but the first sees episodes end.
    lengths = [x for x in columns["episode_length"] if not math.isnan(x)]
    assert len(lengths) >= DOCS_CONFIG.iterations - 1
    assert all(5 <= x <= 14 for x in lengths)
    returns = [x for x in columns["episode_return"] if not math.isnan(x)]
    assert all(0 < r <= n for r, n in zip(returns, lengths, strict=True))  # reward <= 1 a step
    assert result.curve_png is not None
    assert result.curve_png.stat().st_size > 1000


@pytest.mark.usefixtures("one_torch_thread")
def test_an_env_with_a_hidden_reward_keeps_the_simulator_columns() -> None:
    def tiny(_: int) -> TinyEnvAdapter:
        return TinyEnvAdapter(TinySlateEnv(batch_size=8))

    result = train_policy(replace(DOCS_CONFIG, iterations=2), env_factory=tiny)
    assert set(SIMULATOR_COLUMNS) <= set(result.curve[-1])
    assert "clicks_per_user_step" in result.curve[-1]


@pytest.mark.usefixtures("one_torch_thread")
def test_training_resets_env_0_once_with_worker_0s_training_seed() -> None:
    resets: list[int | None] = []

    class Recorded(TinyEnvAdapter):
        def reset(self, seed: int | None = None) -> SlateObs:
            resets.append(seed)
            return super().reset(seed)

    config = replace(DOCS_CONFIG, iterations=1, seed=11)
    train_policy(config, env_factory=lambda _: Recorded(TinySlateEnv(batch_size=8)))
    assert resets == [rollout_reset_seed(11, 0)]
