"""``recsys users import`` into the real redis-server, over the catalog the service serves."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.embedded import EmbeddedRedis
from recsys.store import RedisUserStateStore
from tests.conftest import ServingStack
from tests.unit.test_users import _log

pytestmark = pytest.mark.integration


def test_import_writes_states_to_redis_and_keeps_existing_users(
    serving_stack: ServingStack,
    redis_server: EmbeddedRedis,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs = tmp_path / "history.parquet"
    pq.write_table(_log().to_table(), logs)
    monkeypatch.setenv("RECSYS_STORE__URL", redis_server.url)
    monkeypatch.setenv("RECSYS_STORE__KEY_PREFIX", unique_name)
    monkeypatch.setenv("RECSYS_ARTIFACTS__ROOT", str(serving_stack.settings.artifacts.root))
    runner = CliRunner()
    first = runner.invoke(app, ["users", "import", str(logs), "--json"])
    assert first.exit_code == 0, first.output
    stats = json.loads(first.output)
    assert (stats["users"], stats["imported"], stats["impressions"]) == (6, 6, 40)
    store = RedisUserStateStore.from_url(redis_server.url, key_prefix=unique_name)
    try:
        assert all(blob is not None for blob in store.get_many([f"user-{u}" for u in range(6)]))
    finally:
        store.close()
    again = runner.invoke(app, ["users", "import", str(logs), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["skipped_existing"] == 6
