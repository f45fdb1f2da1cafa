"""Redis paused and Redis dead, over real HTTP with a real ``redis-server``.

The service here is the same FastAPI app and ``Recommender`` behind plain uvicorn
(``recsys.serving.plain``), on the models the session's serving stack trained, with its own
Redis so the test can pause and kill it. What is checked is the request path's behaviour:
answers keep coming (flagged ``degraded``) and come back normal by themselves; liveness stays
up while readiness reports the store.
"""

from __future__ import annotations

import os
import signal
import time

import httpx

from recsys.config import ServingSettings, StoreSettings, StreamSettings
from recsys.embedded import EmbeddedRedis, free_listen_port
from recsys.serving.plain import plain_server
from tests.conftest import ServingStack


def _ask(client: httpx.Client, user: int) -> tuple[float, int, bool | None, float]:
    start = time.monotonic()
    resp = client.post("/recommend", json={"user_id": f"u{user}", "slate_size": 5})
    took = time.monotonic() - start
    degraded = resp.json().get("degraded") if resp.status_code == 200 else None
    return start, resp.status_code, degraded, took


def test_a_paused_then_dead_redis_degrades_answers_and_never_hangs(
    serving_stack: ServingStack,
) -> None:
    with EmbeddedRedis() as redis:
        settings = serving_stack.settings.model_copy(
            update={
                "store": StoreSettings(url=redis.url, key_prefix="faults"),
                "stream": StreamSettings(),
                "serving": ServingSettings(port=free_listen_port(), store_retry_s=0.5),
            }
        )
        with plain_server(settings) as url, httpx.Client(base_url=url, timeout=5.0) as client:
            answers = []
            pause_at = resume_at = 0.0
            t0 = time.monotonic()
            i = 0
            while time.monotonic() - t0 < 7.0:
                now = time.monotonic() - t0
                if not pause_at and now >= 1.5:
                    os.kill(redis.pid, signal.SIGSTOP)
                    pause_at = time.monotonic()
                if pause_at and not resume_at and now >= 4.0:
                    os.kill(redis.pid, signal.SIGCONT)
                    resume_at = time.monotonic()
                answers.append(_ask(client, i % 40))
                i += 1
                time.sleep(0.02)
            assert all(status == 200 for _, status, _, _ in answers)
            assert max(took for *_, took in answers) < 1.0
            before = [d for t, _, d, _ in answers if t < pause_at]
            during = [d for t, _, d, _ in answers if pause_at + 0.1 < t < resume_at]
            settled = [d for t, _, d, _ in answers if t > resume_at + 2.0]
            assert before
            assert not any(before)
            assert during
            assert all(during)
            assert settled
            assert not any(settled)

            redis.stop()  # dead for good
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not_ready"
            dead = [_ask(client, u) for u in range(5)]
            assert all(status == 200 and degraded for _, status, degraded, _ in dead)
            metrics = client.get("/metrics").text
            assert "recsys_degraded_answers_total" in metrics
