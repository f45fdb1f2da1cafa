"""``recsys users import``: logged history folded into states equal to what the online updater
builds from the same traffic; existing users kept unless asked; bad input refused clearly."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.data.logged import LoggedFeedback
from recsys.features import EventFold, FeatureSpec
from recsys.store import InMemoryUserStateStore
from recsys.stream import InMemoryEventLog, OnlineUpdater
from recsys.types import FeedbackEvent, ImpressionEvent
from recsys.users import import_users, logged_events

NUM_ITEMS = 60


def _fold() -> EventFold:
    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.ones(4), size=NUM_ITEMS).astype(np.float32)
    return EventFold(FeatureSpec(num_topics=4), topics, rng.random(NUM_ITEMS) < 0.2)


def _log(slates: int = 40, size: int = 3, seed: int = 1) -> LoggedFeedback:
    """``slates`` logged slates of ``size`` for 6 users with random clicks and signals."""
    rng = np.random.default_rng(seed)
    n = slates * size
    slate = np.repeat(np.arange(slates), size)
    user = slate % 6
    clicked = rng.integers(0, size + 1, slates)  # size means "no click"
    position = np.tile(np.arange(size), slates)
    click = position == clicked[slate]
    return LoggedFeedback(
        request_id=np.array([f"r{s}" for s in slate]),
        session_id=(slate // 12).astype(np.int64),
        step=slate.astype(np.int32),
        ts=1_700_000_000.0 + slate * 60.0,
        user_id=np.array([f"user-{u}" for u in user]),
        user_idx=user.astype(np.int64),
        item_id=rng.integers(0, NUM_ITEMS, n),
        position=position.astype(np.int16),
        slate_size=np.full(n, size, np.int16),
        propensity=np.full(n, 0.5, np.float32),
        slate_log_propensity=np.full(n, -2.0, np.float32),
        position_propensity=np.full(n, 0.5, np.float32),
        policy=np.array(["legacy"] * n),
        is_ad=np.zeros(n, np.bool_),
        click=click,
        dwell_s=np.where(click, rng.uniform(5, 300, n), 0.0).astype(np.float32),
        like=click & (rng.random(n) < 0.5),
        conversion=click & (rng.random(n) < 0.2),
        revenue=np.zeros(n, np.float32),
        skip=click & (rng.random(n) < 0.1),
        hidden_ltv=np.zeros(n, np.float32),
        user_features=np.zeros((n, 2), np.float32),
        item_features=np.zeros((n, 2), np.float32),
    )


def test_imported_states_equal_what_the_updater_folds_from_the_same_events() -> None:
    fold, log = _fold(), _log()
    events = logged_events(log)
    assert sum(isinstance(e, ImpressionEvent) for e in events) == 40
    clicks = int(log.click.sum())
    assert sum(isinstance(e, FeedbackEvent) and e.event == "click" for e in events) == clicks

    imported = InMemoryUserStateStore()
    stats = import_users(imported, fold, log, chunk_users=4)  # two chunks
    assert (stats.users, stats.imported, stats.impressions) == (6, 6, 40)
    assert stats.feedback == sum(isinstance(e, FeedbackEvent) for e in events)

    stream = InMemoryEventLog()
    sink = stream.sink()
    for event in events:
        sink.publish(event)
    streamed = InMemoryUserStateStore()
    updater = OnlineUpdater(stream.source(), streamed, "test", fold)
    for _ in range(500):  # batches of 17; the updater holds back what its watermark forbids
        updater.run_once(max_records=17, timeout_s=0.01)
        if updater.stats.records == len(events):
            break
    assert updater.stats.records == len(events)
    users = [f"user-{u}" for u in range(6)]
    assert imported.get_many(users) == streamed.get_many(users)
    assert all(blob is not None for blob in imported.get_many(users))


def test_existing_users_are_kept_unless_replaced() -> None:
    fold, store = _fold(), InMemoryUserStateStore()
    import_users(store, fold, _log(seed=1))
    before = store.get_many(["user-0"])
    again = import_users(store, fold, _log(seed=2))
    assert (again.imported, again.skipped_existing) == (0, 6)
    assert store.get_many(["user-0"]) == before
    replaced = import_users(store, fold, _log(seed=2), replace=True)
    assert replaced.imported == 6
    assert store.get_many(["user-0"]) != before


def test_items_outside_the_catalog_are_refused_by_id() -> None:
    log = _log()
    log.item_id[5] = NUM_ITEMS + 3
    store = InMemoryUserStateStore()
    with pytest.raises(ValueError, match=f"item id {NUM_ITEMS + 3} is not in the served catalog"):
        import_users(store, _fold(), log)
    assert store.get_many(["user-0"]) == [None]


def test_cli_refuses_a_missing_or_malformed_file(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    runner = CliRunner()
    missing = runner.invoke(app, ["users", "import", str(root / "nope.parquet")])
    assert missing.exit_code == 1
    assert "no such file" in missing.output
    bad = root / "bad.parquet"
    pq.write_table(_log().to_table().drop_columns(["click"]), bad)
    broken = runner.invoke(app, ["users", "import", str(bad)])
    assert broken.exit_code == 1
    assert "click" in broken.output
