"""The running service on one machine: embedded Redis and broker, the updater, Ray Serve.

``recsys demo`` and ``recsys evaluate live`` both start the whole loop this way, inside an
:class:`~contextlib.ExitStack` and :class:`StopSignals`: whatever way the command ends
(normally, on an error, on Ctrl-C or on SIGTERM) it stops what it started, in reverse order:
Ray Serve and Ray, the online updater, Redis and the broker. Both signals raise
:class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so they take the same path as
an error; once stopping has begun, further signals are ignored so they cannot cut the clean-up
short. Should the process die without cleaning up (SIGKILL, or Ray's core worker calling
``_exit``), the kernel still stops redis-server and tansu (:mod:`recsys.embedded`) and Ray's
processes, which ``ray.init`` starts fate-shared with the driver.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from rich.console import Console

from recsys.config import Settings
from recsys.embedded import EmbeddedBroker, EmbeddedRedis, free_listen_port
from recsys.protocols import UserStateStore
from recsys.serving.deployment import start_serving, stop_serving
from recsys.serving.wiring import build_fold
from recsys.store import build_user_state_store
from recsys.stream import OnlineUpdater, build_event_source, ensure_topics


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the running stack to stop; raised in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once.

    By default SIGTERM kills the process without unwinding, and Ray swaps handlers under us:
    ``ray.init`` installs its own (``sys.exit`` behind a C++ handler that aborts the process 3 s
    later) and ``ray.shutdown`` resets SIGTERM to the default; :meth:`take_back` re-installs ours
    after each. From the first signal, or from :meth:`hold`, on, signals are ignored so they cannot
    interrupt the clean-up half-way. A no-op outside the main thread, where Python has no signals.
    """

    _signums = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._stopping = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            raise self.interrupted(signum)

    def interrupted(self, signum: int) -> Interrupted:
        """Stopping begins because of ``signum`` (here, or in a handler Ray had installed)."""
        self._stopping = True
        return Interrupted(signum)

    def take_back(self) -> None:
        """(Re-)install our handlers, over whatever Ray installed since."""
        if not self._previous:
            return
        for signum in self._signums:
            signal.signal(signum, self._handle)

    def hold(self) -> None:
        """Stopping has begun: ignore further signals."""
        self._stopping = True

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self._signums}
            self.take_back()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextmanager
def updater_thread(store: UserStateStore, settings: Settings) -> Iterator[OnlineUpdater]:
    """The online updater (broker → ``store``) in a thread for the block."""
    source = build_event_source(settings.stream)
    updater = OnlineUpdater(source, store, settings.stream.consumer_name, build_fold(settings))
    updater.start_in_thread(timeout_s=settings.stream.poll_timeout_s)
    try:
        yield updater
    finally:
        updater.stop()
        source.close()


@contextmanager
def ray_serve(settings: Settings, signals: StopSignals) -> Iterator[str]:
    """Ray Serve for the block; Serve and Ray are stopped on every way out, even a failed start."""
    try:
        try:
            url = start_serving(settings)
        except SystemExit as exc:
            # A SIGTERM before take_back meets ray.init's handler, which calls sys.exit(signum)
            # and, from its C++ side, arms an alarm that aborts the process 3 s later.
            if exc.code != signal.SIGTERM:
                raise
            if hasattr(signal, "alarm"):  # POSIX
                signal.alarm(0)  # we have our own clean-up to finish
            raise signals.interrupted(signal.SIGTERM) from None
        finally:
            signals.take_back()
        yield url
    finally:
        try:
            stop_serving()
        finally:
            signals.take_back()


@dataclass(frozen=True)
class EmbeddedServices:
    """The embedded ``redis-server`` and broker, and the settings pointed at them (the fault
    scenarios of :mod:`recsys.reliability` pause, kill and restart the Redis process)."""

    redis: EmbeddedRedis
    broker: EmbeddedBroker
    settings: Settings


def start_embedded(
    stack: ExitStack,
    settings: Settings,
    *,
    artifacts_root: Path,
    port: int | None = None,
    console: Console | None = None,
) -> EmbeddedServices:
    """Start a real ``redis-server`` and Kafka-protocol broker on free loopback ports (stopped
    by ``stack``); the settings returned with them point at them, at ``artifacts_root`` and
    at a serving port (``port`` or a free one)."""
    console = console or Console(stderr=True)
    with console.status("starting redis-server and the Kafka-protocol broker"):
        redis = stack.enter_context(EmbeddedRedis())
        broker = stack.enter_context(EmbeddedBroker())
    console.print(f"redis-server pid {redis.pid} at {redis.url}")
    console.print(f"tansu broker pid {broker.pid} at {broker.bootstrap}")
    pointed = settings.model_copy(
        update={
            "store": settings.store.model_copy(update={"url": redis.url}),
            "stream": settings.stream.model_copy(update={"bootstrap": broker.bootstrap}),
            "artifacts": settings.artifacts.model_copy(update={"root": artifacts_root}),
            "serving": settings.serving.model_copy(update={"port": port or free_listen_port()}),
        }
    )
    return EmbeddedServices(redis, broker, pointed)


def embedded_settings(
    stack: ExitStack,
    settings: Settings,
    *,
    artifacts_root: Path,
    port: int | None = None,
    console: Console | None = None,
) -> Settings:
    """:func:`start_embedded`, for callers that need only the settings."""
    return start_embedded(
        stack, settings, artifacts_root=artifacts_root, port=port, console=console
    ).settings


def start_updater(stack: ExitStack, settings: Settings) -> UserStateStore:
    """The topics, then the online updater (broker → store) in a thread, stopped by
    ``stack``; returns its store client (closed by ``stack``)."""
    store = build_user_state_store(settings.store)
    stack.callback(store.close)
    ensure_topics(
        settings.stream.bootstrap,
        [settings.stream.impressions_topic, settings.stream.feedback_topic],
    )
    stack.enter_context(updater_thread(store, settings))
    return store


def start_loop(
    stack: ExitStack, signals: StopSignals, settings: Settings, console: Console | None = None
) -> tuple[str, UserStateStore]:
    """The online updater (broker → store) in a thread and Ray Serve, both stopped by
    ``stack``; returns the service's URL and a store client (closed by ``stack``)."""
    console = console or Console(stderr=True)
    store = start_updater(stack, settings)
    with console.status("starting Ray Serve"):
        url = stack.enter_context(ray_serve(settings, signals))
    return url, store
