"""The same FastAPI app and :class:`Recommender` behind plain uvicorn, without Ray Serve.

``recsys bench serve`` runs it beside the Ray Serve deployment to measure what Serve costs
per request; it is also the way to serve on one machine without Ray. Run as
``python -m recsys.serving.plain`` with the settings as JSON in ``RECSYS_SETTINGS_JSON``
(or the usual ``RECSYS_*`` environment); requests are batched by :class:`MicroBatcher` with
the same batch size and wait as the Serve deployment's ``@serve.batch``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from recsys.config import Settings, load_settings, settings_json
from recsys.types import RecsysError

SETTINGS_ENV = "RECSYS_SETTINGS_JSON"


def main() -> None:
    """Build the recommender from settings and serve it with uvicorn (uvloop, httptools)."""
    import uvicorn

    from recsys.serving.wiring import build_server

    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    serving = settings.serving
    rec, app = build_server(settings)
    try:
        uvicorn.run(
            app,
            host=serving.host,
            port=serving.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            backlog=2048,
        )
    finally:
        rec.close()


@contextlib.contextmanager
def plain_server(settings: Settings, startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Run :func:`main` in a child process for the block; yields its URL once ``/readyz``
    answers 200. The child is stopped (SIGTERM, then SIGKILL) on every way out."""
    env = {**os.environ, SETTINGS_ENV: settings_json(settings)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.serving.plain"], env=env, start_new_session=True
    )
    url = f"http://{settings.serving.host}:{settings.serving.port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RecsysError(f"plain uvicorn server exited with {proc.returncode}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{url}/readyz", timeout=2.0) as resp,
            ):
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RecsysError(f"plain uvicorn server not ready after {startup_timeout_s} s")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    main()
