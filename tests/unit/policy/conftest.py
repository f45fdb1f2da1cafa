"""Shared fixtures of the policy unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every policy test runs its small nets on one torch thread."""
