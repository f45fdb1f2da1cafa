"""Ray Serve shell: the only module that imports ``ray.serve``.

The deployment builds a :class:`Recommender` from settings in its constructor and hands Serve
the FastAPI app from :func:`recsys.serving.api.build_api`; all logic lives in plain classes.
Settings travel to replicas as JSON so every replica builds the same thing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve

from recsys.config import ArtifactSettings, ServingSettings, Settings
from recsys.embedded import free_port
from recsys.serving.api import build_api
from recsys.serving.recommender import Recommendation, RecommendQuery
from recsys.serving.wiring import build_server
from recsys.types import InvalidRequestError

APP_NAME = "recsys"
log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class RecsysIngress:
    """One replica: build the recommender once, then serve its FastAPI app.

    Concurrent ``/recommend`` requests are batched, so they share one store round trip, one
    retrieval and one policy forward. By default the batcher is :class:`MicroBatcher`,
    which closes a batch when the previous one is done. ``@serve.batch``
    (:meth:`recommend_batch`, ``serving.batcher = "serve"``) closes a batch after its wait
    even while the previous one still computes, and the closed batch then waits for its turn:
    under CPU-bound load its batches stayed at one or two requests with 32 clients in flight
    (docs/serving.md), so it does not pay here.
    """

    def __init__(self, settings_json: str) -> None:
        self._settings = Settings.model_validate_json(settings_json)
        self._recommender, self._app = build_server(self._settings)
        serving = self._settings.serving
        self.recommend_batch.set_max_batch_size(serving.max_batch_size)
        self.recommend_batch.set_batch_wait_timeout_s(serving.batch_wait_ms / 1000.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0005)  # type: ignore[untyped-decorator]
    async def recommend_batch(
        self, queries: list[RecommendQuery]
    ) -> list[Recommendation | InvalidRequestError]:
        return await asyncio.to_thread(self._recommender.recommend_many, queries)

    def __serve_build_asgi_app__(self) -> FastAPI:
        serving = self._settings.serving
        if serving.batcher == "serve":
            return build_api(self._recommender, serving.max_body_bytes, self.recommend_batch)
        return self._app

    def check_health(self) -> None:
        """Liveness only: the replica answers (degraded) while the store is down, and a
        restart would not bring the store back, so a store outage must not restart it in a
        loop. Readiness (``/readyz``) is what reports the store."""

    def __del__(self) -> None:
        rec = getattr(self, "_recommender", None)
        if rec is not None:
            rec.close()


def bind_application(settings: Settings) -> serve.Application:
    """The ingress bound to ``settings``: what ``serve.run`` or a Serve config deploys.

    The artifact root is made absolute first, because replicas may start in another working
    directory than the process that read the settings.
    """
    settings = settings.model_copy(
        update={"artifacts": ArtifactSettings(root=settings.artifacts.root.resolve())}
    )
    deployment: Any = RecsysIngress  # a serve.Deployment at runtime; mypy sees the class
    app: serve.Application = deployment.options(
        num_replicas=settings.serving.replicas,
        max_ongoing_requests=settings.serving.max_ongoing_requests,
        # Per-request access lines cost the replica CPU on every request; the service's
        # own Prometheus metrics count requests and latencies instead.
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    ).bind(settings.model_dump_json())
    return app


def ray_serve_env(serving: ServingSettings) -> dict[str, str]:
    """Environment for a Ray that recsys starts itself (a cluster's own settings win).

    - ``RAY_worker_niceness=0``: Ray runs workers at nice 15 by default, so on a shared
      machine the replica yields the CPU to everything else (load generators, Redis, the
      updater) and queues requests while it waits.
    - with ``throughput_optimized``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` (replica-side HTTP
      server, user code on the replica's event loop, buffered request logs) and the HAProxy
      ingress (``RAY_SERVE_ENABLE_HA_PROXY``, a C proxy in front of the replicas' own HTTP
      servers instead of the Python proxy actor); a short drain period so a local stop is
      quick (a cluster behind a load balancer keeps Serve's 30 s).
    """
    env = {"RAY_worker_niceness": "0"}
    if serving.throughput_optimized:
        env.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            RAY_SERVE_ENABLE_HA_PROXY="1",
            RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1",
            # HAProxy's own stats and metrics listeners default to fixed ports (8404, 9101)
            # on every interface; two local services would collide there.
            RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
            RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
        )
    return env


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` (except names already set: the operator's wins) while Ray starts.

    The Ray processes started inside inherit them; they are removed afterwards so that
    processes this one starts later (a second local service) pick their own.
    """
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def start_serving(settings: Settings, *, num_cpus: int | None = None) -> str:
    """Start (or join) a local Ray, start Serve on the configured loopback port, deploy.

    Returns the base URL. Blocks until the application is ready (``serve.run`` waits for
    replicas to finish ``__init__``).
    """
    if not ray.is_initialized():
        with _environment(ray_serve_env(settings.serving)):
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 2,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    host, port = settings.serving.host, settings.serving.port
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(bind_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop_serving(shutdown_ray: bool = True) -> None:
    """Tear down Serve (and the local Ray we started), waiting for Ray's processes to exit.

    Safe to call whatever :func:`start_serving` got to: with ``shutdown_ray`` it also reaps a
    local Ray whose ``ray.init`` was interrupted half-way. ``ray.shutdown`` resets SIGTERM to the
    default action, so a caller with its own SIGTERM handler re-installs it afterwards.
    """
    if ray.is_initialized():
        serve.shutdown()
        # Serve's client, the handle serve.run returned and their actor handles can sit in
        # reference cycles; freed by a later GC after ray.shutdown, their finalizers would
        # call into the dead core worker, and Ray then ends the whole process with exit code
        # 1 ("the core worker has already been shutdown"). Free them while Ray still runs.
        gc.collect()
    if shutdown_ray:
        ray.shutdown(wait_for_processes=True)
