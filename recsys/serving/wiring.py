"""Composition root for serving: settings in, a ready :class:`Recommender` out.

Each component gets only its slice of the settings. Backends are chosen by URL (store) and by
whether a Kafka bootstrap is configured (stream). The catalog the event fold runs over comes
from the newest retrieval artifact, so the server and the online updater fold events over the
catalog the models were trained on.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import faiss
import torch
from fastapi import FastAPI

from recsys.artifacts import latest_version
from recsys.candidates import RETRIEVAL_ARTIFACT, LoadedRetrieval, load_retrieval
from recsys.config import PolicySettings, Settings
from recsys.features import EventFold, FeatureSpec
from recsys.pipeline import make_fold
from recsys.protocols import EventSink
from recsys.serving.api import build_api
from recsys.serving.batching import MicroBatcher
from recsys.serving.policies import (
    PolicyRegistry,
    ServedPolicy,
    load_served_policy,
    retrieval_fallback,
)
from recsys.serving.recommender import Recommender
from recsys.serving.routing import Arm, PolicyRouter
from recsys.store import build_user_state_store, build_version_pins
from recsys.stream import OnlineUpdater, build_event_sink, build_event_source
from recsys.stream.buffered import BufferedEventSink
from recsys.types import ArtifactError


def load_newest_retrieval(settings: Settings) -> LoadedRetrieval:
    """The newest retrieval artifact, which must carry the catalog's item table."""
    loaded = load_retrieval(latest_version(settings.artifacts.root, RETRIEVAL_ARTIFACT))
    if loaded.item_table is None:
        raise ArtifactError(
            f"retrieval artifact {loaded.artifact.version} has no item table; retrain it with "
            "`recsys train candidates`"
        )
    return loaded


def build_fold(settings: Settings) -> EventFold:
    """The serving system's event fold: the feature spec over the catalog's topics and ads."""
    table = load_newest_retrieval(settings).item_table
    assert table is not None
    return make_fold(table)


def policy_loader(
    policy: PolicySettings, spec: FeatureSpec, num_items: int, retrieval_version: str
) -> Callable[[Path], ServedPolicy]:
    """What the registry calls on each new ``policy-<name>`` version."""
    return partial(
        load_served_policy,
        name=policy.name,
        spec=spec,
        num_items=num_items,
        retrieval_version=retrieval_version,
        exploration=None if policy.exploration == "policy" else policy.exploration,
        epsilon=policy.epsilon,
        temperature=policy.temperature,
    )


def build_router(
    settings: Settings, spec: FeatureSpec, num_items: int, retrieval_version: str
) -> PolicyRouter:
    """The serving arms (``policy.traffic``, or ``policy.name`` alone), the shadow arm and
    the version pins beside the user states."""
    policy = settings.policy

    def arm(key: str, weight: float = 1.0) -> Arm:
        name = key.partition("@")[0]
        loader = policy_loader(
            policy.model_copy(update={"name": name}), spec, num_items, retrieval_version
        )
        fallback = retrieval_fallback(policy.temperature, retrieval_version)
        return Arm(key, PolicyRegistry(settings.artifacts.root, name, loader, fallback), weight)

    return PolicyRouter(
        [arm(key, weight) for key, weight in policy.arms().items()],
        build_version_pins(settings.store, settings.serving.store_timeout_ms / 1000.0),
        salt=policy.traffic_salt,
        shadow=None if policy.shadow is None else arm(policy.shadow),
    )


def _server_sink(settings: Settings) -> EventSink:
    """The server's event sink: a Kafka producer behind a bounded buffer, so no request ever
    waits for the broker (the in-process log never blocks and needs none)."""
    sink = build_event_sink(settings.stream)
    if settings.stream.bootstrap:
        return BufferedEventSink(sink, settings.stream.publish_buffer)
    return sink


def build_recommender(settings: Settings) -> Recommender:
    """Load the newest retrieval and policy artifacts and wire store, stream and policy.

    torch and FAISS get ``policy.torch_threads`` intra-op threads. Outside a Ray worker
    (which sets ``OMP_NUM_THREADS=1``) FAISS would use every core, and its OpenMP threads spin
    for a while after each search: on the 2-core box a batch of four queries cost 5.7 ms of
    CPU with two threads and 2.2 ms with one, for 1.4 and 2.3 ms of wall time, CPU taken from
    the load's other processes. It also makes plain uvicorn search as a Serve replica does.
    """
    torch.set_num_threads(settings.policy.torch_threads)
    faiss.omp_set_num_threads(settings.policy.torch_threads)
    retrieval = load_newest_retrieval(settings)
    assert retrieval.item_table is not None
    fold = make_fold(retrieval.item_table)
    router = build_router(settings, fold.spec, fold.num_items, retrieval.artifact.version)
    on_close: list[Callable[[], None]] = [router.stop]
    router.refresh()
    router.start(settings.policy.reload_interval_s)
    store = build_user_state_store(settings.store, settings.serving.store_timeout_ms / 1000.0)
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
        candidates=retrieval.retriever,
        policies=router,
        fold=fold,
        sink=_server_sink(settings),
        settings=settings.serving,
        default_k=settings.candidates.default_k,
        default_ads=settings.candidates.num_ads,
        seed=settings.policy.seed,
        on_close=on_close,
    )


def build_server(settings: Settings) -> tuple[Recommender, FastAPI]:
    """What each server process runs: the recommender, warmed for every batch size before it
    takes traffic, and its FastAPI app batched by :class:`MicroBatcher` with the serving
    settings. Everything built here lives as long as the process, so it is frozen out of
    the garbage collector's sweeps (a full collection would pause every request in flight).
    """
    serving = settings.serving
    rec = build_recommender(settings)
    rec.warm_up(serving.max_batch_size)
    gc.freeze()
    batcher = MicroBatcher(rec.recommend_many, serving.max_batch_size, serving.batch_wait_ms / 1e3)
    return rec, build_api(rec, serving, batcher)
