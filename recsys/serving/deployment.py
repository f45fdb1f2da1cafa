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
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve

from recsys.config import ArtifactSettings, ServingSettings, Settings, settings_json
from recsys.embedded import free_listen_port
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
            return build_api(self._recommender, serving, self.recommend_batch)
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
    ).bind(settings_json(settings))
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
      quick (a cluster behind a load balancer keeps Serve's 30 s); and HAProxy retrying a
      request on another replica when its replica closed the connection without answering
      (``empty-response``), not only when it refused it: a replica that dies mid-request
      otherwise fails every request it held (docs/reliability.md). And no per-request
      metrics from HAProxy (``RAY_SERVE_HAPROXY_METRICS_ENABLED=0``): HAProxy writes a log line
      per request to a socket that the Python HAProxyManager actor parses, which took about a
      twentieth of a core at 150 req/s on the 2-core box, for Serve's HTTP counters that
      ``/metrics`` already has (``recsys_requests_total`` by route and outcome). A
      cluster that wants them in Ray's dashboard keeps the default (the Helm chart does).
    """
    env = {"RAY_worker_niceness": "0"}
    if serving.throughput_optimized:
        stats_port = free_listen_port()
        metrics_port = free_listen_port()
        while metrics_port == stats_port:
            metrics_port = free_listen_port()
        env.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            RAY_SERVE_ENABLE_HA_PROXY="1",
            RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1",
            # HAProxy's own stats and metrics listeners default to fixed ports (8404, 9101)
            # on every interface; two local services would collide there. HAProxy binds them
            # only when Serve starts, so they come from outside the ephemeral range.
            RAY_SERVE_HAPROXY_STATS_PORT=str(stats_port),
            RAY_SERVE_HAPROXY_METRICS_PORT=str(metrics_port),
            # Serve retries on connect failures only, as a replayed non-idempotent request
            # could run twice. Here a replayed /recommend is a fresh slate, and a replayed
            # /feedback is what any client does after a 5xx.
            RAY_SERVE_HAPROXY_RETRY_ON="conn-failure empty-response",
            RAY_SERVE_HAPROXY_METRICS_ENABLED="0",
        )
    return env


def effective_ray_env(serving: ServingSettings) -> dict[str, str]:
    """:func:`ray_serve_env` as a Ray that recsys starts gets it: names already in the
    environment keep their value."""
    return {k: os.environ.get(k, v) for k, v in ray_serve_env(serving).items()}


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
                # Without an address, ray.init joins a cluster that `ray start` left on the
                # machine (/tmp/ray/ray_current_cluster) and then refuses num_cpus: a Ray
                # that recsys starts is always its own.
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 2,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    host, port = settings.serving.host, settings.serving.port
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    deploy_app(settings)
    return f"http://{host}:{port}"


def deploy_app(settings: Settings, name: str = APP_NAME, route_prefix: str = "/") -> None:
    """Deploy (or redeploy) the recsys application ``name`` at ``route_prefix`` on the
    running Serve: several configurations (say, an A/B app beside the main one) can share
    one Serve instance. Blocks until its replicas are ready."""
    serve.run(bind_application(settings), name=name, route_prefix=route_prefix, blocking=False)


def stop_serving(shutdown_ray: bool = True) -> None:
    """Tear down Serve (and the local Ray we started), waiting for Ray's processes to exit.

    Safe to call whatever :func:`start_serving` got to: with ``shutdown_ray`` it also reaps a
    local Ray whose ``ray.init`` was interrupted half-way, and removes the files Serve's
    HAProxy kept for that Ray's node (:func:`haproxy_dirs`), which Ray leaves behind on every
    start. ``ray.shutdown`` resets SIGTERM to the default action, so a caller with its own
    SIGTERM handler re-installs it afterwards.
    """
    node_id = ""
    if ray.is_initialized():
        if shutdown_ray:
            node_id = ray.get_runtime_context().get_node_id()
        serve.shutdown()
        # Serve's client, the handle serve.run returned and their actor handles can sit in
        # reference cycles; freed by a later GC after ray.shutdown, their finalizers would
        # call into the dead core worker, and Ray then ends the whole process with exit code
        # 1 ("the core worker has already been shutdown"). Free them while Ray still runs.
        gc.collect()
    if shutdown_ray:
        ray.shutdown(wait_for_processes=True)
        for directory in haproxy_dirs(node_id):
            shutil.rmtree(directory, ignore_errors=True)


def haproxy_dirs(node_id: str) -> list[Path]:
    """The directories Serve's HAProxy writes for Ray node ``node_id``: its config, admin
    socket, server state and error pages, one directory per node under
    ``/tmp/haproxy-serve`` unless the ``RAY_SERVE_HAPROXY_*`` paths say otherwise.

    Ray never removes them, so each local start left one behind (about 400 on the
    development box). Empty when ``node_id`` is not a node id (nothing outside the node's
    own directory can be named) or this Ray no longer has those settings.
    """
    if not re.fullmatch(r"[0-9a-f]{16,128}", node_id):
        return []
    try:
        from ray.serve._private import constants as serve_constants

        bases = {
            serve_constants.RAY_SERVE_HAPROXY_SERVER_STATE_BASE,
            *(
                os.path.dirname(path)
                for path in (
                    serve_constants.RAY_SERVE_HAPROXY_SOCKET_PATH,
                    serve_constants.RAY_SERVE_HAPROXY_CONFIG_FILE_LOC,
                    serve_constants.RAY_SERVE_HAPROXY_SERVER_STATE_FILE,
                    serve_constants.RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH,
                )
            ),
        }
    except (ImportError, AttributeError):
        return []
    return sorted(Path(base) / node_id for base in bases if base)


def _ingress_name() -> str:
    deployment: Any = RecsysIngress  # a serve.Deployment at runtime
    return str(deployment.name)


def running_replicas(app: str = APP_NAME) -> int:
    """Replicas of ``app``'s ingress that Serve reports RUNNING (0 when it has none)."""
    status = serve.status().applications.get(app)
    if status is None:
        return 0
    deployment = status.deployments.get(_ingress_name())
    if deployment is None:
        return 0
    return sum(n for state, n in deployment.replica_states.items() if state == "RUNNING")


def kill_replica(app: str = APP_NAME) -> str:
    """Kill one live replica actor of ``app``'s ingress, as a crash would (the worker
    process exits at once; Serve does not restart the actor but starts a replacement).
    Returns the killed actor's name."""
    # Replica actors are named ``SERVE_REPLICA::<app>#<deployment>#<id>`` in Serve's namespace.
    prefix = f"SERVE_REPLICA::{app}#{_ingress_name()}#"
    names: list[str] = sorted(
        str(a["name"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(prefix)
    )
    if not names:
        raise RuntimeError(f"no live replica of {app!r} to kill")
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]
