"""FastAPI application over a :class:`Recommender`: routes, error mapping and a body-size guard.

Used as-is inside the Ray Serve replica (see :mod:`recsys.serving.deployment`) and directly in
unit tests. Every bad input gets a 4xx JSON body ``{"error": ..., "detail": [{"field",
"message"}]}`` naming what was wrong; nothing the client sends can produce a 500.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from recsys.config import ServingSettings
from recsys.serving.auth import HEADER, ApiKeyGuard, ApiKeys
from recsys.serving.batching import MicroBatcher
from recsys.serving.fastlane import BodyTooLargeError, FastLane, FeedbackBody, read_body, replay
from recsys.serving.recommender import Recommendation, Recommender, RecommendQuery
from recsys.serving.routing import AdminError
from recsys.serving.schemas import (
    ArmKey,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    FiltersIn,
    PinRequest,
    PoliciesOut,
    RecommendRequest,
    RecommendResponse,
)
from recsys.stream.events import EventPublishError
from recsys.types import CandidateFilters, InvalidRequestError, UnknownUserError

log = logging.getLogger(__name__)


def error_body(error: str, field: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": error, "detail": [{"field": field, "message": message}]}


class BodySizeLimit:
    """Pure-ASGI guard that rejects bodies over ``max_bytes`` with 413 before parsing.

    It checks ``Content-Length`` first and also counts streamed (chunked) bytes, so a huge body
    is never buffered in full nor handed to the JSON parser.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, message: str) -> None:
        body = json.dumps(error_body("body_too_large", "body", message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in {"POST", "PUT", "PATCH"}:
            await self.app(scope, receive, send)
            return
        limit = f"request body exceeds {self.max_bytes} bytes"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._reject(send, "invalid Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await self._reject(send, limit)
                return
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLargeError:
            await self._reject(send, limit)
            return
        if body is not None:
            await self.app(scope, replay(body, receive), send)


def _filters(body: FiltersIn | None) -> CandidateFilters | None:
    """Wire filters to the domain type (its own validation raises InvalidRequestError)."""
    if body is None:
        return None
    categories = None if body.categories is None else tuple(body.categories)
    return CandidateFilters(categories=categories, ads=body.ads)


def _detail_of(error: Mapping[str, Any]) -> dict[str, str]:
    """One pydantic error as ``{"field": "exclude.3", "message": ...}``."""
    loc = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        # FastAPI puts the character position in ``loc``; it is not a field.
        where = f" at character {loc[-1]}" if len(loc) > 1 else ""
        return {"field": "body", "message": f"{message}{where}"}
    parts = [str(p) for p in loc if p != "body"]
    return {"field": ".".join(parts) or "body", "message": message}


BatchedRecommend = Callable[[RecommendQuery], Awaitable[Recommendation | InvalidRequestError]]


def _slate_body(result: Recommendation) -> dict[str, Any]:
    """The ``RecommendResponse`` of ``result`` as plain JSON-ready data."""
    slate = result.slate
    return {
        "request_id": result.request_id,
        "model_version": result.model_version,
        "policy": slate.policy,
        "degraded": result.degraded,
        "cold_start": result.cold_start,
        "items": [
            {"item_id": i, "position": p, "score": s, "propensity": q}
            for i, p, s, q in zip(
                slate.item_ids.tolist(), slate.positions.tolist(), slate.scores.tolist(),
                slate.propensities.tolist(), strict=True,
            )
        ],
    }  # fmt: skip


def domain_error(exc: Exception) -> JSONResponse | None:
    """The answer to a domain error a handler raised (``None`` for any other exception)."""
    if isinstance(exc, InvalidRequestError):
        return JSONResponse(error_body("invalid_request", exc.field, exc.message), 422)
    if isinstance(exc, UnknownUserError):
        return JSONResponse(error_body("unknown_user", "user_id", str(exc)), 404)
    if isinstance(exc, EventPublishError):
        return JSONResponse(
            error_body("unavailable", "body", f"cannot take the event now: {exc}"),
            503,
            headers={"Retry-After": "1"},
        )
    return None


def _json_response(body: dict[str, Any], status: int) -> Response:
    """Encode an answer directly: the routes' ``response_model`` documents the schema, and
    returning a ``Response`` skips FastAPI re-validating what this module just built (a
    measurable share of a request's CPU at hundreds of requests a second)."""
    try:
        content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # a non-finite score: JSON has no NaN, so write null as pydantic does
        content = json.dumps(_finite(body), separators=(",", ":")).encode()
    return Response(content, status, media_type="application/json")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


#: Name of the API-key security scheme in the OpenAPI document.
API_KEY_SCHEME = "ApiKey"


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    """The ``Allow`` value of a 405: every method routed at the request's path.

    Starlette's own 405 lists only the methods of the first route that matched the path, so
    ``/admin/policies/{arm}/pin`` (``POST`` and ``DELETE`` are two routes) advertised one.
    """
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _bound(prop: dict[str, Any], **limits: int) -> None:
    """Tighten the JSON Schema of one property (or the non-null branch of an optional one, or
    the items of an array with ``items=``) to ``limits``, never loosening what is there."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "null":
            continue
        for key, value in limits.items():
            if key == "items":
                _bound(branch["items"], maximum=value)
            else:
                old = branch.get(key)
                branch[key] = value if old is None else min(old, value)


def _document_deployment(
    schema: dict[str, Any], serving: ServingSettings, num_items: int
) -> dict[str, Any]:
    """Write what this deployment accepts into its OpenAPI document.

    The wire models hold only the hard limits (:mod:`recsys.serving.schemas`); the limits set by
    the settings and the catalog (slate size, candidates and item ids) would otherwise be
    documented looser than the service answers, so a request valid by the document got a 422.
    What JSON Schema cannot say (``num_candidates`` at least ``slate_size``, an ad load, filters
    that leave too few candidates) stays a 422 ``invalid_request`` naming the field. Also
    declares the ``X-API-Key`` scheme the guard enforces (the routes that need it say so).
    """
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": HEADER}
    }
    models = components.get("schemas", {})
    last_item = max(num_items - 1, 0)
    if "RecommendRequest" in models:
        props = models["RecommendRequest"]["properties"]
        _bound(props["slate_size"], maximum=serving.max_slate_size)
        _bound(props["num_candidates"], maximum=num_items)
        _bound(props["exclude"], maxItems=serving.max_exclude, items=last_item)
    if "FeedbackRequest" in models:
        _bound(models["FeedbackRequest"]["properties"]["item_id"], maximum=last_item)
    return schema


def build_api(
    recommender: Recommender,
    serving: ServingSettings | None = None,
    batched: BatchedRecommend | None = None,
    *,
    fast_lane: bool = True,
) -> FastAPI:
    """Build the HTTP app around one recommender (no globals: each call is independent).

    ``serving`` gives the body limit, API keys and CORS origins (defaults: 64 KiB, admin API
    off, no keys on ``/recommend`` and ``/feedback``, CORS off). ``batched`` answers one query
    as part of a batch (:meth:`Recommender.recommend_many`): a :class:`MicroBatcher`
    (default, and what the Serve replica uses unless ``serving.batcher`` picks its
    ``@serve.batch`` method). ``fast_lane`` puts :class:`FastLane` in front of the two hot
    routes (off only to check that it answers as the routes do).
    """
    serving = serving or ServingSettings()
    keys = ApiKeys.from_settings(serving.auth)
    if batched is None:
        batched = MicroBatcher(recommender.recommend_many)
    app = FastAPI(
        title="recsys",
        version="0.1.0",
        description="RL slate recommendations with exact propensities, and feedback intake.",
    )
    app.state.recommender = recommender
    rec = recommender  # routes close over it: no per-request dependency resolution
    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse, "description": "The body is too large"},
        422: {"model": ErrorResponse, "description": "A field is invalid or the body unparseable"},
    }
    key_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": f"No API key in the {HEADER} header"},
        403: {"model": ErrorResponse, "description": "The API key is not valid here"},
    }
    protected = set(serving.auth.protect)
    errors_for = {
        route: errors | (key_errors if route in protected else {})
        for route in ("recommend", "feedback")
    }
    # Documentation only: ApiKeyGuard enforces the key before routing, at no per-request cost.
    needs_key: dict[str, Any] = {"security": [{API_KEY_SCHEME: []}]}
    key_docs = {route: needs_key if route in protected else None for route in errors_for}
    admin_errors = (
        errors
        | key_errors
        | {
            409: {"model": ErrorResponse, "description": "No such version to roll back to"},
            503: {"model": ErrorResponse, "description": "The pin could not be recorded"},
        }
    )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [_detail_of(e) for e in exc.errors()]
        return JSONResponse({"error": "validation_error", "detail": detail}, status_code=422)

    async def _domain(_: Request, exc: Exception) -> JSONResponse:
        answer = domain_error(exc)
        if answer is None:  # registered for the domain errors only
            raise exc
        return answer

    for domain_exc in (InvalidRequestError, UnknownUserError, EventPublishError):
        app.add_exception_handler(domain_exc, _domain)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI raises 400 when it cannot decode the body (invalid UTF-8, nesting deeper
        # than the JSON parser allows): like any other unusable body, a 422 naming ``body``.
        # Everything else here is about the route.
        if exc.status_code == 400:
            return JSONResponse(
                error_body("validation_error", "body", f"cannot parse the body: {exc.detail}"),
                422,
            )
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(app, request.scope)}
        return JSONResponse(
            error_body("http_error", "path", str(exc.detail)), exc.status_code, headers
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(error_body("internal_error", "server", "internal error"), 500)

    @app.exception_handler(AdminError)
    async def _admin(_: Request, exc: AdminError) -> JSONResponse:
        return JSONResponse(error_body("admin_error", exc.field, exc.message), exc.status)

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses=errors_for["recommend"],
        openapi_extra=key_docs["recommend"],
    )
    async def recommend(body: RecommendRequest) -> Response:
        # Async on purpose: the request only waits here for the batch it joins; no thread
        # hop per request (docs/serving.md says why the batch runs on the event loop).
        return await answer_recommend(
            RecommendQuery(
                body.user_id,
                body.slate_size,
                body.num_candidates,
                tuple(body.exclude),
                _filters(body.filters),
                body.session_id,
            )
        )

    async def answer_recommend(query: RecommendQuery) -> Response:
        """The ``/recommend`` answer (the route's and the fast lane's)."""
        outcome = "error"
        try:
            result = await batched(query)
            if isinstance(result, InvalidRequestError):
                raise result
            outcome = "ok"
        finally:
            rec.metrics.requests.labels("recommend", outcome).inc()
        return _json_response(_slate_body(result), 200)

    @app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackResponse,
        responses={
            **errors_for["feedback"],
            503: {"model": ErrorResponse, "description": "Events are backing up; retry later"},
        },
        openapi_extra=key_docs["feedback"],
    )
    async def feedback(body: FeedbackRequest) -> Response:
        # Async: publishing only appends to the sink's bounded buffer, never waits on the
        # broker, so no thread hop is needed.
        return await answer_feedback(body)

    async def answer_feedback(body: FeedbackRequest | FeedbackBody) -> Response:
        """The ``/feedback`` answer (the route's and the fast lane's)."""
        outcome = "error"
        try:
            rec.feedback(
                body.request_id, body.user_id, body.item_id, body.event, body.value, body.ts
            )
            outcome = "ok"
        finally:
            rec.metrics.requests.labels("feedback", outcome).inc()
        return _json_response({"accepted": True, "request_id": body.request_id}, 202)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={
            200: {"description": "Ready: every arm's policy is loaded and the store answers"},
            503: {"description": "Not ready: a policy is not loaded yet or the store is down"},
        },
    )
    def readyz() -> JSONResponse:
        reason = rec.not_ready()
        if reason is None:
            return JSONResponse({"status": "ready", "model_version": rec.model_version})
        return JSONResponse({"status": "not_ready", "reason": reason}, 503)

    # Admin: every route needs an admin key (ApiKeyGuard). Loading a version reads and
    # checks artifacts, so these run in the threadpool, off the event loop.
    @app.get(
        "/admin/policies",
        response_model=PoliciesOut,
        responses=admin_errors,
        openapi_extra=needs_key,
    )
    def list_policies() -> dict[str, Any]:
        return rec.policies.describe()

    @app.post(
        "/admin/policies/{arm}/pin",
        response_model=PoliciesOut,
        responses=admin_errors,
        openapi_extra=needs_key,
    )
    def pin_policy(arm: ArmKey, body: PinRequest) -> dict[str, Any]:
        return rec.policies.pin(arm, body.version)

    @app.delete(
        "/admin/policies/{arm}/pin",
        response_model=PoliciesOut,
        responses=admin_errors,
        openapi_extra=needs_key,
    )
    def unpin_policy(arm: ArmKey) -> dict[str, Any]:
        return rec.policies.unpin(arm)

    @app.post(
        "/admin/policies/{arm}/rollback",
        response_model=PoliciesOut,
        responses=admin_errors,
        openapi_extra=needs_key,
    )
    def rollback_policy(arm: ArmKey) -> dict[str, Any]:
        return rec.policies.rollback(arm)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition format"}},
    )
    def metrics() -> Response:
        rec.refresh_metrics()
        return Response(generate_latest(rec.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document it builds; the limits are written into it each time
        # (idempotent), so a rebuild after a route change keeps them.
        return _document_deployment(default_openapi(), serving, rec.num_items)

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's way to extend the document

    if fast_lane:
        app.add_middleware(
            FastLane, recommend=answer_recommend, feedback=answer_feedback, errors=domain_error
        )
    app.add_middleware(BodySizeLimit, max_bytes=serving.max_body_bytes)
    if serving.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=serving.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["content-type", HEADER.lower()],
        )
    # Outermost: a request without a valid key is answered before its body is read.
    app.add_middleware(ApiKeyGuard, keys=keys, protect=serving.auth.protect)
    return app
