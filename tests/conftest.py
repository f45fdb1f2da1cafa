"""Session fixtures that start the real services on free loopback ports.

Integration tests get a real ``redis-server`` and a real Kafka-protocol broker (tansu); they
never mock Redis or Kafka. Each fixture stops exactly the process it started.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from recsys.embedded import EmbeddedBroker, EmbeddedRedis

_names = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server for the whole test session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """A real tansu Kafka-protocol broker (in-memory storage) for the whole test session."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def unique_name() -> str:
    """A name no other test in this session uses (for Redis key prefixes and Kafka topics)."""
    return f"t{next(_names)}"
