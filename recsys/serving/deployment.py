"""Ray Serve shell: the only module that imports ``ray.serve``.

The deployment builds a :class:`Recommender` from settings in its constructor and hands Serve
the FastAPI app from :func:`recsys.serving.api.build_api`; all logic lives in plain classes.
Settings travel to replicas as JSON so every replica builds the same thing.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve

from recsys.config import ArtifactSettings, Settings
from recsys.serving.api import build_api
from recsys.serving.wiring import build_recommender

APP_NAME = "recsys"
log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress()
class RecsysIngress:
    """One replica: build the recommender once, then serve its FastAPI app."""

    def __init__(self, settings_json: str) -> None:
        self._settings = Settings.model_validate_json(settings_json)
        self._recommender = build_recommender(self._settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self._recommender, self._settings.serving.max_body_bytes)

    def check_health(self) -> None:
        """Serve restarts a replica whose store connection is gone for good."""
        if not self._recommender.ready():
            raise RuntimeError("user-state store unreachable")

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
    app: serve.Application = deployment.options(num_replicas=settings.serving.replicas).bind(
        settings.model_dump_json()
    )
    return app


def start_serving(settings: Settings, *, num_cpus: int | None = None) -> str:
    """Start (or join) a local Ray, start Serve on the configured loopback port, deploy.

    Returns the base URL. Blocks until the application is ready (``serve.run`` waits for
    replicas to finish ``__init__``).
    """
    if not ray.is_initialized():
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
