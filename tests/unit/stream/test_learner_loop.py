"""The learner loop: it consumes each committed joined segment exactly once (across restarts),
never a writer's temporary file, and promotes the candidates the gate accepts into the
artifact root while counting the ones it refuses; ``recsys learner`` refuses bad input with
exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from recsys.artifacts import load_artifact
from recsys.cli import app
from recsys.data.logged import LoggedFeedback
from recsys.pipeline import SimulatorSetup
from recsys.policy.gate import GateConfig, decision_path
from recsys.policy.online import OnlineConfig
from recsys.stream.joined_dataset import ROWS, JoinedDataset
from recsys.stream.learner_loop import (
    CURSOR_FILE,
    LearnerLoop,
    LearnerLoopError,
    register_model_version,
)
from recsys.stream.metrics import StatsExporter
from tests.unit.policy.online_world import (
    chunks,
    fresh_learner,
    joined_logs,
    online_config,
    publish_negated,
)

NAME = "slateq"
DATE = "date=2024-01-01"
#: The gate's defaults but a margin: the candidate the joined logs train gains about +0.3
#: slate reward on the held-out requests, with the lower end of its interval near 0.
GATE = GateConfig(margin=0.1)


@pytest.fixture(scope="module")
def untrained(small_setup: SimulatorSetup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained SlateQ checkpoint of the small setup (what serves at the start)."""
    return fresh_learner(small_setup, tmp_path_factory.mktemp("serving")).publish_candidate()


def _root(tmp_path: Path, serving: Path) -> Path:
    """An artifact root whose only ``policy-slateq`` version is ``serving``."""
    root = tmp_path / "artifacts"
    shutil.copytree(serving, root / f"policy-{NAME}" / serving.name)
    return root


def _commit(
    dataset: Path, batches: list[LoggedFeedback], consumer: str = "j", first: int = 1
) -> None:
    """Commit ``batches`` as consecutive segments of ``consumer``, as the joiner does."""
    joined = JoinedDataset(str(dataset))
    for seq, batch in enumerate(batches, start=first):
        joined.commit(consumer, seq, f"imp.0-{seq}.{seq + 1}", DATE, batch.to_table(), {}, "{}")


def _open(
    dataset: Path,
    root: Path,
    staging: Path,
    *,
    online: OnlineConfig | None = None,
    keep_candidates: int = 5,
) -> LearnerLoop:
    """The loop ``recsys learner`` builds, with the online world's learner settings."""
    return LearnerLoop.open(
        dataset,
        root,
        NAME,
        staging,
        online=online or online_config(),
        gate=GATE,
        keep_candidates=keep_candidates,
    )


def test_each_committed_segment_is_consumed_once_across_a_restart(
    untrained: Path, tmp_path: Path
) -> None:
    parts = chunks(joined_logs(), 40)
    dataset, staging = tmp_path / "joined", tmp_path / "staging"
    root = _root(tmp_path, untrained)
    _commit(dataset, parts[:3])
    _commit(dataset, parts[3:4], consumer="k")
    # A writer's work in progress: not committed, and not even Parquet.
    tmp = dataset / ROWS / DATE / ".j-0000000004-imp.0-4.5.parquet.tmp"
    tmp.write_bytes(b"half a segment")

    loop = _open(dataset, root, staging)
    assert [(f.consumer, f.seq) for f in loop.pending()] == [("j", 1), ("j", 2), ("j", 3), ("k", 1)]
    with pytest.raises(LearnerLoopError, match="another learner"):
        _open(dataset, root, staging)  # one learner per staging directory
    assert loop.step() == 4
    first_rows = sum(len(p) for p in parts[:4])
    assert loop.stats.rows == loop.learner.stats.rows_observed == first_rows
    assert loop.stats.segments == 4
    assert loop.stats.bad_segments == 0
    assert loop.stats.updates > 0
    assert loop.stats.model_version == untrained.name
    assert loop.step() == 0  # nothing new
    cursor = json.loads((staging / CURSOR_FILE).read_text())
    assert cursor["consumed"] == {"j": 3, "k": 1}
    assert cursor["rows"] == first_rows
    loop.close()

    # The joiner commits its uncommitted segment and one more; the learner restarts.
    tmp.unlink()
    _commit(dataset, parts[4:6], first=4)
    with _open(dataset, root, staging) as again:
        assert [(f.consumer, f.seq) for f in again.pending()] == [("j", 4), ("j", 5)]
        assert again.step() == 2
        # Only the new rows reached the restarted learner: none of the first four segments.
        assert again.learner.stats.rows_observed == sum(len(p) for p in parts[4:6])
        assert again.cursor.rows == sum(len(p) for p in parts[:6])
    other = JoinedDataset(str(tmp_path / "elsewhere"))
    other.commit("j", 1, "x", DATE, parts[0].to_table(), {}, "{}")
    with pytest.raises(LearnerLoopError, match="belongs to dataset"):
        _open(tmp_path / "elsewhere", root, staging)


def test_a_segment_the_learner_cannot_use_is_counted_and_skipped(
    untrained: Path, tmp_path: Path
) -> None:
    parts = chunks(joined_logs(), 40)
    dataset = tmp_path / "joined"
    v1 = replace(parts[0], candidate_ids=None)  # no candidate sets: nothing to learn from
    _commit(dataset, [v1, parts[1]])
    with _open(dataset, _root(tmp_path, untrained), tmp_path / "staging") as loop:
        assert loop.step() == 2
        assert loop.stats.bad_segments == 1
        assert loop.learner.stats.rows_observed == len(parts[1])
        assert loop.cursor.consumed == {"j": 2}


def test_a_candidate_the_gate_accepts_is_promoted_under_the_root_and_refusals_are_counted(
    untrained: Path, tmp_path: Path
) -> None:
    logs = joined_logs()
    dataset, staging = tmp_path / "joined", tmp_path / "staging"
    root = _root(tmp_path, untrained)
    _commit(dataset, chunks(logs, 10))
    online = online_config(publish_every_rows=len(logs))  # one candidate, after every row
    registry = CollectorRegistry()
    with _open(dataset, root, staging, online=online) as loop:
        StatsExporter("learner", lambda: loop.stats, registry)
        register_model_version(registry, lambda: loop.stats.model_version)
        assert loop.step() == 10
        stats = loop.stats
        assert (stats.candidates, stats.promotions, stats.refusals) == (1, 1, 0)
        versions = loop.gate.versions()
        assert versions[0] == untrained.name
        assert len(versions) == 2
        assert stats.model_version == versions[-1] != untrained.name
        published = load_artifact(root / f"policy-{NAME}" / versions[-1])
        assert published.metadata["promotion"]["replaces"] == untrained.name
        decision = loop.last_decision
        assert decision is not None
        assert decision.promote
        assert json.loads(decision_path(decision.candidate).read_text())["outcome"] == "promoted"

        # A degraded candidate (value heads negated) is refused, counted and not published.
        bad = publish_negated(decision.candidate, staging)
        refusal = loop.consider(bad)
        assert refusal is not None
        assert not refusal.promote
        assert refusal.serving_version == versions[-1]
        assert (stats.candidates, stats.promotions, stats.refusals) == (2, 1, 1)
        assert stats.last_refusal == "; ".join(refusal.reasons)
        assert loop.gate.versions() == versions
        assert json.loads(decision_path(bad).read_text())["outcome"] == "refused"
        StatsExporter("learner2", lambda: loop.stats, registry).sample()
    assert registry.get_sample_value("recsys_learner2_promotions_total") == 1.0
    assert registry.get_sample_value("recsys_learner2_refusals_total") == 1.0
    info = {"version": versions[-1]}
    assert registry.get_sample_value("recsys_learner_model_info", info) == 1.0


def test_without_held_out_rows_a_candidate_is_refused_not_promoted(
    untrained: Path, tmp_path: Path
) -> None:
    parts = chunks(joined_logs(), 40)
    dataset = tmp_path / "joined"
    _commit(dataset, parts[:2])
    root = _root(tmp_path, untrained)
    online = online_config(heldout_fraction=0.0, publish_every_rows=len(parts[0]))
    with _open(dataset, root, tmp_path / "staging", online=online, keep_candidates=1) as loop:
        assert loop.step() == 2
        assert (loop.stats.candidates, loop.stats.promotions, loop.stats.refusals) == (2, 0, 2)
        assert loop.stats.last_refusal == "no held-out rows yet"
        assert loop.gate.versions() == [untrained.name]
        # Only the newest candidate directory is kept in staging.
        assert (
            len([p for p in (tmp_path / "staging" / f"policy-{NAME}").iterdir() if p.is_dir()]) == 1
        )


def test_opening_refuses_a_missing_dataset_a_missing_checkpoint_and_the_root_as_staging(
    untrained: Path, tmp_path: Path
) -> None:
    root = _root(tmp_path, untrained)
    (tmp_path / "joined").mkdir()
    with pytest.raises(LearnerLoopError, match="no joined dataset"):
        _open(tmp_path / "missing", root, tmp_path / "staging")
    with pytest.raises(LearnerLoopError, match="no version of policy-slateq"):
        _open(tmp_path / "joined", tmp_path / "empty-root", tmp_path / "staging")
    with pytest.raises(LearnerLoopError, match="must not be the artifact root"):
        _open(tmp_path / "joined", root, root)


runner = CliRunner()


def test_the_learner_command_learns_gates_and_resumes_from_its_cursor(
    untrained: Path, tmp_path: Path
) -> None:
    parts = chunks(joined_logs(), 16)[:4]
    rows = sum(len(p) for p in parts)
    dataset, staging = tmp_path / "joined", tmp_path / "staging"
    root = _root(tmp_path, untrained)
    _commit(dataset, parts)
    args = ["learner", "--dataset", str(dataset), "--artifacts", str(root)]
    args += ["--staging", str(staging), "--poll-s", "0.1"]
    result = runner.invoke(app, [*args, "--publish-every-rows", str(rows), "--max-seconds", "0.2"])
    assert result.exit_code == 0, result.output
    assert f"rows {rows} segments 4" in result.output
    assert "candidates 1" in result.output
    decisions = list((staging / f"policy-{NAME}").glob("*.gate.json"))
    assert len(decisions) == 1
    assert json.loads(decisions[0].read_text())["outcome"] in ("promoted", "refused")
    # Restarted on the same staging: everything is consumed, nothing is learned again.
    again = runner.invoke(app, [*args, "--max-seconds", "0.1"])
    assert again.exit_code == 0, again.output
    assert f"{rows} rows consumed before" in again.output
    assert "rows 0 segments 0" in again.output


def test_sigterm_stops_the_learner_command_cleanly(untrained: Path, tmp_path: Path) -> None:
    """SIGTERM (what Kubernetes sends) ends the poll loop: exit code 0, the staging lock
    released, the handlers it replaced restored. Signals are sent until the command returns;
    those before its handler is installed, or after it is removed, reach this test's."""
    (tmp_path / "joined").mkdir()
    root = _root(tmp_path, untrained)
    ours: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        ours.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    done = threading.Event()

    def terminate() -> None:
        while not done.wait(0.3):
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate, daemon=True)
    args = ["--dataset", str(tmp_path / "joined"), "--artifacts", str(root)]
    args += ["--staging", str(tmp_path / "staging"), "--poll-s", "0.1", "--max-seconds", "120"]
    started = time.monotonic()
    try:
        sender.start()
        result = runner.invoke(app, ["learner", *args])
    finally:
        done.set()
        sender.join()
        restored = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 60.0  # the signal, not --max-seconds, ended it
    assert "rows 0 segments 0" in result.output
    assert restored is handler
    with _open(tmp_path / "joined", root, tmp_path / "staging"):
        pass  # the lock was released


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy", "myopic"], "slateq or reinforce"),
        (["--margin", "nan"], "finite"),
        (["--dataset", "/nonexistent/joined"], "no joined dataset"),
        (["--artifacts", "/nonexistent/root"], "no version of policy-slateq"),
    ],
)
def test_the_learner_command_refuses_bad_input_with_exit_code_2(
    untrained: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    root = _root(tmp_path, untrained)
    (tmp_path / "joined").mkdir()
    options = {
        "--dataset": str(tmp_path / "joined"),
        "--artifacts": str(root),
        "--staging": str(tmp_path / "staging"),
    }
    options.update(zip(extra[::2], extra[1::2], strict=True))
    result = runner.invoke(app, ["learner", *(x for kv in options.items() for x in kv)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_corrupt_serving_checkpoint_is_a_usage_error(untrained: Path, tmp_path: Path) -> None:
    root = _root(tmp_path, untrained)
    tensors = root / f"policy-{NAME}" / untrained.name / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    (tmp_path / "joined").mkdir()
    args = ["--dataset", str(tmp_path / "joined"), "--artifacts", str(root)]
    result = runner.invoke(app, ["learner", *args, "--staging", str(tmp_path / "staging")])
    assert result.exit_code == 2, result.output
    assert "cannot learn from" in " ".join(result.output.split())
