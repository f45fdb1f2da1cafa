"""Locust load test for a running recsys service (loopback only, bounded by --run-time).

    recsys serve &                      # or: recsys demo
    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000 \
        --users 20 --spawn-rate 5 --run-time 30s

Simulated clients ask for a slate, then report a click on one item (or a skip) for a share of
slates, the same traffic shape as ``recsys demo``. User ids follow the synthetic world
(``u0`` .. ``u{N-1}``); set RECSYS_LOAD_USERS to the world size if it is not the default.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

NUM_USERS = int(os.environ.get("RECSYS_LOAD_USERS", "500"))
SLATE_SIZE = int(os.environ.get("RECSYS_LOAD_SLATE_SIZE", "10"))
CLICK_SHARE = 0.3


class SlateUser(HttpUser):
    """One simulated client: recommend, then feedback on what it saw."""

    wait_time = between(0.0, 0.05)

    @task
    def recommend_and_feedback(self) -> None:
        user_id = f"u{random.randrange(NUM_USERS)}"
        with self.client.post(
            "/recommend",
            json={"user_id": user_id, "slate_size": SLATE_SIZE},
            name="/recommend",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            body = resp.json()
        items = body["items"]
        clicked = random.random() < CLICK_SHARE
        item = random.choice(items)["item_id"] if clicked else items[0]["item_id"]
        self.client.post(
            "/feedback",
            json={
                "request_id": body["request_id"],
                "user_id": user_id,
                "item_id": item,
                "event": "click" if clicked else "skip",
            },
            name="/feedback",
        )
