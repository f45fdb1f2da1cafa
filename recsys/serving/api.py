"""FastAPI application over a :class:`Recommender`: routes, error mapping and a body-size guard.

Used as-is inside the Ray Serve replica (see :mod:`recsys.serving.deployment`) and directly in
unit tests. Every bad input gets a 4xx JSON body ``{"error": ..., "detail": [{"field",
"message"}]}`` naming what was wrong; nothing the client sends can produce a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.serving.recommender import Recommender
from recsys.serving.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    FiltersIn,
    RecommendRequest,
    RecommendResponse,
    SlateItemOut,
)
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
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, limit)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _filters(body: FiltersIn | None) -> CandidateFilters | None:
    """Wire filters to the domain type (its own validation raises InvalidRequestError)."""
    if body is None:
        return None
    categories = None if body.categories is None else tuple(body.categories)
    return CandidateFilters(categories=categories, ads=body.ads)


def _get_recommender(request: Request) -> Recommender:
    rec: Recommender = request.app.state.recommender
    return rec


# Module-level so FastAPI can resolve the (postponed) annotation of each route's parameter.
Rec = Annotated[Recommender, Depends(_get_recommender)]


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


def build_api(recommender: Recommender, max_body_bytes: int = 64 * 1024) -> FastAPI:
    """Build the HTTP app around one recommender (no globals: each call is independent)."""
    app = FastAPI(
        title="recsys",
        version="0.1.0",
        description="RL slate recommendations with exact propensities, and feedback intake.",
    )
    app.state.recommender = recommender
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "The body cannot be parsed"},
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse, "description": "The body is too large"},
        422: {"model": ErrorResponse},
    }

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [_detail_of(e) for e in exc.errors()]
        return JSONResponse({"error": "validation_error", "detail": detail}, status_code=422)

    @app.exception_handler(InvalidRequestError)
    async def _invalid(_: Request, exc: InvalidRequestError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", exc.field, exc.message), 422)

    @app.exception_handler(UnknownUserError)
    async def _unknown_user(_: Request, exc: UnknownUserError) -> JSONResponse:
        return JSONResponse(error_body("unknown_user", "user_id", str(exc)), 404)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI raises 400 when it cannot decode the body (invalid UTF-8, nesting deeper
        # than the JSON parser allows); everything else here is about the route.
        field = "body" if exc.status_code == 400 else "path"
        return JSONResponse(
            error_body("http_error", field, str(exc.detail)), exc.status_code, exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(error_body("internal_error", "server", "internal error"), 500)

    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    def recommend(body: RecommendRequest, rec: Rec) -> RecommendResponse:
        outcome = "error"
        try:
            result = rec.recommend(
                body.user_id,
                body.slate_size,
                body.num_candidates,
                body.exclude,
                _filters(body.filters),
                body.session_id,
            )
            outcome = "ok"
        finally:
            rec.metrics.requests.labels("recommend", outcome).inc()
        slate = result.slate
        return RecommendResponse(
            request_id=result.request_id,
            model_version=result.model_version,
            policy=slate.policy,
            items=[
                SlateItemOut(item_id=int(i), position=int(p), score=float(s), propensity=float(q))
                for i, p, s, q in zip(
                    slate.item_ids, slate.positions, slate.scores, slate.propensities, strict=True
                )
            ],
        )

    @app.post("/feedback", status_code=202, response_model=FeedbackResponse, responses=errors)
    def feedback(body: FeedbackRequest, rec: Rec) -> FeedbackResponse:
        outcome = "error"
        try:
            rec.feedback(
                body.request_id, body.user_id, body.item_id, body.event, body.value, body.ts
            )
            outcome = "ok"
        finally:
            rec.metrics.requests.labels("feedback", outcome).inc()
        return FeedbackResponse(accepted=True, request_id=body.request_id)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={
            200: {"description": "Ready: the user-state store answers"},
            503: {"description": "Not ready: the user-state store is unreachable"},
        },
    )
    def readyz(rec: Rec) -> JSONResponse:
        if rec.ready():
            return JSONResponse({"status": "ready", "model_version": rec.model_version})
        return JSONResponse({"status": "not_ready", "reason": "user-state store unreachable"}, 503)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition format"}},
    )
    def metrics(rec: Rec) -> Response:
        rec.refresh_metrics()
        return Response(generate_latest(rec.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app
