"""The demo's exits, without services: signals become one interrupt, Serve is always stopped,
and a failed request is reported by name. The whole demo runs in tests/e2e/test_demo_cli.py.
"""

from __future__ import annotations

import signal

import pytest

from recsys import demo, services
from recsys.config import CatalogSettings, Settings
from recsys.data.synthetic import make_world
from recsys.embedded import free_port


def test_sigterm_and_sigint_raise_one_interrupt_then_are_ignored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with services.StopSignals() as signals:
        with pytest.raises(services.Interrupted) as caught:
            signal.raise_signal(signal.SIGTERM)
        assert caught.value.signum == signal.SIGTERM
        signal.raise_signal(signal.SIGINT)  # already stopping: ignored
        signals.take_back()  # as after ray.init / ray.shutdown: still stopping
        signal.raise_signal(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_signals_are_ignored_once_clean_up_has_begun() -> None:
    with services.StopSignals() as signals:
        signals.hold()
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)


def test_ctrl_c_is_an_interrupt_with_sigint() -> None:
    with services.StopSignals(), pytest.raises(services.Interrupted) as caught:
        signal.raise_signal(signal.SIGINT)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.signum == signal.SIGINT


def test_serve_and_ray_are_stopped_when_start_up_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_after_ray_init(_: Settings) -> str:
        raise RuntimeError("serve.run failed")  # Ray is up by now: it must be stopped

    stopped: list[bool] = []
    monkeypatch.setattr(services, "start_serving", fail_after_ray_init)
    monkeypatch.setattr(services, "stop_serving", lambda: stopped.append(True))
    with (
        services.StopSignals() as signals,
        pytest.raises(RuntimeError, match=r"serve\.run failed"),
        services.ray_serve(Settings(), signals),
    ):
        pass
    assert stopped == [True]


def test_sigterm_during_ray_start_up_is_an_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    def ray_init_sigterm_handler(_: Settings) -> str:
        raise SystemExit(signal.SIGTERM)  # what ray.init's own handler does

    stopped: list[bool] = []
    monkeypatch.setattr(services, "start_serving", ray_init_sigterm_handler)
    monkeypatch.setattr(services, "stop_serving", lambda: stopped.append(True))
    with (
        services.StopSignals() as signals,
        pytest.raises(services.Interrupted),
        services.ray_serve(Settings(), signals),
    ):
        pass
    assert stopped == [True]


def test_unreachable_service_is_reported_per_request_not_raised() -> None:
    world = make_world(CatalogSettings(num_items=50, num_users=10, num_topics=4, seed=0))
    stats = demo.drive_users(
        f"http://127.0.0.1:{free_port()}",  # nothing listens there
        world,
        duration_s=5.0,
        concurrency=2,
        slate_size=5,
        seed=0,
    )
    assert stats.errors == 2  # each client stops at its first transport error
    assert len(stats.failures) == 2
    assert all(f.startswith("POST /recommend user ") for f in stats.failures)
    assert all("ConnectError" in f for f in stats.failures)
