"""The process bridge: an env run by another interpreter, in its own process, behind
``BatchSlateEnv`` (``recsys.policy.training.bridge``).

The child interpreter here is this one (``sys.executable``) unless ``RECSYS_BRIDGE_PYTHON``
names another (e.g. a Python 3.7 virtualenv with numpy 1.17: see the last test); either way
it is a separate process that imports neither torch nor recsys. The envs are
``tests/unit/policy/bridge_envs.py`` (numpy only).
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys.policy.training.bridge import (
    ArraySlateEnv,
    BridgeError,
    BridgeStartError,
    ProcessEnv,
    obs_from_arrays,
    step_from_arrays,
)
from recsys.policy.training.bridge_child import ProtocolError, decode_header, encode, flatten
from recsys.policy.training.custom_env import CustomEnvError, ImportedEnvFactory
from recsys.policy.training.envs import BatchSlateEnv
from tests.unit.policy import bridge_envs

ROOT = str(Path(__file__).resolve().parents[4])
MODULE = "tests.unit.policy.bridge_envs"
OTHER_PYTHON = os.environ.get("RECSYS_BRIDGE_PYTHON")


def _bridged(factory: str, **kwargs: object) -> ProcessEnv:
    return ProcessEnv(f"{MODULE}:{factory}", search_path=[ROOT], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def env() -> Iterator[ProcessEnv]:
    with _bridged("make_env") as bridged:
        yield bridged


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's reaper may be slow or absent)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def _slates(rng: np.random.Generator, users: int) -> np.ndarray:
    return np.stack([rng.permutation(6)[:2] for _ in range(users)])


def test_the_env_runs_in_another_process_that_never_imports_torch() -> None:
    import torch  # noqa: F401  (this process has it: the same factory refuses to run here)

    with pytest.raises(RuntimeError, match="not an isolated process"):
        bridge_envs.make_isolated_env(0)
    with _bridged("make_isolated_env") as env:  # it prints to stdout: not into the protocol
        assert isinstance(env, BatchSlateEnv)
        assert env.pid is not None
        assert env.pid != os.getpid()
        assert _alive(env.pid)
        assert env.child_info["pid"] == env.pid
        assert (env.batch_size, env.slate_size) == (4, 2)
        obs = env.reset(seed=1)
        step = env.step(np.tile([0, 1], (4, 1)))
        assert obs.item_features.shape == (4, 6, 2)
        assert step.next_obs.user_features.shape == (4, 2)


@pytest.mark.parametrize("seed", [0, 2024])
def test_bridged_steps_equal_the_same_env_in_process(env: ProcessEnv, seed: int) -> None:
    local = ArraySlateEnv(bridge_envs.make_env(0))
    assert (env.batch_size, env.slate_size) == (local.batch_size, local.slate_size)
    rng = np.random.default_rng(seed)
    got, want = env.reset(seed=seed), local.reset(seed=seed)
    np.testing.assert_allclose(got.user_features, want.user_features)
    np.testing.assert_allclose(got.item_features, want.item_features)
    np.testing.assert_array_equal(got.candidate_ids, np.tile(np.arange(6), (16, 1)))
    ended = 0
    for _ in range(25):  # past every user's first episode (5 to 14 steps)
        slates = _slates(rng, 16)
        a, b = env.step(slates), local.step(slates)
        np.testing.assert_allclose(a.next_obs.item_features, b.next_obs.item_features)
        np.testing.assert_allclose(a.next_obs.user_features, b.next_obs.user_features)
        np.testing.assert_allclose(a.response.signals(), b.response.signals())
        assert a.env_reward is not None
        assert b.env_reward is not None
        np.testing.assert_allclose(a.env_reward, b.env_reward)
        # Reward 1 sits on the clicked slot, a click where the user's topic was shown.
        np.testing.assert_array_equal(a.env_reward, a.response.click)
        np.testing.assert_array_equal(a.done, b.done)
        assert a.done.dtype == np.bool_
        assert (a.hidden_reward, a.valid, a.truncated) == (None, None, None)
        ended += int(a.done.sum())
    assert ended > 0


def test_a_step_is_one_round_trip_of_arrays_whatever_the_batch(env: ProcessEnv) -> None:
    env.reset(seed=3)
    start = time.perf_counter()
    for _ in range(50):
        env.step(np.tile([0, 1], (16, 1)))
    assert (time.perf_counter() - start) / 50 < 0.05  # no per-user chatter, no process start
    with pytest.raises(ValueError, match=r"slates must be \[16, 2\]"):
        env.step(np.zeros((15, 2), dtype=np.int64))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_module_xyz:make_env", "cannot import 'no_such_module_xyz'"),
        (f"{MODULE}:make_nothing", "has no attribute 'make_nothing'"),
        (f"{MODULE}:raising_factory", "raising_factory(0) raised RuntimeError: no simulator"),
        (f"{MODULE}:not_an_env", "returned a object without batch_size, slate_size, reset"),
    ],
)
def test_an_env_that_cannot_start_is_a_clear_error(factory: str, message: str) -> None:
    with pytest.raises(BridgeStartError) as caught:
        ProcessEnv(factory, search_path=[ROOT])
    assert message in str(caught.value)
    assert factory in str(caught.value)
    assert isinstance(caught.value, CustomEnvError)  # the CLI's usage error (exit 2)
    if "raising" in factory:  # the child's traceback points at the user's code
        assert "bridge_envs.py" in str(caught.value)


def test_a_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BridgeStartError, match="cannot start the interpreter"):
        _bridged("make_env", python=str(tmp_path / "bin" / "python"))
    with pytest.raises(CustomEnvError, match="no executable Python interpreter"):
        ImportedEnvFactory.resolve(f"{MODULE}:make_env@{tmp_path / 'python'}")


def test_an_interpreter_without_numpy_is_a_clear_error(tmp_path: Path) -> None:
    python = tmp_path / "python"  # this interpreter without its site-packages
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    with pytest.raises(BridgeStartError, match="could not start") as caught:
        _bridged("make_env", python=str(python))
    assert "No module named 'numpy'" in str(caught.value)  # the end of its stderr


def test_an_exception_in_step_is_reported_and_the_env_serves_on() -> None:
    with _bridged("make_failing_step_env") as env:
        env.reset(seed=0)
        env.step(np.tile([0, 1], (4, 1)))
        env.step(np.tile([0, 1], (4, 1)))
        with pytest.raises(BridgeError, match="step raised ValueError: simulator state") as c:
            env.step(np.tile([0, 1], (4, 1)))
        assert "bridge_envs.py" in str(c.value)  # the child's traceback
        assert env.reset(seed=1).user_features.shape == (4, 2)


def test_a_child_killed_mid_run_is_an_error_not_a_hang(env: ProcessEnv) -> None:
    env.reset(seed=0)
    env.step(np.tile([0, 1], (16, 1)))
    assert env.pid is not None
    os.kill(env.pid, signal.SIGKILL)
    start = time.perf_counter()
    with pytest.raises(BridgeError, match=r"died during step \(killed by SIGKILL") as caught:
        env.step(np.tile([0, 1], (16, 1)))
    assert time.perf_counter() - start < 5
    assert "make_env" in str(caught.value)
    with pytest.raises(BridgeError, match="cannot be used any more"):
        env.reset(seed=0)


def test_a_hanging_step_times_out_and_its_child_is_killed() -> None:
    env = _bridged("make_slow_env", call_timeout_s=0.5)
    pid = env.pid
    assert pid is not None
    env.reset(seed=0)
    start = time.perf_counter()
    with pytest.raises(BridgeError, match=r"no answer to step within 0.5 s"):
        env.step(np.tile([0, 1], (4, 1)))
    assert time.perf_counter() - start < 5
    assert not _alive(pid)
    env.close()


def test_an_interrupted_call_stops_the_child_instead_of_desynchronising_it() -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    env = _bridged("make_slow_env")
    pid = env.pid
    assert pid is not None
    env.reset(seed=0)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            env.step(np.tile([0, 1], (4, 1)))  # its answer would come in 60 s
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not _alive(pid)
    with pytest.raises(BridgeError, match="interrupted during step"):
        env.reset(seed=0)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("make_wrong_shape_env", r"step answered done must be \[4\], got shape \[4, 2\]"),
        ("make_object_array_env", "'hidden_reward' is a object array; only bool, integer"),
    ],
)
def test_malformed_replies_are_clear_errors(factory: str, message: str) -> None:
    with _bridged(factory) as env:
        env.reset(seed=0)
        with pytest.raises(BridgeError, match=message):
            env.step(np.tile([0, 1], (4, 1)))


def test_close_stops_the_child_and_so_does_garbage_collection() -> None:
    env = _bridged("make_env")
    pid = env.pid
    assert pid is not None
    env.reset(seed=0)
    env.close()
    assert not _alive(pid)
    assert env.pid is None
    with pytest.raises(BridgeError, match="it was closed"):
        env.reset(seed=0)
    env.close()  # idempotent

    dropped = _bridged("make_env")
    pid = dropped.pid
    assert pid is not None
    del dropped
    gc.collect()
    assert not _alive(pid)


def test_the_child_exits_when_its_parent_dies() -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from recsys.policy.training.bridge import ProcessEnv
        env = ProcessEnv("{MODULE}:make_env", search_path=[{ROOT!r}])
        env.reset(seed=0)
        print(env.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no finalizer, no atexit
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert _wait_gone(int(out.stdout.strip()))  # it read EOF on its stdin


def test_it_pickles_as_its_spec_and_starts_its_own_child_where_unpickled(
    env: ProcessEnv,
) -> None:
    env.reset(seed=4)
    copy = pickle.loads(pickle.dumps(env))
    try:
        assert copy.pid is None  # nothing runs until it is used (in a Ray worker)
        assert (copy.batch_size, copy.slate_size) == (16, 2)
        np.testing.assert_allclose(
            copy.reset(seed=4).item_features, env.reset(seed=4).item_features
        )
        assert copy.pid not in (None, env.pid)
    finally:
        copy.close()
    factory = ImportedEnvFactory.resolve(f"{MODULE}:make_env@{sys.executable}")
    assert factory.python == sys.executable
    assert pickle.loads(pickle.dumps(factory)) == factory


def test_the_wire_format_carries_plain_arrays_only() -> None:
    arrays = flatten({"a": np.arange(6, dtype=np.int32).reshape(2, 3), "m": {"b": [True]}})
    assert [name for name, _ in arrays] == ["a", "m.b"]
    raw = b"".join(bytes(part) for part in encode({"op": "x"}, arrays))
    header, specs, total = decode_header(raw[4:][: int.from_bytes(raw[:4], "little")])
    assert header == {"op": "x"}
    assert [(n, dt.str, shape) for n, dt, shape in specs] == [
        ("a", "<i4", (2, 3)),
        ("m.b", "|b1", (1,)),
    ]
    assert total == 6 * 4 + 1
    for bad in (
        b'{"op": "x", "arrays": [["a", "|O", [1]]]}',  # an object array: never unpickled
        b'{"op": "x", "arrays": [["a", "<f4", [-1]]]}',
        b'{"arrays": []}',
        b"\x80not json",
    ):
        with pytest.raises(ProtocolError):
            decode_header(bad)


def test_array_names_and_shapes_are_checked() -> None:
    obs = {"user_features": np.zeros((2, 3)), "item_features": np.zeros((2, 4, 5))}
    assert obs_from_arrays(obs, 2).candidate_ids.shape == (2, 4)
    with pytest.raises(ValueError, match="unexpected field user_feature"):
        obs_from_arrays({**obs, "user_feature": np.zeros((2, 3))}, 2)
    with pytest.raises(ValueError, match=r"user_features must be \[3, 3\], got shape \[2, 3\]"):
        obs_from_arrays(obs, 3)
    step = {f"next_obs.{k}": v for k, v in obs.items()}
    with pytest.raises(ValueError, match=r"must return done \[B\]"):
        step_from_arrays(step, 2, 2)
    both = {**step, "done": np.zeros(2), "reward": np.ones(2), "env_reward": np.ones((2, 2))}
    with pytest.raises(ValueError, match="not both"):
        step_from_arrays(both, 2, 2)


def test_an_item_table_crosses_once_and_observations_carry_ids_only() -> None:
    """The env's ``item_table`` comes with ``ready``; its observations are ids, and they
    equal the same env sending its features every step, bridged or in process."""
    with _bridged("make_catalog_env") as env, _bridged("make_catalog_features_env") as old:
        assert env.item_table is not None
        assert old.item_table is None
        np.testing.assert_array_equal(env.item_table, np.eye(2)[np.arange(40) % 2])
        assert not env.item_table.flags.writeable
        local = ArraySlateEnv(bridge_envs.make_catalog_env(0))
        rng = np.random.default_rng(0)
        got, want, same = env.reset(seed=5), old.reset(seed=5), local.reset(seed=5)
        for _ in range(12):
            for a in (want, same):
                np.testing.assert_array_equal(got.item_features, a.item_features)
                np.testing.assert_array_equal(got.candidate_ids, a.candidate_ids)
                np.testing.assert_array_equal(got.user_features, a.user_features)
            assert got.item_features.shape == (16, 6, 2)
            slates = _slates(rng, 16)
            got, want, same = (e.step(slates).next_obs for e in (env, old, local))


@pytest.mark.parametrize(
    ("factory", "error", "message"),
    [
        ("make_nan_table_env", BridgeStartError, r"item_table has 1 non-finite values"),
        ("make_ambiguous_catalog_env", BridgeError, "item_features sent by an env that declared"),
        ("make_out_of_range_env", BridgeError, "candidate_ids holds id 40 .* has 40 items"),
    ],
)
def test_item_table_mistakes_are_clear_errors(
    factory: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message), _bridged(factory) as env:
        env.reset(seed=0)


def test_an_observation_of_ids_needs_a_table_and_the_ids() -> None:
    table = np.eye(3, dtype=np.float32)
    obs = {"user_features": np.zeros((2, 4)), "candidate_ids": np.array([[0, 2], [1, 1]])}
    np.testing.assert_array_equal(
        obs_from_arrays(obs, 2, item_table=table).item_features, table[obs["candidate_ids"]]
    )
    with pytest.raises(ValueError, match=r"item_features is missing .* declares an item_table"):
        obs_from_arrays(obs, 2)
    with pytest.raises(ValueError, match="candidate_ids is missing"):
        obs_from_arrays({"user_features": np.zeros((2, 4))}, 2, item_table=table)
    with pytest.raises(ValueError, match="integer catalog ids"):
        obs_from_arrays({**obs, "candidate_ids": np.zeros((2, 2))}, 2, item_table=table)


#: A stand-in for a team's old simulator with the old gym API (docs/policy.md's example wraps it).
LEGACY_SIM = """
import numpy as np


class LegacyRecEnv(object):
    def __init__(self):
        self.rs = np.random.RandomState(0)

    def seed(self, seed):
        self.rs = np.random.RandomState(seed)

    def _observe(self):
        self.topic = self.rs.randint(4)
        self.docs = self.rs.randint(4, size=10)
        return {"user": np.eye(4)[self.topic], "docs": np.eye(4)[self.docs]}

    def reset(self):
        self.t = 0
        return self._observe()

    def step(self, action):
        hits = [i for i, d in enumerate(action) if self.docs[d] == self.topic]
        self.t += 1
        info = {"clicked": hits[0] if hits else -1}
        return self._observe(), float(bool(hits)), self.t >= 8, info
"""


def test_the_docs_legacy_adapter_runs_through_the_bridge(tmp_path: Path) -> None:
    text = (Path(ROOT) / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```python\n(# legacy_adapter\.py\n.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/policy.md should show legacy_adapter.py once"
    (tmp_path / "legacy_adapter.py").write_text(blocks[0])
    (tmp_path / "legacy_sim.py").write_text(LEGACY_SIM)
    spec = f"legacy_adapter:make_env@{OTHER_PYTHON or sys.executable}"
    env = ImportedEnvFactory.resolve(spec, [str(tmp_path)])(0)
    assert isinstance(env, ProcessEnv)
    try:
        obs = env.reset(seed=1)
        assert obs.item_features.shape == (64, 10, 4)
        done = 0
        for _ in range(8):
            step = env.step(np.tile([0, 1, 2], (64, 1)))
            done += int(step.done.sum())
        assert done == 64  # every user's episode is 8 steps
        assert step.env_reward is not None
        np.testing.assert_array_equal(step.env_reward, step.response.click)
        assert 0 < step.response.click.sum() < 64
    finally:
        env.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_policy_is_trained_and_evaluated_through_the_bridge_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.cli import app

    monkeypatch.chdir(ROOT)  # --env imports from the current directory, in the child too
    runner = CliRunner()
    spec = f"{MODULE}:make_env@{OTHER_PYTHON or sys.executable}"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "gamma": 0.0,
                "iterations": 12,
                "steps_per_iteration": 4,
                "batch_size": 64,
                "updates_per_iteration": 5,
                "epsilon": 0.2,
                "lr": 0.01,
                "hidden": [16],
            }
        )
    )
    args = ["train", "policy", "--env", spec, "--algo", "slateq", "--workers", "0"]
    trained = runner.invoke(app, [*args, "--config", str(config), "--artifacts", str(tmp_path)])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.output.strip().splitlines()[-1])
    assert summary["iterations"] == 12
    assert 5 <= summary["episode_length"] <= 14

    args = ["evaluate", "env", "--env", spec, "--episodes", "32", "--json"]
    args += ["--policies", f"random,slateq={tmp_path / 'checkpoint-slateq'}"]
    evaluated = runner.invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    data = json.loads(evaluated.output)
    assert data["config"]["env"] == spec
    assert data["paired"]["slateq - random"]["ci_low"] > 0  # it learned through the bridge

    failed = runner.invoke(
        app, ["evaluate", "env", "--env", f"{MODULE}:raising_factory@{sys.executable}"]
    )
    assert failed.exit_code == 2, failed.output
    assert "no simulator licence" in failed.output


@pytest.mark.skipif(OTHER_PYTHON is None, reason="RECSYS_BRIDGE_PYTHON names no interpreter")
def test_an_env_under_another_python_and_numpy_equals_it_in_process() -> None:
    with _bridged("make_env", python=OTHER_PYTHON) as env:
        assert env.child_info["executable"] != sys.executable
        assert env.child_info["numpy"] != np.__version__
        local = ArraySlateEnv(bridge_envs.make_env(0))
        rng = np.random.default_rng(0)
        np.testing.assert_allclose(
            env.reset(seed=9).item_features, local.reset(seed=9).item_features
        )
        for _ in range(20):
            slates = _slates(rng, 16)
            a, b = env.step(slates), local.step(slates)
            np.testing.assert_allclose(a.next_obs.item_features, b.next_obs.item_features)
            np.testing.assert_array_equal(a.done, b.done)
