"""The fast lane answers exactly as the FastAPI routes do, for any body.

Two apps over the same recording fake are built, one with the lane and one without; every
generated request (valid, subtly invalid, unparseable, other content types) must get the same
status, headers and JSON body from both, and reach the handlers with the same arguments, types
included (``5`` and ``5.0`` differ here). Valid plain bodies must actually take the lane.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, cast

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import AuthSettings, ServingSettings
from recsys.serving.api import build_api
from recsys.serving.fastlane import FastLane
from recsys.serving.recommender import Recommendation, Recommender, RecommenderMetrics
from recsys.stream.events import EventPublishError
from recsys.types import InvalidRequestError, Slate, UnknownUserError

NUM_ITEMS = 1000


class Recording:
    """The slice of :class:`Recommender` the routes use, logging what reaches it.

    Chosen inputs raise what the real one can raise: a slate size over 50 is refused (as an
    :class:`InvalidRequestError` result), user ``ghost`` is unknown, user ``full`` finds the
    event buffer full, user ``boom`` fails unexpectedly.
    """

    def __init__(self) -> None:
        self.metrics = RecommenderMetrics()
        self.num_items = NUM_ITEMS
        self.calls: list[str] = []

    async def batched(self, query: Any) -> Recommendation | InvalidRequestError:
        self.calls.append(repr(query))
        if query.user_id == "boom":
            raise RuntimeError("boom")
        if query.user_id == "ghost":
            raise UnknownUserError("no such user: ghost")
        if query.slate_size > 50:
            return InvalidRequestError("slate_size", "more than this deployment serves")
        n = query.slate_size
        slate = Slate(
            np.arange(n), np.arange(n), np.linspace(0, 1, n, dtype=np.float32), np.full(n, 0.5),
            "slateq", "v1",
        )  # fmt: skip
        return Recommendation(f"r-{query.user_id}-{n}", "slateq@v1", slate)

    def feedback(self, *args: Any) -> None:
        self.calls.append(repr(args))
        _, user_id, item_id = args[:3]
        if item_id >= NUM_ITEMS:
            raise InvalidRequestError("item_id", f"unknown item id {item_id}")
        if user_id == "full":
            raise EventPublishError("buffer full")
        if user_id == "boom":
            raise RuntimeError("boom")


def _app(fast_lane: bool, serving: ServingSettings | None = None) -> tuple[FastAPI, Recording]:
    fake = Recording()
    app = build_api(cast(Recommender, fake), serving, fake.batched, fast_lane=fast_lane)
    return app, fake


def _lane(app: FastAPI) -> FastLane:
    node: Any = app.middleware_stack
    while node is not None and not isinstance(node, FastLane):
        node = getattr(node, "app", None)
    assert node is not None, "the app has no fast lane"
    return cast(FastLane, node)


def _answer(client: TestClient, path: str, body: bytes, content_type: str | None) -> Any:
    headers = {} if content_type is None else {"content-type": content_type}
    resp = client.post(path, content=body, headers=headers)
    kept = {k: resp.headers.get(k) for k in ("content-type", "retry-after", "content-length")}
    try:
        payload = resp.json()
    except ValueError:
        payload = resp.text
    return resp.status_code, kept, payload


Both = Callable[..., Any]


@pytest.fixture(scope="module")
def both() -> Iterator[Both]:
    """``both(path, body, content_type)``: the answers (and handler calls) of the app with the
    lane and of the app without it, and how many requests the lane took. Both apps run behind
    TestClients built once per module: a client per example would dominate the run."""
    with ExitStack() as stack:
        sides = []
        for fast in (True, False):
            app, fake = _app(fast)
            client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            sides.append((fake, client))
            if fast:
                lane = _lane(app)

        def answer(path: str, body: bytes, content_type: str | None = "application/json") -> Any:
            before = lane.answered
            out = []
            for fake, client in sides:
                fake.calls.clear()
                out.append((_answer(client, path, body, content_type), list(fake.calls)))
            return out[0], out[1], lane.answered - before

        yield answer


_ABSENT = object()
_INTS = st.sampled_from([1, 10, 0, -1, 50, 51, 1000, 1001, 100_000, 100_001, 5.0, 5.5, True])
_WEIRD = st.sampled_from([None, "5", [], {}, "x"])
_IDS = st.sampled_from(["u1", "u1\n", "", "a" * 256, "a" * 257, "ü", "u 1", "u:1@x", "ghost"])
_ITEMS = st.sampled_from([0, 7, 999, 1000, -1, 2**62, 2**62 + 1, 3.0, 3.5, "3", True])


def _field(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(_ABSENT), values, _WEIRD)


def _body(fields: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in fields.items() if v is not _ABSENT}).encode()


recommend_bodies = st.builds(
    lambda *fields: _body(
        dict(zip(("user_id", "slate_size", "num_candidates", "exclude", "session_id", "extra"),
                 fields, strict=True))
    ),
    _field(_IDS),
    _field(_INTS),
    _field(_INTS),
    _field(st.lists(_ITEMS, max_size=3)),
    _field(_IDS),
    st.sampled_from([_ABSENT, _ABSENT, _ABSENT, {"ads": "only"}, {"a": 1}]),
)  # fmt: skip

feedback_bodies = st.builds(
    lambda *fields: _body(
        dict(zip(("request_id", "user_id", "item_id", "event", "value", "ts"), fields, strict=True))
    ),
    _field(st.sampled_from(["r1", "r 1", "r@1", "r" * 129])),
    _field(st.sampled_from(["u1", "full", "boom", "u1\n"])),
    _field(_ITEMS),
    _field(st.sampled_from(["click", "dwell", "CLICK", "share"])),
    _field(st.sampled_from([12.5, 5, -1e9, 1e9 + 1, 1e400, True, 0])),
    _field(st.sampled_from([0.0, 1e11, 1e11 + 1, -0.5, 1_700_000_000, 17e8])),
)


_TRICKY: dict[str, list[Any]] = {
    "user_id": ["u1\n", "", "a" * 256, "a" * 257, "ü", "u 1", "u:1@x", "ghost", "boom", "full"],
    "request_id": ["r1\n", "", "r" * 128, "r" * 129, "r@1", "r 1"],
    "session_id": ["s1\n", "", "s" * 128, "s" * 129, "s@1", "s 1"],
    "slate_size": [0, 1, 50, 51, 1000, 1001, -1, 5.0, 5.5, True, "5", 2**64],
    "num_candidates": [0, 1, 100_000, 100_001, 5.0, False, "5", 2**64],
    "exclude": [[0, 2**62], [2**62 + 1], [-1], [3.0], [True], ["3"], [[1]], (), 5, {}],
    "item_id": [0, 999, 1000, -1, 2**62, 2**62 + 1, 3.0, 3.5, "3", True],
    "event": ["click", "dwell", "like", "conversion", "skip", "CLICK", "share", 1],
    "value": [5, 0, -1e9, 1e9, -1e9 - 1, 1e9 + 1, 12.5, 1e400, True, "1"],
    "ts": [0, 0.0, 1e11, 1e11 + 1, -0.5, 1_700_000_000, 17e8, False, "1"],
}
_BASE = {
    "/recommend": {"user_id": "u1", "slate_size": 5, "num_candidates": 100, "exclude": [3],
                   "session_id": "s-1"},
    "/feedback": {"request_id": "r1", "user_id": "u1", "item_id": 7, "event": "dwell",
                  "value": 30.5, "ts": 1.7e9},
}  # fmt: skip
_ONE_CHANGE = [
    (path, field, value)
    for path, base in _BASE.items()
    for field in base
    for value in [*_TRICKY[field], None, _ABSENT]
]


@pytest.mark.parametrize(("path", "field", "value"), _ONE_CHANGE)
def test_one_changed_field_answers_as_the_route(
    both: Both, path: str, field: str, value: Any
) -> None:
    """A valid body with one field changed (or dropped, or null) gets the route's answer."""
    body = _body({**_BASE[path], field: value})
    with_lane, without, _ = both(path, body)
    assert with_lane == without


@settings(max_examples=150, deadline=None, derandomize=True)
@given(recommend_bodies)
def test_recommend_answers_match_the_route(both: Both, body: bytes) -> None:
    with_lane, without, _ = both("/recommend", body)
    assert with_lane == without


@settings(max_examples=150, deadline=None, derandomize=True)
@given(feedback_bodies)
def test_feedback_answers_match_the_route(both: Both, body: bytes) -> None:
    with_lane, without, _ = both("/feedback", body)
    assert with_lane == without


_CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "APPLICATION/JSON",
    "application/vnd.x+json",
    None,
]
_RAW_BODIES = [
    b'{"user_id":"u1","user_id":"u2"}',  # a duplicate key: the last one wins in both
    b'{"user_id":"u1"}\n',
    b'\xef\xbb\xbf{"user_id":"u1"}',  # a UTF-8 byte-order mark
    b'{"user_id":"u1"',
    b"[]",
    b"",
    b'{"user_id":"\xff"}',  # invalid UTF-8
    b'{"user_id":"u1","slate_size":1e1}',
    b'{"user_id":"u1","slate_size":NaN}',
    b"[" * 5000 + b"]" * 5000,  # deeper than the parsers go
]


@pytest.mark.parametrize("content_type", _CONTENT_TYPES)
@pytest.mark.parametrize("body", _RAW_BODIES)
def test_raw_bodies_and_content_types_match_the_route(
    both: Both, content_type: str | None, body: bytes
) -> None:
    with_lane, without, _ = both("/recommend", body, content_type)
    assert with_lane == without


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/recommend", {"user_id": "u1", "slate_size": 5, "session_id": "s-1"}),
        ("/recommend", {"user_id": "u1", "exclude": [1, 2], "num_candidates": 100}),
        ("/feedback", {"request_id": "r1", "user_id": "u1", "item_id": 7, "event": "click"}),
        (
            "/feedback",
            {
                "request_id": "r1",
                "user_id": "u1",
                "item_id": 7,
                "event": "dwell",
                "value": 30,
                "ts": 1.7e9,
            },
        ),
    ],
)
def test_valid_plain_bodies_take_the_lane(both: Both, path: str, body: dict[str, Any]) -> None:
    with_lane, without, answered = both(path, json.dumps(body).encode())
    assert answered == 1
    assert with_lane == without
    assert with_lane[0][0] in (200, 202)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/recommend", {"user_id": "u1", "filters": {"ads": "only"}}),
        ("/recommend", {"user_id": "u1", "slate_size": 5.0}),
        ("/feedback", {"request_id": "r1", "user_id": "u1", "item_id": 7.0, "event": "click"}),
    ],
)
def test_other_valid_bodies_take_the_route(both: Both, path: str, body: dict[str, Any]) -> None:
    with_lane, without, answered = both(path, json.dumps(body).encode())
    assert answered == 0
    assert with_lane == without
    assert with_lane[0][0] in (200, 202)


def test_the_lane_counts_in_the_request_metrics() -> None:
    app, fake = _app(True)
    with TestClient(app) as client:
        ok = client.post("/recommend", json={"user_id": "u1"})
        refused = client.post("/recommend", json={"user_id": "u1", "slate_size": 60})
    assert (ok.status_code, refused.status_code) == (200, 422)
    requests = fake.metrics.requests
    assert requests.labels("recommend", "ok")._value.get() == 1
    assert requests.labels("recommend", "error")._value.get() == 1


def test_the_lane_sits_behind_the_key_guard_and_the_body_limit() -> None:
    serving = ServingSettings(
        auth=AuthSettings(client_keys=["k" * 32], protect=["recommend"]), max_body_bytes=2048
    )
    app, fake = _app(True, serving)
    with TestClient(app) as client:
        keyless = client.post("/recommend", json={"user_id": "u1"})
        huge = client.post(
            "/recommend",
            json={"user_id": "u1", "exclude": list(range(1000))},
            headers={"x-api-key": "k" * 32},
        )
        keyed = client.post("/recommend", json={"user_id": "u1"}, headers={"x-api-key": "k" * 32})
    assert (keyless.status_code, huge.status_code, keyed.status_code) == (401, 413, 200)
    assert len(fake.calls) == 1
