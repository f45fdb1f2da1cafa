"""Client of the admin API (``/admin/policies``) for the CLI: list arms, pin, unpin and roll
back versions on a running service. The key goes in the ``X-API-Key`` header and nowhere
else: it is never printed nor put in an error message."""

from __future__ import annotations

from typing import Any

import httpx

from recsys.serving.auth import HEADER
from recsys.types import RecsysError


class AdminClientError(RecsysError):
    """The service refused the call or could not be reached; ``status`` is the HTTP status
    (0 when there was no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """Calls one service's admin API with one key."""

    def __init__(self, http: httpx.Client, api_key: str) -> None:
        self._http = http
        self._headers = {HEADER: api_key}

    @classmethod
    def connect(cls, url: str, api_key: str, timeout_s: float = 30.0) -> AdminClient:
        return cls(httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s), api_key)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self._http.request(method, path, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise AdminClientError(f"cannot reach {self._http.base_url}: {exc}") from None
        try:
            payload: Any = resp.json()
        except ValueError:
            payload = None
        if resp.status_code >= 400:
            detail = payload.get("detail") if isinstance(payload, dict) else None
            message = (
                "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail)
                if isinstance(detail, list)
                else resp.text[:200]
            )
            raise AdminClientError(f"HTTP {resp.status_code}: {message}", resp.status_code)
        if not isinstance(payload, dict):
            raise AdminClientError(f"unexpected answer from {self._http.base_url}{path}")
        return payload

    def list(self) -> dict[str, Any]:
        return self._call("GET", "/admin/policies")

    def pin(self, arm: str, version: str) -> dict[str, Any]:
        return self._call("POST", f"/admin/policies/{arm}/pin", {"version": version})

    def unpin(self, arm: str) -> dict[str, Any]:
        return self._call("DELETE", f"/admin/policies/{arm}/pin")

    def rollback(self, arm: str) -> dict[str, Any]:
        return self._call("POST", f"/admin/policies/{arm}/rollback")
