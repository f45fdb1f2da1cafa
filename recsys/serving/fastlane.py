"""A fast lane for the two hot routes: plain valid ``/recommend`` and ``/feedback`` bodies.

Why: in a Serve replica one event loop parses every request and runs every batch, so the
loop's time per request caps the replica's throughput and sets its queueing delay. FastAPI's
routing, dependency solving and pydantic validation were a fifth of that loop's time at
300 req/s on the 2-core box: a ``/recommend`` answered from a precomputed slate took 280 µs
through the FastAPI app and 70 µs when the body was decoded with msgspec (docs/serving.md).

The rule that keeps the lane honest: it *accepts* only bodies that the wire models
(:mod:`recsys.serving.schemas`) accept with the same values, and answers them exactly as the
routes do (the same handler functions, metrics and error mapping). Anything else goes to
FastAPI unchanged, its body replayed: an unknown or unusual field (``filters`` and
``context`` always take the full route), ``5.0`` for an integer, a parse error, a content type
other than JSON. So every error answer and the OpenAPI document stay FastAPI's, and a test
checks on generated bodies that the app answers the same with and without the lane.

The lane sits inside the API-key guard, the CORS middleware and the body-size limit, so a
request it answers has passed them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.serving.auth import route_path
from recsys.serving.recommender import RecommendQuery
from recsys.types import EventType

# The wire models' limits (recsys.serving.schemas), written for msgspec. ``\Z`` where
# pydantic writes ``$``: pydantic's regex engine ends ``$`` at the end of the text, while
# Python's ``$`` (msgspec's engine) also matches before a final newline.
_UserId = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:@-]+\Z")]
_RequestId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+\Z")]
_SessionId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+\Z")]
_ItemId = Annotated[int, Meta(ge=0, le=2**62)]


class RecommendBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The common shape of a ``/recommend`` body: no ``filters``, no ``context``."""

    user_id: _UserId
    slate_size: Annotated[int, Meta(ge=1, le=1000)] = 10
    num_candidates: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    exclude: Annotated[tuple[_ItemId, ...], Meta(max_length=100_000)] = ()
    session_id: _SessionId | None = None

    def query(self) -> RecommendQuery:
        return RecommendQuery(
            self.user_id, self.slate_size, self.num_candidates, self.exclude, None, self.session_id
        )


class FeedbackBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ``/feedback`` body (every field of the wire model)."""

    request_id: _RequestId
    user_id: _UserId
    item_id: _ItemId
    event: EventType
    value: Annotated[float, Meta(ge=-1e9, le=1e9)] | None = None
    ts: Annotated[float, Meta(ge=0, le=1e11)] | None = None


RecommendAnswer = Callable[[RecommendQuery], Awaitable[Response]]
FeedbackAnswer = Callable[[FeedbackBody], Awaitable[Response]]
ErrorAnswer = Callable[[Exception], Response | None]
_Answer = Callable[[Any], Awaitable[Response]]

_RECOMMEND_DECODER = msgspec.json.Decoder(RecommendBody)
_FEEDBACK_DECODER = msgspec.json.Decoder(FeedbackBody)


class BodyTooLargeError(Exception):
    """The request body grew past the limit :func:`read_body` was given."""


async def read_body(receive: Receive, max_bytes: int | None = None) -> bytes | None:
    """The whole request body, or ``None`` when the client went away first.

    With ``max_bytes``, raises :class:`BodyTooLargeError` as soon as the bytes streamed so far
    exceed it, so a huge body is never held in full.
    """
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLargeError(f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` as one message, then defers to ``receive`` (which
    then reports the client's disconnect): for an app behind a middleware that read it."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def _json_content(scope: Scope) -> bool:
    """True when the request says its body is JSON (``application/json``, any parameters)."""
    for name, value in scope.get("headers") or []:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return bool(media == b"application/json")
    return False


class FastLane:
    """Pure-ASGI middleware: answers valid plain ``POST /recommend`` and ``POST /feedback``
    bodies with ``recommend`` and ``feedback`` (the routes' own handlers), and passes every
    other request to ``app``. ``errors`` maps an exception from a handler to the answer the
    app's exception handlers give it (``None``: not a domain error, re-raised so the app's
    server-error handler answers it). ``answered`` counts the requests the lane took."""

    def __init__(
        self,
        app: ASGIApp,
        recommend: RecommendAnswer,
        feedback: FeedbackAnswer,
        errors: ErrorAnswer,
    ) -> None:
        self.app = app
        self._errors = errors
        self._routes: dict[str, tuple[msgspec.json.Decoder[Any], _Answer]] = {
            "/recommend": (_RECOMMEND_DECODER, lambda body: recommend(body.query())),
            "/feedback": (_FEEDBACK_DECODER, feedback),
        }
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        route = self._routes.get(route_path(scope))
        if route is None or not _json_content(scope):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:  # the client went away
            return
        decoder, answer = route
        try:
            parsed = decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            await self.app(scope, replay(body, receive), send)
            return
        self.answered += 1
        try:
            response = await answer(parsed)
        except Exception as exc:
            mapped = self._errors(exc)
            if mapped is None:
                raise
            response = mapped
        await response(scope, receive, send)
