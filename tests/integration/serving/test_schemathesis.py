"""Schemathesis over the running service: its own ``/openapi.json``, every operation, all checks.

A third application (``/st``) joins the session's Ray Serve with an admin key and ``/feedback``
protected (so both the keyed and the open form of a public route are documented and tested),
its own artifact root (the admin routes pin and roll back what it serves), key prefix and
topics. Schemathesis loads the schema over HTTP and runs the same engine as ``st run --checks
all``: examples, coverage, fuzzing and stateful phases, positive and negative data, every
check, a fixed seed, no example database. On top of its checks, every answer is recorded:
no 5xx, and every 4xx is a JSON body naming the field. A few plain requests then pin down the
answers the issue names: an unparseable body, a write without a valid key, an oversized body.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import CHECKS
from schemathesis.engine import events, from_schema
from schemathesis.openapi.checks import RejectedPositiveData

from recsys.config import AuthSettings, Settings
from tests.artifact_copies import corrupt_copy, republish
from tests.conftest import ServingStack, copy_trained, side_app_settings

pytestmark = pytest.mark.integration

ADMIN = "st-admin-key-0123456789"
APP = "recsys-st"
PREFIX = "/st"
#: Requests the run must send, at least (issue 11).
MIN_REQUESTS = 1_000
#: Hypothesis examples per operation and phase; with the coverage and stateful phases this
#: sends about 1,300 requests (the GET routes without parameters have one input each).
MAX_EXAMPLES = 75
#: What ``negative_data_rejection`` takes as a rejection: schemathesis's default list, and 413
#: (documented on every route with a body): a negative case whose array is longer than its
#: maxItems is also longer than the byte limit, and the body limit answers first.
REJECTIONS = [
    *(str(s) for s in (400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429)),
    "5xx",
]


@dataclass(frozen=True)
class StApp:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
def st_app(
    serving_stack: ServingStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StApp]:
    from ray import serve

    from recsys.serving.deployment import deploy_app

    # The session's published versions only (other tests add theirs to the session root),
    # then a newer one (so rollback has a target) and a corrupt one (which pin must refuse).
    root = copy_trained(serving_stack, tmp_path_factory.mktemp("st") / "artifacts")
    models = serving_stack.models
    newer = republish(
        root / "policy-slateq" / Path(models.policies["slateq"].path).name, "zz-newer"
    )
    corrupt_copy(newer, "zzz-corrupt")
    settings = side_app_settings(
        serving_stack,
        "st",
        root,
        serving=serving_stack.settings.serving.model_copy(
            update={
                "auth": AuthSettings(
                    admin_keys=[ADMIN],  # type: ignore[list-item]
                    protect=["feedback"],
                )
            }
        ),
    )
    deploy_app(settings, APP, PREFIX)
    url = f"{serving_stack.url}{PREFIX}"
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            deadline = time.monotonic() + 60.0
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the schemathesis app never got ready"
                time.sleep(0.2)
        yield StApp(url, settings)
    finally:
        serve.delete(APP)


@dataclass
class Answers:
    """Every answer of the run, as the ``after_call`` hook saw it."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: Answers that break the issue's rules (a 5xx, a 4xx without a field), with the request.
    broken: list[str] = field(default_factory=list)
    #: Rejections of schema-valid data the document cannot express, by field (see below).
    semantic: Counter[str] = field(default_factory=Counter)
    #: Names of the checks that ran.
    checks: set[str] = field(default_factory=set)


def _error_fields(content: bytes) -> list[str] | None:
    """The ``detail[*].field`` of an error body, or None when it is not one."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(body.get("error"), str) or not isinstance(detail, list) or not detail:
        return None
    fields = [d["field"] for d in detail if isinstance(d, dict) and isinstance(d.get("field"), str)]
    return fields if len(fields) == len(detail) and all(fields) else None


#: The right 422s to schema-valid data, by operation: (``error``, fields it may name). For
#: ``/recommend``, constraints between fields, on the live policy or on the catalog's
#: categories, which the document does not state (``num_candidates`` at least ``slate_size``
#: and above the policy's ad count; ``ads: only`` beyond the ad load; category ids the catalog
#: lacks, or filters and exclusions that leave fewer candidates than ``slate_size``); the
#: bounds of the settings and the catalog size are in the document
#: (``recsys.serving.api._document_deployment``). For a pin, a version that is on disk but
#: fails its checksum (``zzz-corrupt``, listed as refused by ``GET /admin/policies``): not
#: serving it is the point of the artifact checks. Any other 422, a ``validation_error`` or
#: another field still fails ``positive_data_acceptance``.
SEMANTIC_422 = {
    "POST /recommend": ("invalid_request", frozenset({"num_candidates", "filters", "slate_size"})),
    "POST /admin/policies/{arm}/pin": ("admin_error", frozenset({"version"})),
}


def _run_schemathesis(url: str, settings: Settings) -> tuple[Answers, list[str], float]:
    """Run the engine of ``st run --checks all`` over the schema at ``url``; every answer is
    recorded in :class:`Answers` and every failed check returned with its reproducer."""
    max_body = settings.serving.max_body_bytes
    config = schemathesis.Config.from_dict(
        {
            "seed": 20261130,
            "workers": 1,
            "cache": {"enabled": False},  # nothing carried between runs
            "auth": {"openapi": {"ApiKey": {"api_key": ADMIN}}},
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
        }
    )
    config.projects.get_default().checks.update(included_check_names=["all"])
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    answers = Answers()

    @schema.hook
    def after_call(ctx: Any, case: Any, response: Any) -> None:
        label, status = case.operation.label, response.status_code
        answers.requests[label] += 1
        answers.statuses[(label, status)] += 1
        where = f"{label} -> {status}: {response.content[:300]!r}\n  {case.as_curl_command()}"
        if status >= 500:
            answers.broken.append(f"5xx: {where}")
        elif status >= 400 and _error_fields(response.content) is None:
            answers.broken.append(f"4xx without JSON detail[*].field: {where}")

    @schema.hook
    def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
        """Drop the right answers to schema-valid data above (every other failure stays)."""
        if not isinstance(failure, RejectedPositiveData):
            return True
        if response.status_code == 413:
            # The body limit is in bytes, the document's maxItems in items: an array of
            # ``max_exclude`` ids is valid, yet longer than the ``max_body_bytes`` taken here.
            return len(response.request.body or b"") <= max_body
        fields = _error_fields(response.content)
        expected = SEMANTIC_422.get(case.operation.label)
        if response.status_code != 422 or fields is None or expected is None:
            return True
        error, allowed = expected
        if json.loads(response.content)["error"] == error and set(fields) <= allowed:
            answers.semantic.update(f"{case.operation.label}: {f}" for f in fields)
            return False
        return True

    failures: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    start = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                answers.checks.update(check.name for check in checks)
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (event.recorder.label, check.name, failure.title)
                    if key not in seen:
                        seen.add(key)
                        failures.append(
                            f"[{event.phase.value}] {key[0]}: {check.name}: {failure.title}\n"
                            f"  {failure.message}\n  {check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            failures.append(f"error in {event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            failures.extend(f"after run: {f.title}: {f.message}" for f in event.failures)
    return answers, failures, time.monotonic() - start


def test_schemathesis_all_checks_over_every_operation(st_app: StApp) -> None:
    answers, failures, elapsed = _run_schemathesis(st_app.url, st_app.settings)
    total = sum(answers.requests.values())
    print(f"schemathesis: {total} requests in {elapsed:.1f} s: {dict(answers.requests)}")
    print(f"statuses: {sorted(answers.statuses.items())}")
    print(f"schema-valid but semantically rejected, by field: {dict(answers.semantic)}")
    assert not failures, "\n\n".join(failures)
    assert not answers.broken, "\n".join(answers.broken[:20])
    assert total >= MIN_REQUESTS, answers.requests
    assert answers.checks >= set(CHECKS.get_all_names()), answers.checks  # --checks all
    operations = {
        "POST /recommend", "POST /feedback", "GET /healthz", "GET /readyz", "GET /metrics",
        "GET /admin/policies", "POST /admin/policies/{arm}/pin",
        "DELETE /admin/policies/{arm}/pin", "POST /admin/policies/{arm}/rollback",
    }  # fmt: skip
    assert set(answers.requests) == operations
    # The admin routes were reached with the key (2xx) and refused without one (401).
    for op in ("GET /admin/policies", "POST /admin/policies/{arm}/pin"):
        assert answers.statuses[(op, 200)] > 0, op
        assert answers.statuses[(op, 401)] > 0, op
    assert answers.statuses[("POST /recommend", 200)] > 0
    assert answers.statuses[("POST /feedback", 202)] > 0


@pytest.fixture
def http(st_app: StApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=st_app.url, timeout=30.0) as client:
        yield client


def _assert_error(resp: httpx.Response, status: int, field_name: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert field_name in (_error_fields(resp.content) or []), resp.text


@pytest.mark.parametrize(
    "content",
    [b'{"user_id": "u0", "slate', b'{"user_id": "\xff\xfe"}', b"[" * 5_000 + b"]" * 5_000],
    ids=["truncated", "invalid-utf8", "deep-nesting"],
)
def test_an_unparseable_body_is_422_naming_body(http: httpx.Client, content: bytes) -> None:
    headers = {"content-type": "application/json"}
    _assert_error(http.post("/recommend", content=content, headers=headers), 422, "body")
    keyed = {**headers, "X-API-Key": ADMIN}
    _assert_error(http.post("/feedback", content=content, headers=keyed), 422, "body")
    pin = http.post("/admin/policies/slateq/pin", content=content, headers=keyed)
    _assert_error(pin, 422, "body")


def _pins(http: httpx.Client) -> dict[str, str | None]:
    resp = http.get("/admin/policies", headers={"X-API-Key": ADMIN})
    assert resp.status_code == 200, resp.text
    return {arm["arm"]: arm["pinned"] for arm in resp.json()["arms"]}


def test_a_write_without_a_valid_key_is_401_or_403(http: httpx.Client) -> None:
    before = _pins(http)
    pin = {"version": "zz-newer"}
    _assert_error(http.post("/admin/policies/slateq/pin", json=pin), 401, "X-API-Key")
    wrong = {"X-API-Key": "not-the-admin-key-000"}
    _assert_error(
        http.post("/admin/policies/slateq/pin", json=pin, headers=wrong), 403, "X-API-Key"
    )
    _assert_error(http.delete("/admin/policies/slateq/pin", headers=wrong), 403, "X-API-Key")
    _assert_error(http.post("/admin/policies/slateq/rollback"), 401, "X-API-Key")
    event = {"request_id": "r1", "user_id": "u1", "item_id": 1, "event": "click"}
    _assert_error(http.post("/feedback", json=event), 401, "X-API-Key")
    _assert_error(http.post("/feedback", json=event, headers=wrong), 403, "X-API-Key")
    assert _pins(http) == before  # nothing was written


def test_an_oversized_body_is_413(st_app: StApp, http: httpx.Client) -> None:
    limit = st_app.settings.serving.max_body_bytes
    huge = {"user_id": "u0", "slate_size": 3, "exclude": list(range(limit))}
    _assert_error(http.post("/recommend", json=huge), 413, "body")
    keyed = {"X-API-Key": ADMIN}
    big_pin = {"version": "v" * (limit + 1)}
    _assert_error(http.post("/admin/policies/slateq/pin", json=big_pin, headers=keyed), 413, "body")
    ok = http.post("/recommend", json={"user_id": "u0", "slate_size": 3})
    assert ok.status_code == 200, ok.text
