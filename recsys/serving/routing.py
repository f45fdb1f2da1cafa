"""Which policy answers a request: the A/B split, the shadow policy and version pins.

A service serves one or more *arms*. An arm is a policy name (its newest usable version) or
``name@version`` (that version). Each user goes to one arm by a stable hash of the user id
and a salt, so a user sees the same arm on every request, every replica and every restart,
and the arms' shares of users match the configured fractions. A *shadow* arm, when set,
picks a slate for every request too; it is logged beside the impression and never served.

Operators pin an arm to a version, unpin it, or roll it back to the version before the one
serving, through the admin API. The pin is written to the shared :class:`VersionPins`
(Redis in production) and applied at once on the replica that took the call; every other
replica applies it on its watcher's next round (``policy.reload_interval_s``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.protocols import SlatePolicy, VersionPins
from recsys.serving.policies import PolicyRegistry, RegistryStats
from recsys.types import StoreUnavailableError

_log = logging.getLogger(__name__)


class AdminError(Exception):
    """An admin request that cannot be carried out: ``status`` is its HTTP status."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Arm:
    """One servable arm: its key (``slateq``, ``myopic@v1``), the version its key fixes (if
    any), its share of users and the registry that holds its loaded policy."""

    key: str
    registry: PolicyRegistry
    weight: float = 1.0

    @property
    def fixed(self) -> str | None:
        """The version named in the key, served while the arm has no pin."""
        _, _, version = self.key.partition("@")
        return version or None

    @property
    def trained(self) -> bool:
        """False for ``retrieval``, which needs no artifact to be ready."""
        return self.registry.name != "retrieval"


def user_fractions(user_ids: Sequence[str], salt: str) -> npt.NDArray[np.float64]:
    """Each user's stable position in ``[0, 1)``: the first 8 bytes of
    ``blake2b(salt:user_id)``. A cryptographic hash, so ids that differ in one character
    (``u1``, ``u2``) still land independently."""
    out = np.empty(len(user_ids), np.float64)
    for i, user in enumerate(user_ids):
        digest = hashlib.blake2b(f"{salt}:{user}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


class PolicyRouter:
    """The arms a service serves, their split of users, the shadow arm and the pins."""

    def __init__(
        self,
        arms: Sequence[Arm],
        pins: VersionPins,
        *,
        salt: str = "recsys-ab",
        shadow: Arm | None = None,
    ) -> None:
        if not arms:
            raise ValueError("a router needs at least one arm")
        self.arms = tuple(arms)
        self.shadow = shadow
        self._by_key = {a.key: a for a in self.arms}
        self._pins = pins
        self._last_pins: dict[str, str] = {}
        self._salt = salt
        weights = np.array([a.weight for a in self.arms], np.float64)
        self._edges = np.cumsum(weights / weights.sum())[:-1]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def single(cls, registry: PolicyRegistry, pins: VersionPins | None = None) -> PolicyRouter:
        """A router with one arm (no split, no shadow)."""
        from recsys.store import InMemoryVersionPins

        return cls([Arm(registry.name, registry)], pins or InMemoryVersionPins())

    # -- the request path ---------------------------------------------------------------

    def assign(self, user_ids: Sequence[str]) -> npt.NDArray[np.intp]:
        """The arm index of each user (all 0 with a single arm)."""
        if len(self.arms) == 1:
            return np.zeros(len(user_ids), np.intp)
        return np.searchsorted(self._edges, user_fractions(user_ids, self._salt), side="right")

    def current(self, arm: int = 0) -> SlatePolicy:
        """The policy arm ``arm`` serves now (arm 0 by default)."""
        return self.arms[arm].registry.current()

    def shadow_policy(self) -> SlatePolicy | None:
        """The shadow arm's policy, or ``None`` without a shadow."""
        return None if self.shadow is None else self.shadow.registry.current()

    # -- versions -----------------------------------------------------------------------

    def _all(self) -> tuple[Arm, ...]:
        return self.arms if self.shadow is None else (*self.arms, self.shadow)

    def refresh(self) -> bool:
        """Apply the shared pins and load new versions; True when any arm swapped.

        When the pin backend does not answer, the pins read last stay in force.
        """
        try:
            self._last_pins = self._pins.all()
        except StoreUnavailableError as exc:
            _log.warning("version pins unreadable, keeping the last ones: %s", exc)
        changed = False
        for arm in self._all():
            changed |= arm.registry.refresh(self._last_pins.get(arm.key) or arm.fixed)
        return changed

    def start(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` seconds in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return

        def watch() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # the watcher must outlive any surprise
                    _log.exception("policy watcher failed; retrying")

        self._stop.clear()
        self._thread = threading.Thread(target=watch, name="policy-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the current policies keep serving) and release the pin backend."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._pins.close()

    @property
    def stats(self) -> RegistryStats:
        """Loads and refusals over every arm (the newest refusal's reason last)."""
        total = RegistryStats()
        for arm in self._all():
            s = arm.registry.stats
            total.loaded += s.loaded
            total.refused += s.refused
            total.refused_versions |= s.refused_versions
            total.last_error = s.last_error or total.last_error
        return total

    def not_ready(self) -> list[str]:
        """Arms that need a trained artifact and have none loaded yet."""
        return [a.key for a in self._all() if a.trained and a.registry.serving_version is None]

    # -- admin --------------------------------------------------------------------------

    def _arm(self, key: str) -> Arm:
        if key in self._by_key:
            return self._by_key[key]
        if self.shadow is not None and key == self.shadow.key:
            return self.shadow
        known = ", ".join(a.key for a in self._all())
        raise AdminError(404, "arm", f"no arm {key!r}; this service serves {known}")

    def describe(self) -> dict[str, Any]:
        """Every arm: its share, the version serving, its pin, the versions on disk and the
        ones refused."""

        def one(arm: Arm, role: str) -> dict[str, Any]:
            reg = arm.registry
            return {
                "arm": arm.key,
                "role": role,
                "policy": reg.name,
                "weight": arm.weight if role == "traffic" else 0.0,
                "serving": reg.current().version,
                "serving_version": reg.serving_version,
                "pinned": self._last_pins.get(arm.key),
                "versions": reg.versions(),
                "refused": sorted(reg.stats.refused_versions),
                "last_error": reg.stats.last_error,
            }

        total = sum(a.weight for a in self.arms)
        out = [one(a, "traffic") | {"weight": a.weight / total} for a in self.arms]
        if self.shadow is not None:
            out.append(one(self.shadow, "shadow"))
        return {"arms": out}

    def pin(self, key: str, version: str) -> dict[str, Any]:
        """Serve ``version`` on arm ``key`` here now and on every replica from the next
        watcher round. The version must exist and load (a refused one is a 422)."""
        arm = self._arm(key)
        reg = arm.registry
        if version not in reg.versions():
            raise AdminError(
                404, "version", f"{reg.name} has no version {version!r} under {reg.root}"
            )
        reg.refresh(version)
        if reg.serving_version != version:
            reason = reg.stats.last_error or "refused earlier"
            raise AdminError(422, "version", f"version {version} cannot be served: {reason}")
        self._write(lambda: self._pins.pin(arm.key, version))
        self._last_pins[arm.key] = version
        _log.warning("arm %s pinned to %s", arm.key, version)
        return self.describe()

    def unpin(self, key: str) -> dict[str, Any]:
        """Let arm ``key`` follow its newest version (or the version its key names) again."""
        arm = self._arm(key)
        self._write(lambda: self._pins.unpin(arm.key))
        self._last_pins.pop(arm.key, None)
        arm.registry.refresh(arm.fixed)
        _log.warning("arm %s unpinned", arm.key)
        return self.describe()

    def rollback(self, key: str) -> dict[str, Any]:
        """Pin arm ``key`` to the newest usable version older than the one serving."""
        arm = self._arm(key)
        reg = arm.registry
        now = reg.serving_version
        if now is None:
            raise AdminError(409, "arm", f"{arm.key} serves no artifact version yet")
        older = [v for v in reg.versions() if v < now and v not in reg.stats.refused_versions]
        if not older:
            raise AdminError(409, "arm", f"{arm.key} has no usable version older than {now}")
        return self.pin(key, older[-1])

    @staticmethod
    def _write(op: Callable[[], None]) -> None:
        try:
            op()
        except StoreUnavailableError as exc:
            raise AdminError(503, "store", f"cannot record the pin: {exc}") from exc
