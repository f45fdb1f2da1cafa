"""The A/B split, version pins and rollback of :class:`PolicyRouter`, over real published
policy artifacts (a copy of the small SlateQ and REINFORCE ones, plus republished versions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys.config import ArtifactSettings, CandidateSettings, CatalogSettings, PolicySettings
from recsys.config import Settings as AllSettings
from recsys.pipeline import make_fold
from recsys.serving.routing import AdminError, PolicyRouter, user_fractions
from recsys.serving.wiring import build_router, load_newest_retrieval
from recsys.store import InMemoryVersionPins
from recsys.types import StoreUnavailableError
from tests.artifact_copies import corrupt_copy, republish


@pytest.fixture
def root(small_policies: dict[str, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "artifacts"
    shutil.copytree(small_policies["slateq"].parent.parent, dst)
    return dst


def _settings(root: Path, **policy: object) -> AllSettings:
    return AllSettings(
        catalog=CatalogSettings(num_items=300, num_topics=6, seed=0),
        candidates=CandidateSettings(dim=8, epochs=2, default_k=15, num_ads=3),
        artifacts=ArtifactSettings(root=root),
        policy=PolicySettings(reload_interval_s=3600.0, **policy),  # type: ignore[arg-type]
    )


def _router(root: Path, **policy: object) -> PolicyRouter:
    settings = _settings(root, **policy)
    retrieval = load_newest_retrieval(settings)
    assert retrieval.item_table is not None
    fold = make_fold(retrieval.item_table)
    router = build_router(settings, fold.spec, fold.num_items, retrieval.artifact.version)
    router.refresh()
    return router


def test_users_split_by_the_configured_fractions_and_stay_on_their_arm(root: Path) -> None:
    router = _router(root, traffic={"slateq": 7, "reinforce": 3})
    users = [f"user-{i}" for i in range(20_000)]
    arms = router.assign(users)
    assert set(arms.tolist()) == {0, 1}
    assert abs(np.mean(arms == 1) - 0.3) < 0.015  # binomial sd 0.0032
    np.testing.assert_array_equal(router.assign(users[::-1])[::-1], arms)  # sticky, any order
    assert router.current(0).name == "slateq"
    assert router.current(1).name == "reinforce"
    other = _router(root, traffic={"slateq": 7, "reinforce": 3}, traffic_salt="other")
    assert np.mean(other.assign(users) != arms) > 0.3  # the salt reshuffles users


def test_user_fractions_are_uniform_for_near_identical_ids() -> None:
    u = user_fractions([f"u{i}" for i in range(10_000)], "s")
    counts = np.histogram(u, bins=10, range=(0.0, 1.0))[0]
    assert counts.min() > 850  # expected 1000, sd ~30
    assert counts.max() < 1150


def test_pin_rollback_and_unpin_move_the_serving_version(root: Path) -> None:
    base = root / "policy-slateq"
    first = sorted(p.name for p in base.iterdir())[-1]
    republish(base / first, "zz-second")
    router = _router(root)
    assert router.arms[0].registry.serving_version == "zz-second"
    listing = router.rollback("slateq")
    (arm,) = listing["arms"]
    assert arm["serving_version"] == first
    assert arm["pinned"] == first
    assert router.current().version == f"slateq@{first}"
    assert not router.refresh()  # the pin holds against the newer version
    assert router.arms[0].registry.serving_version == first
    router.unpin("slateq")
    assert router.arms[0].registry.serving_version == "zz-second"
    router.pin("slateq", first)
    assert router.current().version == f"slateq@{first}"


def test_admin_errors_name_the_problem(root: Path) -> None:
    base = root / "policy-slateq"
    (only,) = [p for p in base.iterdir()]
    corrupt_copy(only, "zz-corrupt")
    router = _router(root)
    assert router.arms[0].registry.serving_version == only.name  # corrupt one refused
    with pytest.raises(AdminError) as err:
        router.pin("nope", only.name)
    assert (err.value.status, err.value.field) == (404, "arm")
    with pytest.raises(AdminError) as err:
        router.pin("slateq", "no-such-version")
    assert (err.value.status, err.value.field) == (404, "version")
    with pytest.raises(AdminError) as err:
        router.pin("slateq", "zz-corrupt")
    assert err.value.status == 422
    assert "checksum" in err.value.message
    with pytest.raises(AdminError) as err:
        router.rollback("slateq")  # nothing older than the only usable version
    assert err.value.status == 409
    assert router.arms[0].registry.serving_version == only.name


def test_a_pin_made_on_one_replica_reaches_the_others(root: Path) -> None:
    base = root / "policy-slateq"
    first = sorted(p.name for p in base.iterdir())[-1]
    republish(base / first, "zz-second")
    a, b = _router(root), _router(root)
    shared = InMemoryVersionPins()
    a._pins = b._pins = shared
    a.pin("slateq", first)
    assert b.arms[0].registry.serving_version == "zz-second"
    assert b.refresh()
    assert b.arms[0].registry.serving_version == first
    assert b.describe()["arms"][0]["pinned"] == first


class _DownPins(InMemoryVersionPins):
    def all(self) -> dict[str, str]:
        raise StoreUnavailableError("down")

    def pin(self, arm: str, version: str) -> None:
        raise StoreUnavailableError("down")


def test_pins_survive_an_unreadable_backend_and_a_failed_write_is_a_503(root: Path) -> None:
    base = root / "policy-slateq"
    first = sorted(p.name for p in base.iterdir())[-1]
    republish(base / first, "zz-second")
    router = _router(root)
    router.pin("slateq", first)
    router._pins = _DownPins()
    router.refresh()  # the backend is down: the pin read last stays in force
    assert router.arms[0].registry.serving_version == first
    with pytest.raises(AdminError) as err:
        router.pin("slateq", "zz-second")
    assert err.value.status == 503


def test_readiness_waits_for_every_trained_arm(root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-policies"
    shutil.copytree(root, empty, ignore=shutil.ignore_patterns("policy-*"))
    router = _router(empty, traffic={"slateq": 1, "retrieval": 1}, shadow="reinforce")
    assert router.not_ready() == ["slateq", "reinforce"]
    assert router.current(0).name == "retrieval"  # the fallback answers meanwhile
    shutil.copytree(root / "policy-slateq", empty / "policy-slateq")
    shutil.copytree(root / "policy-reinforce", empty / "policy-reinforce")
    assert router.refresh()
    assert router.not_ready() == []
    assert router.shadow_policy() is not None
    assert router.shadow_policy().name == "reinforce"  # type: ignore[union-attr]
