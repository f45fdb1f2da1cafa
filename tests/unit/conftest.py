"""Unit tests run without a cluster: any attempt to start Ray fails loudly. Shared fixtures
that are expensive to build live here, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from recsys.pipeline import SimulatorSetup


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*_: object, **__: object) -> NoReturn:
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small nets run fastest (and deterministically) on one thread, and many threads on a
    shared CI runner can be slower by orders of magnitude; restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifact root of the small simulator setup and its published policies. Shared by the
    whole session: read from it, never publish into it (copy what a test needs to change)."""
    return tmp_path_factory.mktemp("small-policies")


@pytest.fixture(scope="session")
def small_setup(small_root: Path) -> SimulatorSetup:
    """The small simulator setup (``tests.unit.policy.configs.build_small_setup``; ~3 s, once
    per session), its retrieval artifact under ``small_root``. Treat it as read-only."""
    from tests.unit.policy.configs import build_small_setup

    return build_small_setup(small_root)


@pytest.fixture(scope="session")
def small_policies(small_root: Path, small_setup: SimulatorSetup) -> dict[str, Path]:
    """Published SlateQ and REINFORCE artifacts of the small simulator setup, by algo
    (``tests.unit.policy.configs.publish_small_policies``; once per session)."""
    from tests.unit.policy.configs import publish_small_policies

    return publish_small_policies(small_root, small_setup)
