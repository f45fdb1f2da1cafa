"""The served slate policy: a trained policy artifact turned into one slate per request, and
the registry that swaps in newly published versions while requests keep flowing.

:class:`ServedPolicy` builds the observation a policy was trained on (its
:class:`~recsys.policy.observation.PolicyFeatures`: the request-time user features from the
event fold, the candidates' static item features and user-item cross features), asks the
policy for one slate in one batched forward (a batch of one request; torch's thread count is
pinned by the process that serves), and returns it with the exact per-slot propensities of
the exploring sampler it served with.

:class:`PolicyRegistry` loads the newest ``policy-<name>`` artifact, checks it can be served
here (checksums, an event-feature policy, the system's feature spec, the catalog's size, the
retrieval artifact it was trained against) and serves it; the router's watcher
(:mod:`recsys.serving.routing`) looks for newer or pinned versions and swaps them in
atomically, off the request path. A version that fails any check
is refused, logged and counted, and the previous one keeps answering. Without any usable
artifact the registry serves the configured fallback (Plackett-Luce over retrieval scores).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recsys.artifacts import MANIFEST
from recsys.features import FeatureSpec
from recsys.pipeline import served_policy
from recsys.policy.algorithms.myopic import MyopicPolicy
from recsys.policy.base import BatchSlatePolicy, ExploringPolicy, SlateSampler
from recsys.policy.observation import PolicyFeatures
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.protocols import SlatePolicy
from recsys.types import (
    ArtifactError,
    CandidateBatch,
    Candidates,
    FloatArray,
    InvalidRequestError,
    Slate,
)

_log = logging.getLogger(__name__)


class ServedPolicy:
    """One trained policy serving single requests (:class:`recsys.protocols.SlatePolicy`).

    ``sampler`` replaces the policy's own exploring sampler when given (the service's
    exploration setting); the propensities returned are always those of the sampler that
    drew the slate.
    """

    def __init__(
        self,
        policy: BatchSlatePolicy,
        features: PolicyFeatures,
        *,
        name: str,
        version: str,
        sampler: SlateSampler | None = None,
    ) -> None:
        if sampler is not None:
            if not isinstance(policy, ExploringPolicy):
                raise ValueError(f"policy {name} cannot change its sampler")
            policy.set_sampler(sampler)
        self.policy = policy
        self.features = features
        self.name = name
        self.version = version

    @property
    def num_ads(self) -> int:
        """Ads among the candidates the policy was trained with (the retriever's ad block)."""
        return self.features.num_ads

    def select(
        self,
        user_features: FloatArray,
        candidates: Candidates,
        slate_size: int,
        rng: np.random.Generator,
    ) -> Slate:
        """One slate with exact propensities; a slate that cannot be filled is a 422."""
        ids = np.asarray(candidates.item_ids, dtype=np.int64)
        batch = CandidateBatch(
            item_ids=ids[None, :],
            scores=np.asarray(candidates.scores, np.float32)[None, :],
            mask=np.ones((1, ids.shape[0]), dtype=np.bool_),
            is_ad=np.asarray(candidates.is_ad, np.bool_)[None, :],
        )
        return self.select_batch(np.asarray(user_features)[None, :], batch, slate_size, rng)[0]

    def select_batch(
        self,
        user_features: FloatArray,
        candidates: CandidateBatch,
        slate_size: int,
        rng: np.random.Generator,
    ) -> list[Slate]:
        """One slate per row of ``candidates`` from one batched forward of the policy.

        Padding (``mask`` False) is never chosen. Raises :class:`InvalidRequestError` when a
        row's slate cannot be filled (e.g. the ads cap leaves too few eligible candidates); the
        caller isolates the offending row by retrying rows alone.
        """
        mask = np.asarray(candidates.mask, dtype=np.bool_)
        ids = np.where(mask, candidates.item_ids, 0).astype(np.int64)  # padding: any valid id
        obs = self.features.obs(np.asarray(user_features, np.float32), ids, mask)
        try:
            # A served policy never trains: inference mode skips autograd's bookkeeping
            # (version counters, view tracking), a fifth of a small network's forward here.
            with torch.inference_mode():
                action = self.policy.act(obs, int(slate_size), rng, explore=True)
        except ValueError as exc:
            raise InvalidRequestError("slate_size", str(exc)) from exc
        picked = np.take_along_axis(ids, action.slates, axis=1)
        scores = (
            np.zeros(action.slates.shape, dtype=np.float32)
            if action.scores is None
            else action.scores.astype(np.float32)
        )
        return Slate.rows(picked, scores, action.propensities, self.name, self.version)


def load_served_policy(
    path: Path,
    *,
    name: str,
    spec: FeatureSpec,
    num_items: int,
    retrieval_version: str,
    exploration: str | None = None,
    epsilon: float = 0.1,
    temperature: float = 1.0,
) -> ServedPolicy:
    """Load one policy artifact for serving, or raise :class:`ArtifactError` saying why not.

    The artifact's checksums are verified on load; then it must observe through event
    features (latent simulator features do not exist in production), under the system's
    feature spec, over a catalog of ``num_items`` items, with candidates from the retrieval
    artifact ``retrieval_version`` that is loaded here. ``exploration`` (``greedy``,
    ``epsilon`` or ``boltzmann``) replaces the policy's own exploring sampler, keeping its ad
    load.
    """
    try:
        ckpt = load_policy_checkpoint(path)
    except (ArtifactError, ValueError, KeyError, OSError) as exc:
        raise ArtifactError(f"cannot load policy {path}: {exc}") from exc
    features = ckpt.features
    where = f"{ckpt.artifact.name}/{ckpt.artifact.version}"
    if features is None:
        raise ArtifactError(f"{where} carries no feature description: it cannot be served")
    if features.kind != "event":
        raise ArtifactError(f"{where} observes {features.kind} features, which only exist in "
                            "the simulator")  # fmt: skip
    problem = spec.incompatibility(features.spec)
    if problem is not None:
        raise ArtifactError(f"{where} was trained on another feature spec: {problem}")
    if features.num_items != num_items:
        raise ArtifactError(
            f"{where} knows {features.num_items} items, the catalog has {num_items}"
        )
    if features.retrieval_version != retrieval_version:
        raise ArtifactError(
            f"{where} was trained on candidates of retrieval {features.retrieval_version}, "
            f"this service retrieves with {retrieval_version}"
        )
    sampler = None
    if exploration is not None:
        sampler = ckpt.config.sampler(exploration, epsilon=epsilon, temperature=temperature)
    return ServedPolicy(
        served_policy(ckpt),
        features,
        name=name,
        version=f"{name}@{ckpt.artifact.version}",
        sampler=sampler,
    )


@dataclass
class RegistryStats:
    """What the registry did: versions loaded and refused, the last refusal's reason."""

    loaded: int = 0
    refused: int = 0
    last_error: str = ""
    refused_versions: set[str] = field(default_factory=set)


class PolicyRegistry:
    """Serves one version of ``policy-<name>`` under ``root``: the newest usable one, or the
    one it is pinned to, hot-swapping when that changes.

    ``loader(path)`` turns an artifact directory into a :class:`ServedPolicy` (raising
    :class:`ArtifactError` when it cannot be served); ``fallback`` answers while no artifact
    is usable. :meth:`current` is what every request reads: one attribute read, so a swap
    never fails a request. :class:`recsys.serving.routing.PolicyRouter` owns the watcher that
    calls :meth:`refresh`.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        loader: Callable[[Path], ServedPolicy],
        fallback: SlatePolicy,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self._loader = loader
        self._current: SlatePolicy = fallback
        self._current_path: Path | None = None
        self.stats = RegistryStats()
        self._lock = threading.Lock()

    @property
    def _base(self) -> Path:
        return self.root / f"policy-{self.name}"

    def current(self) -> SlatePolicy:
        """The policy serving right now."""
        return self._current

    @property
    def serving_version(self) -> str | None:
        """The artifact version serving now (``None`` while the fallback answers)."""
        return None if self._current_path is None else self._current_path.name

    def versions(self) -> list[str]:
        """Complete versions of the artifact on disk, oldest first (names sort by time)."""
        if not self._base.is_dir():
            return []
        return sorted(
            p.name
            for p in self._base.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def refresh(self, pin: str | None = None) -> bool:
        """Serve ``pin`` if given, else the newest usable version, when it differs from what
        serves now; True when a new version now serves.

        A refused version is remembered and not tried again (it will not fix itself); without
        a pin the next older version is tried instead (so a replica that starts next to a
        corrupt newest version still serves a trained policy), and a version already serving
        keeps serving.
        """
        with self._lock:
            if pin is not None:
                if not (self._base / pin / MANIFEST).is_file():
                    self.stats.last_error = f"pinned version {pin} of {self.name} does not exist"
                    return False
                candidates = [pin]
            else:
                candidates = self.versions()[::-1]
            for version in candidates:
                path = self._base / version
                if path == self._current_path:
                    return False
                if version in self.stats.refused_versions:
                    continue
                if self._load(path):
                    return True
            return False

    def _load(self, path: Path) -> bool:
        try:
            policy = self._loader(path)
        except ArtifactError as exc:
            self.stats.refused += 1
            self.stats.refused_versions.add(path.name)
            self.stats.last_error = str(exc)
            _log.error("refused policy %s: %s", path, exc)
            return False
        self._current = policy
        self._current_path = path
        self.stats.loaded += 1
        _log.info("serving %s", policy.version)
        return True


def retrieval_fallback(temperature: float, version: str) -> MyopicPolicy:
    """Plackett-Luce over the retrieval scores: what serves before any policy artifact."""
    policy = MyopicPolicy(temperature, version=f"retrieval@{version}")
    policy.name = "retrieval"
    return policy
