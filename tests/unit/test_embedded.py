"""Port picking for listeners that bind late (HAProxy's stats and metrics ports)."""

from __future__ import annotations

import socket

import pytest

from recsys import embedded
from recsys.embedded import LISTEN_PORT_RANGE, EmbeddedServiceError, free_listen_port


def test_listen_ports_lie_outside_the_ephemeral_range_and_can_be_bound() -> None:
    eph_low, eph_high = embedded._ephemeral_range()
    low, high = LISTEN_PORT_RANGE
    ports = {free_listen_port() for _ in range(20)}
    for port in ports:
        assert low <= port < high
        assert not eph_low <= port <= eph_high
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", port))  # raises if it was not free
    # random order: twenty picks out of ten thousand ports do not all coincide
    assert len(ports) > 1


def _held_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def _free_pair() -> int:
    """A port p with p and p + 1 both free (nothing else binds in the listen range)."""
    for _ in range(50):
        port = free_listen_port((LISTEN_PORT_RANGE[0], LISTEN_PORT_RANGE[1] - 1))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two adjacent free ports in the listen range")


def test_a_port_in_use_is_never_returned() -> None:
    port = _free_pair()
    with _held_socket(port):
        picks = {free_listen_port((port, port + 2)) for _ in range(10)}
    assert picks == {port + 1}


def test_no_free_port_in_range_is_a_clear_error() -> None:
    port = free_listen_port()
    with _held_socket(port), pytest.raises(EmbeddedServiceError, match="no free port"):
        free_listen_port((port, port + 1))


def test_a_range_inside_the_ephemeral_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_ephemeral_range", lambda: (32_768, 60_999))
    with pytest.raises(EmbeddedServiceError, match="ephemeral range"):
        free_listen_port((40_000, 40_010))
    with pytest.raises(ValueError, match="port range"):
        free_listen_port((30_000, 20_000))
