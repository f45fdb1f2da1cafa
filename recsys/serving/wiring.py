"""Composition root for serving: settings in, a ready :class:`Recommender` out.

Each component gets only its slice of the settings. Backends are chosen by URL (store) and by
whether a Kafka bootstrap is configured (stream).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recsys.artifacts import latest_version
from recsys.candidates import RETRIEVAL_ARTIFACT, load_retrieval_artifact
from recsys.config import Settings
from recsys.policy import MyopicPolicy
from recsys.protocols import UserStateStore
from recsys.serving.recommender import Recommender
from recsys.store import build_user_state_store
from recsys.stream import OnlineUpdater, build_event_sink, build_event_source
from recsys.types import FloatArray, UserState


def seed_users(
    store: UserStateStore, user_ids: Sequence[str], embeddings: FloatArray, batch: int = 1000
) -> int:
    """Create state for users the store does not know yet; returns how many were created.

    Existing users keep their history: re-deploying a model must not wipe what they clicked.
    """
    if len(user_ids) != embeddings.shape[0]:
        raise ValueError(f"{len(user_ids)} user ids but {embeddings.shape[0]} embeddings")
    created = 0
    for start in range(0, len(user_ids), batch):
        ids = list(user_ids[start : start + batch])
        existing = store.get_many(ids)
        new = [
            UserState(user_id=uid, embedding=np.asarray(embeddings[start + j], dtype=np.float32))
            for j, (uid, state) in enumerate(zip(ids, existing, strict=True))
            if state is None
        ]
        if new:
            store.put_many(new)
        created += len(new)
    return created


def build_recommender(settings: Settings) -> Recommender:
    """Load the newest retrieval artifact and wire store, stream and policy around it."""
    model, retriever, artifact = load_retrieval_artifact(
        latest_version(settings.artifacts.root, RETRIEVAL_ARTIFACT)
    )
    store = build_user_state_store(settings.store)
    on_close: list[Callable[[], None]] = []
    if settings.store.url.startswith("memory://"):
        # An in-memory store starts empty in every process: give it the trained users.
        seed_users(store, list(artifact.metadata["user_ids"]), model.user_embeddings)
        if not settings.stream.bootstrap:
            # Store and stream both live in this process, so nobody else can close the loop:
            # run the online updater here (the zero-configuration `recsys serve`).
            updater = OnlineUpdater(
                build_event_source(settings.stream), store, settings.stream.consumer_name
            )
            updater.start_in_thread(timeout_s=settings.stream.poll_timeout_s)
            on_close.append(updater.stop)
    return Recommender(
        store=store,
        candidates=retriever,
        policy=MyopicPolicy(settings.policy.temperature, version=artifact.version),
        sink=build_event_sink(settings.stream),
        settings=settings.serving,
        default_k=settings.candidates.default_k,
        model_version=artifact.version,
        seed=settings.policy.seed,
        on_close=on_close,
    )
