"""``/recommend`` in a loop from a background thread: what hot-reload tests watch while a new
version goes live (every status, and the ``model_version`` of every answer)."""

from __future__ import annotations

import threading
import time

import httpx


class RecommendTraffic:
    """Asks ``/recommend`` for ``users`` rotating users named ``<prefix>-<i>`` until stopped,
    ``pause_s`` between requests, recording every status and served version."""

    def __init__(
        self, url: str, prefix: str, users: int, slate_size: int, pause_s: float = 0.0
    ) -> None:
        self.url = url
        self.prefix, self.users, self.slate_size, self.pause_s = prefix, users, slate_size, pause_s
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            i = 0
            while not self._stop.is_set():
                body = {"user_id": f"{self.prefix}-{i % self.users}", "slate_size": self.slate_size}
                resp = http.post("/recommend", json=body)
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.versions.append(resp.json()["model_version"])
                i += 1
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def __enter__(self) -> RecommendTraffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30.0)

    def wait_for(self, version: str, timeout_s: float = 30.0) -> None:
        """Until the newest answer came from ``version`` (an AssertionError after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.versions and self.versions[-1] == version:
                return
            time.sleep(0.1)
        raise AssertionError(f"still serving {self.versions[-1:]} after {timeout_s}s")
