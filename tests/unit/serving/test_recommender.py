"""Recommender, policy registry and HTTP app without Ray: the serving path over real artifacts.

The artifacts are the small SlateQ and REINFORCE policies the pipeline trains and publishes
(``small_policies``), served through the same wiring as production with the in-memory store
and stream behind the same Protocols.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.config import (
    ArtifactSettings,
    CandidateSettings,
    CatalogSettings,
    PolicySettings,
    ServingSettings,
    Settings,
)
from recsys.features import FeatureSpec, request_key
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.serving.api import build_api
from recsys.serving.policies import ServedPolicy, load_served_policy
from recsys.serving.recommender import Recommendation, Recommender, RecommendQuery
from recsys.serving.wiring import build_recommender, load_newest_retrieval
from recsys.stream import shared_event_log
from recsys.stream.buffered import EventBufferFullError
from recsys.types import (
    ArtifactError,
    CandidateBatch,
    Candidates,
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    InvalidRequestError,
    StoreUnavailableError,
)
from tests.artifact_copies import corrupt_copy, republish


def _settings(root: Path, policy: str = "slateq", **policy_kw: Any) -> Settings:
    return Settings(
        catalog=CatalogSettings(num_items=300, num_topics=6, seed=0),
        candidates=CandidateSettings(dim=8, epochs=2, default_k=15, num_ads=3),
        artifacts=ArtifactSettings(root=root),
        policy=PolicySettings(name=policy, reload_interval_s=3600.0, **policy_kw),  # type: ignore[arg-type]
        serving=ServingSettings(max_slate_size=10, max_exclude=30),
    )


@pytest.fixture
def root(small_policies: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the published artifacts (tests add versions to it)."""
    src = small_policies["slateq"].parent.parent
    dst = tmp_path / "artifacts"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def rec(root: Path) -> Iterator[Recommender]:
    built = build_recommender(_settings(root))
    yield built
    built.close()


def _impressions(after: int = 0) -> list[ImpressionEvent]:
    records = shared_event_log().source(["impressions"]).poll(100_000, 0.05)
    return [r.event for r in records[after:] if isinstance(r.event, ImpressionEvent)]


def test_serves_the_trained_policy_with_exact_logged_propensities(rec: Recommender) -> None:
    before = len(shared_event_log().source(["impressions"]).poll(100_000, 0.05))
    out = rec.recommend("new-user", slate_size=3, session_id="s1")
    slate = out.slate
    assert slate.policy == "slateq"
    assert out.model_version.startswith("slateq@")
    assert out.model_version == slate.version
    assert len(set(slate.item_ids.tolist())) == 3
    assert np.all((slate.propensities > 0) & (slate.propensities <= 1))
    (event,) = _impressions(before)
    assert event.request_id == out.request_id
    assert event.session_id == "s1"
    assert event.model_version == out.model_version
    assert [it.item_id for it in event.items] == slate.item_ids.tolist()
    np.testing.assert_array_equal([it.propensity for it in event.items], slate.propensities)


def test_propensities_are_those_of_the_policy_sampler(root: Path) -> None:
    """Recompute each slot's probability with the sampler's own ``log_propensities`` on the
    observation the served policy built: they must agree with what was returned."""
    retrieval = load_newest_retrieval(_settings(root))
    from recsys.pipeline import make_fold

    assert retrieval.item_table is not None
    fold = make_fold(retrieval.item_table)
    served = load_served_policy(
        root / "policy-slateq" / sorted(p.name for p in (root / "policy-slateq").iterdir())[-1],
        name="slateq",
        spec=fold.spec,
        num_items=fold.num_items,
        retrieval_version=retrieval.artifact.version,
    )
    rng = np.random.default_rng(3)
    features = np.random.default_rng(0).random(fold.spec.user_dim).astype(np.float32)
    cands = retrieval.retriever.candidates_for_history(np.array([5, 9]), 12, 3)
    slate = served.select(features, cands, 3, rng)
    obs = served.features.obs(features[None, :], cands.item_ids[None, :])
    policy: Any = served.policy
    scores, _ = policy.sampler_scores(obs, 3, explore=True)
    slots = np.searchsorted(cands.item_ids, slate.item_ids, sorter=np.argsort(cands.item_ids))
    order = np.argsort(cands.item_ids)[slots]
    log_p = policy.config.sampler.log_propensities(scores, obs, order[None, :])
    np.testing.assert_allclose(np.exp(log_p[0]), slate.propensities, rtol=1e-5)


def test_every_slate_holds_the_ad_load_the_policy_was_trained_with(rec: Recommender) -> None:
    served = rec.policies.current()
    assert isinstance(served, ServedPolicy)
    ads = served.features.is_ad
    for i in range(20):
        slate = rec.recommend(f"u{i}", slate_size=3).slate
        assert int(ads[slate.item_ids].sum()) == 1  # min_ads = max_ads = 1


def test_recent_clicks_and_requested_items_are_never_recommended(rec: Recommender) -> None:
    first = rec.recommend("clicker", slate_size=3, session_id="a")
    clicked = int(first.slate.item_ids[0])
    rec.feedback(first.request_id, "clicker", clicked, EventType.CLICK)
    # The in-process updater folds the click; wait until the state shows it.
    import time

    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        states, known = rec._fold.codec.decode([rec._store.get("clicker")])
        if known[0] and states["clicks"][0] == 1:
            break
        time.sleep(0.02)
    assert states["recent"][0, 0] == clicked
    banned = {clicked, int(first.slate.item_ids[1])}
    for _ in range(10):
        again = rec.recommend("clicker", 3, exclude=[int(first.slate.item_ids[1])])
        assert not set(again.slate.item_ids.tolist()) & banned


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"slate_size": 0}, "slate_size"),
        ({"slate_size": 11}, "slate_size"),
        ({"slate_size": 3, "num_candidates": 2}, "num_candidates"),
        ({"slate_size": 3, "num_candidates": 3}, "num_candidates"),  # all would be ads
        ({"slate_size": 3, "num_candidates": 301}, "num_candidates"),
        ({"slate_size": 3, "exclude": [300]}, "exclude"),
        ({"slate_size": 3, "exclude": [-1]}, "exclude"),
        ({"slate_size": 3, "exclude": list(range(31))}, "exclude"),
    ],
)
def test_impossible_requests_are_refused_without_side_effects(
    rec: Recommender, kwargs: dict[str, Any], field: str
) -> None:
    before = len(shared_event_log().source(["impressions"]).poll(100_000, 0.05))
    with pytest.raises(InvalidRequestError) as err:
        rec.recommend("u0", **kwargs)
    assert err.value.field == field
    assert _impressions(before) == []


def test_feedback_is_stamped_with_server_time_and_validated(rec: Recommender) -> None:
    client_ts = time.time() - 10.0  # inside the accepted window: kept as sent
    event = rec.feedback("req-1", "u0", 7, EventType.DWELL, value=12.5, ts=client_ts)
    assert isinstance(event, FeedbackEvent)
    assert event.ts == client_ts
    assert event.server_ts is not None
    assert event.server_ts > 1e9
    with pytest.raises(InvalidRequestError) as err:
        rec.feedback("req-1", "u0", 300, EventType.CLICK)
    assert err.value.field == "item_id"


def test_a_new_version_is_picked_up_and_a_corrupt_one_refused(root: Path) -> None:
    rec = build_recommender(_settings(root))
    try:
        old = rec.recommend("u1", 3).model_version
        newer = republish(sorted((root / "policy-slateq").iterdir())[-1], "zz-newer")
        assert rec.policies.refresh()
        assert rec.recommend("u1", 3).model_version == "slateq@zz-newer"
        assert old != "slateq@zz-newer"
        corrupt_copy(newer, "zzz-corrupt")
        assert not rec.policies.refresh()
        assert rec.policies.stats.refused == 1
        assert "checksum" in rec.policies.stats.last_error
        assert rec.recommend("u1", 3).model_version == "slateq@zz-newer"
        assert not rec.policies.refresh()  # a refused version is not retried
        assert rec.policies.stats.refused == 1
    finally:
        rec.close()


def test_unservable_artifacts_are_refused_with_the_reason(root: Path) -> None:
    retrieval = load_newest_retrieval(_settings(root))
    path = sorted((root / "policy-slateq").iterdir())[-1]
    ckpt = load_policy_checkpoint(path)
    assert ckpt.features is not None
    spec = ckpt.features.spec
    kwargs: dict[str, Any] = {"name": "slateq", "spec": spec, "num_items": 300}
    with pytest.raises(ArtifactError, match="retrieval"):
        load_served_policy(path, retrieval_version="other", **kwargs)
    other_spec = FeatureSpec(num_topics=spec.num_topics, recent_items=spec.recent_items + 1)
    with pytest.raises(ArtifactError, match="feature spec"):
        load_served_policy(
            path,
            name="slateq",
            spec=other_spec,
            num_items=300,
            retrieval_version=retrieval.artifact.version,
        )
    with pytest.raises(ArtifactError, match="items"):
        load_served_policy(
            path,
            name="slateq",
            spec=spec,
            num_items=299,
            retrieval_version=retrieval.artifact.version,
        )


def test_without_a_usable_artifact_the_retrieval_fallback_serves(root: Path) -> None:
    rec = build_recommender(_settings(root, policy="myopic"))  # no policy-myopic published
    try:
        out = rec.recommend("u1", 3)
        assert out.slate.policy == "retrieval"
        assert out.model_version.startswith("retrieval@")
    finally:
        rec.close()


def test_exploration_can_be_replaced_keeping_the_ad_load(root: Path) -> None:
    rec = build_recommender(_settings(root, policy="reinforce", exploration="epsilon", epsilon=0.5))
    try:
        served = rec.policies.current()
        assert isinstance(served, ServedPolicy)
        policy: Any = served.policy
        assert policy.config.sampler.kind == "epsilon"
        assert policy.config.sampler.min_ads == 1
        slate = rec.recommend("u1", 3).slate
        assert int(served.features.is_ad[slate.item_ids].sum()) == 1
    finally:
        rec.close()


def test_greedy_serving_is_deterministic_with_propensity_one(root: Path) -> None:
    """``exploration=greedy`` serves the policy's own best slate: whatever the random stream,
    the same slate for the same request, each slot with propensity 1, the ad load kept; the
    policy's own sampler explores instead."""
    greedy = build_recommender(_settings(root, policy="reinforce", exploration="greedy"))
    sampled = build_recommender(_settings(root, policy="reinforce"))
    try:
        _, features = greedy.user_state("u1", None, 0.0)
        for rec, explores in ((greedy, False), (sampled, True)):
            served = rec.policies.current()
            assert isinstance(served, ServedPolicy)
            ads = served.features.is_ad
            ids = np.concatenate([np.flatnonzero(~ads)[:12], np.flatnonzero(ads)[:3]])
            candidates = Candidates(
                item_ids=ids,
                scores=np.zeros(15, np.float32),
                embeddings=np.zeros((15, 8), np.float32),
                is_ad=ads[ids],
            )
            slates = [
                served.select(features, candidates, 4, np.random.default_rng(seed))
                for seed in range(6)
            ]
            same = all(np.array_equal(s.item_ids, slates[0].item_ids) for s in slates)
            props = np.concatenate([s.propensities for s in slates])
            assert same != explores
            assert bool((props < 1.0).any()) == explores
            assert all(int(served.features.is_ad[s.item_ids].sum()) == 1 for s in slates)
    finally:
        greedy.close()
        sampled.close()


def test_http_api_names_the_policy_and_refuses_bad_session_ids(rec: Recommender) -> None:
    client = TestClient(build_api(rec))
    ok = client.post("/recommend", json={"user_id": "u9", "slate_size": 3, "session_id": "s-1"})
    assert ok.status_code == 200
    body = ok.json()
    assert body["policy"] == "slateq"
    assert body["model_version"].startswith("slateq@")
    bad = client.post("/recommend", json={"user_id": "u9", "slate_size": 3, "session_id": "a b"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "session_id"
    fb = client.post(
        "/feedback",
        json={"request_id": body["request_id"], "user_id": "u9", "item_id": 1, "event": "click"},
    )
    assert fb.status_code == 202
    assert request_key(body["request_id"]) != 0


def test_unparseable_bodies_are_documented_4xx_naming_the_body(rec: Recommender) -> None:
    """Invalid UTF-8 and absurdly deep nesting cannot be parsed: a 422 naming ``body`` (not a
    route ``path``), as the OpenAPI of both POST routes lists."""
    client = TestClient(build_api(rec))
    deep = ("[" * 30_000 + "]" * 30_000).encode()  # under the 64 KiB body limit
    invalid_utf8 = b'{"user_id": "\xff\xfe", "slate_size": 3}'
    for route in ("/recommend", "/feedback"):
        for body in (invalid_utf8, deep):
            resp = client.post(route, content=body, headers={"content-type": "application/json"})
            assert resp.status_code == 422, resp.text
            assert resp.json()["detail"][0]["field"] == "body", resp.text
    spec = client.get("/openapi.json").json()
    for route in ("/recommend", "/feedback"):
        listed = set(spec["paths"][route]["post"]["responses"])
        assert {"413", "422"} <= listed
        assert "400" not in listed
    assert client.post("/recommend", json={"user_id": "u1", "slate_size": 2}).status_code == 200


def test_openapi_describes_metrics_as_text_and_readyz_503(rec: Recommender) -> None:
    client = TestClient(build_api(rec))
    spec = client.get("/openapi.json").json()
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/json" not in metrics
    assert any(kind.startswith("text/plain") for kind in metrics)
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    ready = spec["paths"]["/readyz"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    assert client.get("/readyz").json()["status"] == "ready"


def test_a_batch_answers_every_query_as_if_alone(rec: Recommender) -> None:
    """Bad queries get their own error and leave no impression; the others are answered,
    grouped by slate size, each under its own request id and impression."""
    before = len(_impressions())
    queries = [
        RecommendQuery("b1", 3),
        RecommendQuery("b2", 0),
        RecommendQuery("b3", 5, exclude=(1, 2)),
        RecommendQuery("b4", 3, exclude=(10_000,)),
        RecommendQuery("b5", 3, session_id="s"),
    ]
    out = rec.recommend_many(queries)
    errors = {i: o.field for i, o in enumerate(out) if isinstance(o, InvalidRequestError)}
    assert errors == {1: "slate_size", 3: "exclude"}
    answered = [o for o in out if isinstance(o, Recommendation)]
    assert [len(o.slate) for o in answered] == [3, 5, 3]
    assert not set(answered[1].slate.item_ids.tolist()) & {1, 2}
    assert len({o.request_id for o in answered}) == 3
    assert not any(o.degraded for o in answered)
    logged = _impressions(before)
    # one impression per answer, under its request id (published group by group)
    assert {e.request_id: e.user_id for e in logged} == {
        o.request_id: u for o, u in zip(answered, ["b1", "b3", "b5"], strict=True)
    }


def test_padding_is_never_served_and_batched_propensities_are_the_samplers(
    rec: Recommender,
) -> None:
    served = rec.policies.current()
    assert isinstance(served, ServedPolicy)
    ads = served.features.is_ad
    ids = np.concatenate([np.flatnonzero(~ads)[:12], np.flatnonzero(ads)[:3]])
    mask = np.ones((2, 15), dtype=np.bool_)
    mask[1, 6:12] = False  # row 1 has only 6 organic candidates
    batch = CandidateBatch(
        item_ids=np.where(mask, np.tile(ids, (2, 1)), -1),
        scores=np.zeros((2, 15), np.float32),
        mask=mask,
        is_ad=np.tile(ads[ids], (2, 1)) & mask,
    )
    _, features = rec.user_state("p1", None, 0.0)
    user = np.stack([features, features])
    slates = served.select_batch(user, batch, 5, np.random.default_rng(7))
    assert not set(slates[1].item_ids.tolist()) & set(ids[6:12].tolist())
    obs = served.features.obs(user, np.where(mask, batch.item_ids, 0), mask)
    policy: Any = served.policy
    scores, _ = policy.sampler_scores(obs, 5, explore=True)
    index = {int(i): k for k, i in enumerate(ids)}
    picked = np.array([[index[int(i)] for i in s.item_ids] for s in slates])
    log_p = policy.config.sampler.log_propensities(scores, obs, picked)
    np.testing.assert_allclose(np.exp(log_p), np.stack([s.propensities for s in slates]), rtol=1e-5)


class SwitchableStore:
    """The recommender's real store behind a switch that makes reads fail, counting them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_many(self, user_ids: Any) -> Any:
        self.reads += 1
        if self.down:
            raise StoreUnavailableError("redis did not answer: paused")
        return self.inner.get_many(user_ids)


def test_without_the_store_answers_are_degraded_cached_and_recover(root: Path) -> None:
    settings = _settings(root)
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"store_retry_s": 0.2})}
    )
    rec = build_recommender(settings)
    try:
        first = rec.recommend("d1", 3)
        assert first.cold_start
        rec.feedback(first.request_id, "d1", int(first.slate.item_ids[0]), EventType.CLICK)
        deadline = time.monotonic() + 10
        while rec._store.get("d1") is None:  # the in-process updater folds the click
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not rec.recommend("d1", 3).cold_start  # its state now exists
        store = SwitchableStore(rec._store)
        rec._store = store
        now = 1e9
        _, known_up = rec.user_states(["d1"], [None], now)  # read (and cached) while up
        store.down = True
        reads = store.reads
        out = rec.recommend_many([RecommendQuery("d1", 3), RecommendQuery("d2", 3)])
        again = rec.recommend_many([RecommendQuery("d1", 3)])
        assert all(isinstance(o, Recommendation) and o.degraded for o in out + again)
        # the cached user keeps its history; the one never read is a cold start
        assert [o.cold_start for o in out if isinstance(o, Recommendation)] == [False, True]
        assert store.reads == reads + 1  # the breaker spares the store a second timeout
        _, known_down = rec.user_states(["d1"], [None], now)
        np.testing.assert_allclose(known_down, known_up)  # the cached state, not a cold one
        assert rec.metrics.store_errors._value.get() == 1
        assert rec.metrics.degraded._value.get() >= 3
        store.down = False
        time.sleep(0.25)
        back = rec.recommend("d1", 3)
        assert not back.degraded
    finally:
        rec.close()


def test_http_flags_degraded_answers_and_sheds_feedback_when_events_back_up(
    rec: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(build_api(rec))
    body = client.post("/recommend", json={"user_id": "h1", "slate_size": 3}).json()
    assert body["degraded"] is False
    assert body["cold_start"] is True  # nothing is known about h1 yet

    def full(event: Any) -> None:
        raise EventBufferFullError("100000 events are waiting for the broker; retry later")

    monkeypatch.setattr(rec._sink, "publish", full)
    fb = client.post(
        "/feedback",
        json={"request_id": body["request_id"], "user_id": "h1", "item_id": 1, "event": "click"},
    )
    assert fb.status_code == 503
    assert fb.headers["retry-after"] == "1"
    assert fb.json()["error"] == "unavailable"
    schema = client.get("/openapi.json").json()
    assert "503" in schema["paths"]["/feedback"]["post"]["responses"]
    assert "degraded" in schema["components"]["schemas"]["RecommendResponse"]["properties"]


def test_client_timestamps_are_clamped_around_server_time(rec: Recommender) -> None:
    now = 1_800_000_000.0
    rec._clock = lambda: now
    skew = rec._settings.feedback_max_skew_s
    age = rec._settings.feedback_max_age_s
    future = rec.feedback("r", "t1", 1, EventType.CLICK, ts=1e11)
    past = rec.feedback("r", "t1", 1, EventType.CLICK, ts=0.0)
    fine = rec.feedback("r", "t1", 1, EventType.CLICK, ts=now - 60.0)
    assert future.ts == now + skew
    assert past.ts == now - age
    assert fine.ts == now - 60.0
    assert future.server_ts == past.server_ts == now
    assert rec.metrics.clamped_ts._value.get() == 2


def test_torch_and_faiss_get_the_replicas_thread_count(root: Path) -> None:
    """FAISS would use every core, its OpenMP threads spinning after each search on CPU the
    load's other processes need; the replica gives it the same thread count as torch."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        for threads in (2, 1):
            settings = _settings(root)
            settings = settings.model_copy(
                update={"policy": settings.policy.model_copy(update={"torch_threads": threads})}
            )
            rec = build_recommender(settings)
            try:
                assert torch.get_num_threads() == threads
                assert faiss.omp_get_max_threads() == threads
                assert rec.recommend("u1", 3).slate.item_ids.size == 3
            finally:
                rec.close()
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
