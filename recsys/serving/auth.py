"""API keys in the ``X-API-Key`` header: admin keys for ``/admin``, client keys (optionally)
for ``/recommend`` and ``/feedback``.

Checked by a pure-ASGI guard before the body is read, so an unauthenticated request costs no
parsing. Keys are held only as SHA-256 digests and a presented key is compared with every
configured digest by :func:`hmac.compare_digest`, with no early exit, so the time taken says
nothing about which key, or how much of one, matched. No key is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from recsys.config import AuthSettings

HEADER = "X-API-Key"
ADMIN_PREFIX = "/admin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_key_file(path: Path) -> list[str]:
    """Keys in ``path``, one per line (blank lines and ``#`` comments skipped): the layout
    of a Kubernetes Secret mounted as a file. A missing or unreadable file is an error at
    start-up, never a silently open endpoint."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read API keys from {path}: {exc.strerror}") from exc
    keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    for k in keys:
        if len(k) < 16:
            raise ValueError(f"{path}: an API key must have at least 16 characters")
    return keys


class ApiKeys:
    """The configured keys, as digests."""

    def __init__(self, admin: Iterable[str], client: Iterable[str]) -> None:
        self._admin = [_digest(k) for k in admin]
        self._client = [_digest(k) for k in client]

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> ApiKeys:
        admin = [k.get_secret_value() for k in auth.admin_keys]
        client = [k.get_secret_value() for k in auth.client_keys]
        if auth.admin_keys_file is not None:
            admin += read_key_file(auth.admin_keys_file)
        if auth.client_keys_file is not None:
            client += read_key_file(auth.client_keys_file)
        return cls(admin, client)

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin)

    def matches(self, presented: str, *, admin: bool) -> bool:
        """True when ``presented`` is an admin key, or (``admin`` False) a client key."""
        candidates = self._admin if admin else self._admin + self._client
        digest = _digest(presented)
        found = False
        for d in candidates:  # every digest compared: no early exit
            found |= hmac.compare_digest(d, digest)
        return found


def route_path(scope: Scope) -> str:
    """The request's path within the app: without the ``root_path`` it is mounted under (a
    Serve route prefix)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


class ApiKeyGuard:
    """Pure-ASGI guard: ``/admin/*`` always needs an admin key; the paths in ``protect``
    need a client or admin key. A missing key is 401, a wrong one 403, both with the JSON
    error body naming the header."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, protect: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = keys
        self.protect = frozenset(f"/{p.strip('/')}" for p in protect)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        admin = path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        if not admin and path not in self.protect:
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":  # CORS preflight carries no credentials
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope.get("headers") or []:
            if name == b"x-api-key":
                presented = value.decode("latin-1")
                break
        if admin and not self.keys.admin_enabled:
            await _reject(send, 403, "the admin API is off: no admin key is configured")
        elif presented is None:
            await _reject(send, 401, f"this endpoint needs an API key in the {HEADER} header")
        elif not self.keys.matches(presented, admin=admin):
            await _reject(send, 403, "the API key is not valid for this endpoint")
        else:
            await self.app(scope, receive, send)


async def _reject(send: Send, status: int, message: str) -> None:
    error = "unauthorized" if status == 401 else "forbidden"
    body = json.dumps({"error": error, "detail": [{"field": HEADER, "message": message}]})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b"ApiKey"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})
