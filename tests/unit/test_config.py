"""Settings: environment with the RECSYS_ prefix and __ nesting; bad values fail clearly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.config import Settings


def test_defaults_need_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.store.url == "memory://"
    assert s.stream.bootstrap == ""


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_STORE__URL", "redis://127.0.0.1:6390/1")
    monkeypatch.setenv("RECSYS_SERVING__MAX_SLATE_SIZE", "7")
    monkeypatch.setenv("RECSYS_DEMO__SLATE_SIZE", "5")
    s = Settings()
    assert s.store.url == "redis://127.0.0.1:6390/1"
    assert s.serving.max_slate_size == 7


@pytest.mark.parametrize(
    ("var", "value", "where"),
    [
        ("RECSYS_STORE__URL", "postgres://x", "store"),
        ("RECSYS_SERVING__PORT", "-1", "serving.port"),
        ("RECSYS_CATALOG__NUM_ITEMS", "0", "catalog.num_items"),
        ("RECSYS_POLICY__TEMPERATURE", "nan", "policy.temperature"),
        ("RECSYS_CANDIDATES__DEFAULT_K", "5000", "default_k"),
        ("RECSYS_STREAM__LINGER_MS", "-1", "stream.linger_ms"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, where: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    text = str(err.value)
    assert where.split(".")[0] in text


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(nonsense={"a": 1})  # type: ignore[call-arg]
