"""Session fixtures that start the real services on free loopback ports.

Integration tests get a real ``redis-server`` and a real Kafka-protocol broker (tansu); they
never mock Redis or Kafka. Each fixture stops exactly the process it started.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from recsys.config import (
    ArtifactSettings,
    CandidateSettings,
    CatalogSettings,
    PolicySettings,
    ServingSettings,
    Settings,
    StoreSettings,
    StreamSettings,
)
from recsys.embedded import EmbeddedBroker, EmbeddedRedis, free_listen_port
from recsys.pipeline import SkeletonModels, demo_config, train_skeleton
from recsys.policy.training.config import PolicyTrainConfig
from recsys.stream import ensure_topics

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


@dataclass(frozen=True)
class ServingStack:
    """A running service: Ray Serve over HTTP, real Redis and broker, trained skeleton models."""

    url: str
    settings: Settings
    models: SkeletonModels


def small_settings(root: Path, **updates: Any) -> Settings:
    """Settings for a small, fast world (tests must stay quick on 2 cores)."""
    base = Settings(
        catalog=CatalogSettings(num_items=400, num_users=60, num_topics=8, seed=7),
        candidates=CandidateSettings(dim=16, epochs=3, default_k=50),
        artifacts=ArtifactSettings(root=root),
    )
    return base.model_copy(update=updates)


def small_skeleton_config(settings: Settings) -> PolicyTrainConfig:
    """The demo's training run shrunk to a few seconds (enough for a servable policy)."""
    return replace(
        demo_config(settings),
        log_users=400,
        log_max_steps=30,
        users=128,
        iterations=2,
        updates_per_iteration=2,
        pretrain_updates=5,
        batch_size=128,
        hidden=(16,),
    )


def copy_trained(stack: ServingStack, root: Path, skip: tuple[str, ...] = ()) -> Path:
    """The session's trained retriever and policies (but those named in ``skip``) as the only
    versions under ``root``: other tests publish newer and corrupt versions into the session's
    own directory, so a copy of it would depend on test order."""
    models = stack.models
    arts = [models.retrieval, *(a for n, a in models.policies.items() if n not in skip)]
    for art in arts:
        src = Path(art.path)
        shutil.copytree(src, root / src.parent.name / src.name)
    return root


def side_app_settings(stack: ServingStack, name: str, root: Path, **updates: Any) -> Settings:
    """Settings for another app on the session's Serve: the stack's, with its own artifact
    root, Redis key prefix and topics (``<name>-impressions``, ``<name>-feedback``, created
    here), plus ``updates``."""
    base = stack.settings
    stream = base.stream.model_copy(
        update={"impressions_topic": f"{name}-impressions", "feedback_topic": f"{name}-feedback"}
    )
    ensure_topics(stream.bootstrap, [stream.impressions_topic, stream.feedback_topic])
    return base.model_copy(
        update={
            "artifacts": base.artifacts.model_copy(update={"root": root}),
            "store": StoreSettings(url=base.store.url, key_prefix=name),
            "stream": stream,
            **updates,
        }
    )


@pytest.fixture(scope="session")
def serving_stack(
    redis_server: EmbeddedRedis,
    kafka_broker: EmbeddedBroker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServingStack]:
    """Ray Serve answering on a free loopback port, wired to the real Redis and broker."""
    from recsys.serving.deployment import start_serving, stop_serving

    root = tmp_path_factory.mktemp("artifacts")
    settings = small_settings(
        root,
        store=StoreSettings(url=redis_server.url, key_prefix="serving"),
        stream=StreamSettings(
            bootstrap=kafka_broker.bootstrap,
            impressions_topic="e2e-impressions",
            feedback_topic="e2e-feedback",
        ),
        serving=ServingSettings(
            port=free_listen_port(), max_slate_size=50, max_body_bytes=16 * 1024
        ),
        policy=PolicySettings(reload_interval_s=0.5),
    )
    models = train_skeleton(settings, config=small_skeleton_config(settings))
    ensure_topics(
        kafka_broker.bootstrap, [settings.stream.impressions_topic, settings.stream.feedback_topic]
    )
    url = start_serving(settings, num_cpus=2)
    try:
        yield ServingStack(url=url, settings=settings, models=models)
    finally:
        stop_serving()
