"""The Locust profile of realistic clients (``recsys loadtest`` and ``load_tests/``).

Each simulated client is one browser tab of one person, and every task run is exactly one
HTTP request, so ``clients x rate`` is the offered request rate (the runner sizes it):

- **Who.** A client starts as a *known* user (``u0`` .. ``u{N-1}``, the synthetic world's
  ids) or, with probability ``RECSYS_LOAD_NEW_SHARE``, a *new* one (an id the service has
  never seen: a cold start). After a session of about ``RECSYS_LOAD_SESSION_REQUESTS``
  slates it leaves; it comes back as the same person in a new session (a *returning* user)
  or, with the new-user share, hands its tab to someone new.
- **What.** ``POST /recommend`` for a slate; the person clicks one item with probability
  ``RECSYS_LOAD_CLICK_SHARE`` (earlier positions more often) and the next requests report
  it: ``/feedback`` click, then dwell seconds.
- **When.** Each client starts its requests as a Poisson process of rate
  ``RECSYS_LOAD_RATE`` (exponential gaps between request *starts*, drawn from its own
  generator), so all clients together offer a Poisson stream of ``clients x rate`` requests a
  second, as independent people do. Fixed pacing (Locust's ``constant_throughput``) would let
  clients answered by the same server batch fall into lock-step and arrive as bursts. A
  client that falls behind (a slow answer) starts its next request at once but does not
  burst to catch up.
- **Bad clients.** A share ``RECSYS_LOAD_INVALID_SHARE`` of requests is malformed on purpose
  (a zero slate size, a missing user id, an unknown event, a string item id). They must get a
  4xx JSON error naming a field; anything else (a 2xx or a 5xx) is a failure. Failures are
  the *unexpected* errors the SLO counts.

Random choices come from one generator per client seeded from ``RECSYS_LOAD_SEED`` and the
client's index, so a run's request mix is reproducible (not its timing).
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, task

NUM_USERS = int(os.environ.get("RECSYS_LOAD_USERS", "500"))
SLATE_SIZE = int(os.environ.get("RECSYS_LOAD_SLATE_SIZE", "10"))
RATE = float(os.environ.get("RECSYS_LOAD_RATE", "2.0"))
NEW_SHARE = float(os.environ.get("RECSYS_LOAD_NEW_SHARE", "0.2"))
CLICK_SHARE = float(os.environ.get("RECSYS_LOAD_CLICK_SHARE", "0.4"))
INVALID_SHARE = float(os.environ.get("RECSYS_LOAD_INVALID_SHARE", "0.02"))
SESSION_REQUESTS = int(os.environ.get("RECSYS_LOAD_SESSION_REQUESTS", "8"))
SEED = int(os.environ.get("RECSYS_LOAD_SEED", "0"))

#: Malformed requests and the field their error must name.
INVALID_REQUESTS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("/recommend", {"user_id": "u1", "slate_size": 0}, "slate_size"),
    ("/recommend", {"slate_size": 5}, "user_id"),
    (
        "/feedback",
        {"request_id": "r1", "user_id": "u1", "item_id": 1, "event": "poke"},
        "event",
    ),
    (
        "/feedback",
        {"request_id": "r1", "user_id": "u1", "item_id": "seven", "event": "click"},
        "item_id",
    ),
)

_client_index = itertools.count()


class SlateClient(FastHttpUser):  # type: ignore[misc]  # locust is untyped
    """One simulated person behind one tab: slates, clicks, dwell, sessions, bad requests."""

    def wait_time(self) -> float:
        now = time.monotonic()
        scheduled = getattr(self, "next_start", now) + self.rng.expovariate(RATE)
        self.next_start = max(scheduled, now)
        return self.next_start - now

    def on_start(self) -> None:
        self.rng = random.Random(SEED * 1_000_003 + next(_client_index))
        self.user_id = self._someone()
        self.session = 0
        self.slates_left = 0
        self.pending: list[dict[str, Any]] = []

    def _someone(self) -> str:
        if self.rng.random() < NEW_SHARE:
            return f"new-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
        return f"u{self.rng.randrange(NUM_USERS)}"

    @task  # type: ignore[untyped-decorator]
    def one_request(self) -> None:
        if self.rng.random() < INVALID_SHARE:
            self._invalid()
        elif self.pending:
            self._feedback(self.pending.pop(0))
        else:
            self._recommend()

    def _recommend(self) -> None:
        if self.slates_left <= 0:  # a session ends: the same person returns, or someone new
            if self.session and self.rng.random() < NEW_SHARE:
                self.user_id = self._someone()
            self.session += 1
            self.slates_left = max(1, int(self.rng.expovariate(1.0 / SESSION_REQUESTS)))
        self.slates_left -= 1
        payload = {
            "user_id": self.user_id,
            "slate_size": SLATE_SIZE,
            "session_id": f"{self.user_id}-s{self.session}",
        }
        with self.client.post(
            "/recommend", json=payload, name="/recommend", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")
                return
            body = resp.json()
        items = body["items"]
        if not items or self.rng.random() >= CLICK_SHARE:
            return
        # Position bias: slot k is picked with weight 1 / (k + 1).
        weights = [1.0 / (k + 1) for k in range(len(items))]
        item = self.rng.choices(items, weights=weights)[0]["item_id"]
        base = {"request_id": body["request_id"], "user_id": self.user_id, "item_id": item}
        self.pending = [
            {**base, "event": "click"},
            {**base, "event": "dwell", "value": round(self.rng.uniform(5.0, 300.0), 1)},
        ]

    def _feedback(self, payload: dict[str, Any]) -> None:
        with self.client.post(
            "/feedback", json=payload, name="/feedback", catch_response=True
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")

    def _invalid(self) -> None:
        route, payload, field = self.rng.choice(INVALID_REQUESTS)
        with self.client.post(
            route, json=payload, name=f"{route} [invalid]", catch_response=True
        ) as resp:
            status = resp.status_code or 0
            if not 400 <= status < 500:
                resp.failure(f"expected a 4xx naming {field!r}, got {status}")
                return
            try:
                named = [d.get("field") for d in resp.json().get("detail", [])]
            except ValueError:
                resp.failure(f"{status} without a JSON error body")
                return
            if field not in named:
                resp.failure(f"{status} names {named}, expected {field!r}")
            else:
                resp.success()
