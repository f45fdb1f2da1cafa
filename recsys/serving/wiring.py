"""Composition root for serving: settings in, a ready :class:`Recommender` out.

Each component gets only its slice of the settings. Backends are chosen by URL (store) and by
whether a Kafka bootstrap is configured (stream).
"""

from __future__ import annotations

from collections.abc import Callable

from recsys.artifacts import latest_version
from recsys.candidates import RETRIEVAL_ARTIFACT, load_retrieval_artifact
from recsys.config import Settings
from recsys.data.synthetic import make_world
from recsys.features import EventFold, FeatureSpec
from recsys.policy import MyopicPolicy
from recsys.serving.recommender import Recommender
from recsys.store import build_user_state_store
from recsys.stream import OnlineUpdater, build_event_sink, build_event_source


def build_fold(settings: Settings) -> EventFold:
    """The serving system's event fold: the feature spec over the catalog's topics and ads."""
    world = make_world(settings.catalog)
    spec = FeatureSpec(num_topics=world.num_topics)
    return EventFold(spec, world.item_topics, world.item_is_ad)


def build_recommender(settings: Settings) -> Recommender:
    """Load the newest retrieval artifact and wire store, stream and policy around it."""
    _model, retriever, artifact = load_retrieval_artifact(
        latest_version(settings.artifacts.root, RETRIEVAL_ARTIFACT)
    )
    store = build_user_state_store(settings.store)
    fold = build_fold(settings)
    on_close: list[Callable[[], None]] = []
    if settings.store.url.startswith("memory://") and not settings.stream.bootstrap:
        # Store and stream both live in this process, so nobody else can close the loop:
        # run the online updater here (the zero-configuration `recsys serve`).
        updater = OnlineUpdater(
            build_event_source(settings.stream), store, settings.stream.consumer_name, fold
        )
        updater.start_in_thread(timeout_s=settings.stream.poll_timeout_s)
        on_close.append(updater.stop)
    return Recommender(
        store=store,
        candidates=retriever,
        policy=MyopicPolicy(settings.policy.temperature, version=artifact.version),
        fold=fold,
        sink=build_event_sink(settings.stream),
        settings=settings.serving,
        default_k=settings.candidates.default_k,
        model_version=artifact.version,
        seed=settings.policy.seed,
        on_close=on_close,
    )
