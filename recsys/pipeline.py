"""Offline jobs that connect the simulator to the models: log, train, publish, evaluate.

This sits above the component packages (it imports the simulator, the candidate trainer and
the policy package) and below the CLI and serving composition, which call it. The order of
a run on the project simulator is the order a real deployment goes through:

1. **Logs.** A uniformly random logging policy serves ``log_users`` simulated users, one life
   each, over uniformly sampled candidates (:func:`log_random_sessions`). The event fold runs
   over the simulated events as the online updater would.
2. **Retriever.** A two-tower model is trained on the logged clicks and published as a
   ``retrieval`` artifact with its FAISS index and the catalog's item table
   (:func:`train_retrieval`).
3. **What the policies may know.** Per-item response statistics and the learned reward are
   fit from the same logs; a policy's item features are the catalog columns, those
   statistics and the two-tower item embedding (:func:`policy_features`).
4. **Policies.** SlateQ / REINFORCE are trained on simulated users whose candidates come from
   the retriever and whose user features are folded from their events
   (:class:`SimulatorEnvFactory`, :func:`train_simulator_policy`), the myopic baseline from
   the logs; each is published as a servable ``policy-<name>`` artifact
   (:func:`publish_policy`) with its evaluation on held-out users.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.artifacts import Artifact, latest_version
from recsys.candidates import (
    RETRIEVAL_ARTIFACT,
    LoadedRetrieval,
    catalog_from_dataset,
    dataset_from_clicks,
    load_retrieval,
    roc_auc,
    save_retrieval_artifact,
    train_two_tower,
)
from recsys.candidates.faiss_index import FaissRetriever
from recsys.config import CandidateSettings, CatalogSettings, Settings, SimulatorSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.features import EventFold, FeatureSpec, ItemFeaturizer, ItemTable
from recsys.policy.algorithms.slateq import SlateQPolicy
from recsys.policy.base import BatchSlatePolicy, Tensors
from recsys.policy.batch import SIGNAL_NAMES
from recsys.policy.evaluation.simulator import (
    MYOPIC_CONFIG,
    LoggedData,
    build_baselines,
    evaluate_in_simulator,
    evaluation_users,
    myopic_policy,
    train_myopic,
    validation_users,
)
from recsys.policy.observation import FeatureKind, PolicyFeatures, static_item_table
from recsys.policy.reward.fit import fit_learned_reward
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.reward.spec import RewardSpec, reward_model_from_tensors, reward_model_tensors
from recsys.policy.training.checkpoint import (
    PolicyCheckpoint,
    load_policy_checkpoint,
    save_policy_checkpoint,
)
from recsys.policy.training.config import (
    ALGOS,
    POPULATION,
    SETUP_FIELDS,
    PolicyTrainConfig,
    documented_config,
)
from recsys.policy.training.envs import (
    SimulatedUsers,
    SimulatorSlateEnv,
    UniformCandidates,
    cross_blocks,
)
from recsys.policy.training.sessions import (
    ITEM_STATISTICS_NAMES,
    RandomLogger,
    SessionLog,
    item_statistics,
    record_sessions,
)
from recsys.policy.training.trainer import LogReplay, TrainResult, train_policy
from recsys.types import ArtifactError, FloatArray, IntArray

__all__ = [
    "SIM_POLICY_NAMES",
    "SimulatorEnvFactory",
    "SimulatorSetup",
    "SimulatorSweepTask",
    "SkeletonModels",
    "build_simulator_setup",
    "demo_config",
    "evaluate_sim_policies",
    "fit_myopic",
    "log_random_sessions",
    "make_fold",
    "policy_features",
    "publish_myopic",
    "publish_policy",
    "publish_trained",
    "setup_config",
    "train_retrieval",
    "train_simulator_policy",
    "train_skeleton",
    "world_item_table",
]

#: Names ``recsys evaluate sim`` accepts.
SIM_POLICY_NAMES = (
    "random",
    "popular",
    "myopic",
    "myopic_learned",
    "bandit",
    "slateq",
    "reinforce",
)


# ---- the catalog as the models see it ------------------------------------------------------


def world_item_table(world: SyntheticWorld) -> ItemTable:
    """The observable item attributes of a simulated catalog (never quality or clickbait)."""
    return ItemTable(
        topics=np.asarray(world.item_topics, dtype=np.float32),
        is_ad=np.asarray(world.item_is_ad, dtype=np.bool_),
        bid=np.asarray(world.item_bid, dtype=np.float32),
        length_s=np.asarray(world.item_length_s, dtype=np.float32),
        popularity=np.asarray(world.item_popularity, dtype=np.float32),
    )


def make_fold(table: ItemTable, spec: FeatureSpec | None = None) -> EventFold:
    """The event fold over a catalog (default feature spec for its topic count)."""
    return EventFold(spec or FeatureSpec(num_topics=table.num_topics), table.topics, table.is_ad)


def _observable_items(table: ItemTable) -> ItemFeaturizer:
    values, names = table.observable()
    return ItemFeaturizer(values, table.topics, names)


def log_random_sessions(
    world: SyntheticWorld,
    settings: SimulatorSettings,
    fold: EventFold,
    *,
    users: IntArray,
    max_steps: int,
    seed: int,
    one_life: bool = True,
) -> SessionLog:
    """``users`` of ``world`` served by the uniformly random logger over uniform candidates."""
    population = world.select_users(np.asarray(users, dtype=np.int64))
    table = world_item_table(world)
    simulated = SimulatedUsers(
        population,
        settings,
        seed=seed,
        fold=fold,
        candidates=UniformCandidates(table.is_ad, seed=seed + 1),
        items=_observable_items(table),
    )
    return record_sessions(
        simulated, RandomLogger(), max_steps=max_steps, seed=seed + 2, one_life=one_life
    )


def engaged_clicks(
    log: SessionLog, length_s: npt.ArrayLike, min_fraction: float
) -> npt.NDArray[np.bool_]:
    """``[N, S]`` clicks that were not skips and kept the user on the item for at least
    ``min_fraction`` of its length: the positives a retriever should learn from.

    Every click as a positive would teach the retriever to surface clickbait, which wins
    clicks and loses users (as YouTube weights watch time rather than counting clicks).
    """
    sig = log.signals
    click = sig[..., SIGNAL_NAMES.index("click")] > 0
    skip = sig[..., SIGNAL_NAMES.index("skip")] > 0
    lengths = np.take(np.asarray(length_s, dtype=np.float64), log.items())
    consumed = sig[..., SIGNAL_NAMES.index("dwell_s")] >= min_fraction * lengths
    out: npt.NDArray[np.bool_] = click & ~skip & consumed
    return out


def train_retrieval(
    log: SessionLog,
    world: SyntheticWorld,
    root: Path,
    *,
    settings: CandidateSettings | None = None,
    seed: int = 0,
    min_fraction: float = 0.5,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> LoadedRetrieval:
    """Train the two-tower retriever on the logged engaged clicks and publish it.

    Positives are :func:`engaged_clicks` (at least ``min_fraction`` of the item consumed, not
    skipped). The item tower reads the items' topic mixtures, so never-clicked items are
    embedded from what they are about; the user tower reads a user's recent clicks, which is
    what the event state keeps. A random 10% of logged slates is held out: ``val_auc`` is
    the AUC of the retrieval score between clicked and unclicked items on those slates.
    """
    cfg = settings or CandidateSettings()
    rng = np.random.default_rng(seed)
    lives = log.user * 2**20 + log.life
    uniq, life_idx = np.unique(lives, return_inverse=True)
    val = rng.random(log.num_rows) < 0.1
    items = log.items()
    table = world_item_table(world)
    clicks = log.signals[..., 0] > 0
    positive = engaged_clicks(log, table.length_s, min_fraction)
    train_rows, train_slots = np.nonzero(positive & ~val[:, None])
    dataset = dataset_from_clicks(
        name="simulator",
        user_idx=life_idx[train_rows].astype(np.int64),
        item_idx=items[train_rows, train_slots],
        timestamp=log.step[train_rows].astype(np.float64),
        user_ids=[f"life{i}" for i in range(uniq.shape[0])],
        item_features=table.topics,
        item_is_ad=table.is_ad,
    )
    model = train_two_tower(dataset, cfg, seed=seed, progress=progress)
    val_users = np.repeat(life_idx[val], items.shape[1])
    scores = model.logits(val_users, items[val].reshape(-1))
    metrics = {
        **model.metrics,
        "val_auc": roc_auc(clicks[val].reshape(-1).astype(np.float32), scores),
        "num_val_impressions": float(val.sum() * items.shape[1]),
    }
    model = replace(model, metrics=metrics)
    retriever = FaissRetriever.build(
        model.item_embeddings,
        recall_target=cfg.recall_target,
        queries=model.user_embeddings,
        catalog=catalog_from_dataset(dataset),
        user_encoder=model.user_vector,
        history_encoder=model.history_vectors,
        item_table=table,
        seed=seed,
    )
    artifact = save_retrieval_artifact(
        root,
        model,
        metadata={
            **dict(metadata or {}),
            "candidates": cfg.model_dump(mode="json"),
            "train_positives": int(train_rows.shape[0]),
            "positives": f"clicks not skipped with >= {min_fraction:g} of the item consumed",
            "trained_on": "logged sessions of a uniformly random slate policy",
        },
        retriever=retriever,
        item_table=table,
    )
    return load_retrieval(artifact.path)


#: Principal components of the two-tower item embedding a policy sees: the embedding's main
#: directions for a fraction of the width (the policy networks' cost grows with it).
EMBEDDING_COMPONENTS = 8


def embedding_components(embeddings: FloatArray, k: int) -> FloatArray:
    """The ``k`` leading principal components of item embeddings ``[N, d]``, each with the
    sign that makes its largest coefficient positive (so the result is deterministic)."""
    x = np.asarray(embeddings, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[: min(k, vt.shape[0])]
    flip = np.sign(basis[np.arange(basis.shape[0]), np.argmax(np.abs(basis), axis=1)])
    out: FloatArray = (centred @ (basis * flip[:, None]).T).astype(np.float32)
    return out


def policy_features(
    table: ItemTable,
    spec: FeatureSpec,
    kind: FeatureKind,
    *,
    statistics: FloatArray | None,
    retrieval: LoadedRetrieval,
    num_ads: int,
    cross: bool = True,
) -> PolicyFeatures:
    """How a policy trained on this setup observes: catalog columns, response statistics
    and the two-tower item embedding (its leading principal components) per item, crossed
    with the user's per-topic blocks."""
    observable, names = table.observable()
    emb = embedding_components(retrieval.model.item_embeddings, EMBEDDING_COMPONENTS)
    values, all_names = static_item_table(
        observable,
        names,
        (statistics, ITEM_STATISTICS_NAMES),
        (emb, tuple(f"emb_pc{k}" for k in range(emb.shape[1]))),
    )
    blocks, block_names = cross_blocks(kind, spec) if cross else ((), ())
    return PolicyFeatures(
        kind=kind,
        spec=spec,
        items=ItemFeaturizer(values, table.topics, all_names, blocks, block_names),
        is_ad=table.is_ad,
        num_ads=num_ads,
        retrieval_version=retrieval.artifact.version,
    )


# ---- the simulator setup -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SimulatorSetup:
    """Everything learned from the logging policy before RL, shared by every run on it."""

    config: PolicyTrainConfig
    world: SyntheticWorld
    settings: SimulatorSettings
    fold: EventFold
    log: SessionLog = field(repr=False)
    retrieval: LoadedRetrieval = field(repr=False)
    statistics: FloatArray | None = field(repr=False)
    reward_tensors: Tensors = field(repr=False)
    reward_report: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def table(self) -> ItemTable:
        """The catalog's observable item table."""
        return world_item_table(self.world)

    @property
    def reward_model(self) -> LearnedRewardModel:
        """The learned reward fit from the logs."""
        return reward_model_from_tensors(self.reward_tensors)

    def features(self, kind: FeatureKind | None = None) -> PolicyFeatures:
        """How policies of this setup observe (``kind`` defaults to the config's)."""
        return policy_features(
            self.table,
            self.fold.spec,
            kind or self.config.features,
            statistics=self.statistics,
            retrieval=self.retrieval,
            num_ads=self.config.num_ads,
            cross=self.config.cross_features,
        )

    def logged(self, kind: FeatureKind | None = None) -> LoggedData:
        """The logs as observations of ``kind``."""
        return LoggedData(
            self.log, self.features(kind).items, kind or self.config.features, self.table.is_ad
        )

    def make_users(
        self, users: IntArray, kind: FeatureKind | None = None
    ) -> Callable[[int], SimulatedUsers]:
        """``seed -> SimulatedUsers`` over population ``users`` (evaluation)."""
        population = self.world.select_users(np.asarray(users, dtype=np.int64))
        features = self.features(kind)

        def build(seed: int) -> SimulatedUsers:
            return SimulatedUsers(
                population,
                self.settings,
                seed=seed,
                fold=self.fold,
                candidates=self.retrieval.retriever,
                items=features.items,
                features=features.kind,
                num_ads=self.config.num_ads,
            )

        return build


def setup_key(config: PolicyTrainConfig, candidates: CandidateSettings) -> str:
    """What a setup's logs and retriever depend on, as a short hash: runs with the same key
    share one retrieval artifact (so every policy trained on it can be served with it)."""
    parts = {
        "catalog": config.catalog().model_dump(),
        "simulator": config.simulator_settings().model_dump(),
        "log_users": config.log_users,
        "log_max_steps": config.log_max_steps,
        "seed": config.seed,
        "candidates": candidates.model_dump(mode="json", exclude={"data_dir"}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _existing_retrieval(root: Path, key: str) -> LoadedRetrieval | None:
    """The newest retrieval artifact under ``root`` built for setup ``key``, if any."""
    base = Path(root) / RETRIEVAL_ARTIFACT
    if not base.is_dir():
        return None
    for path in sorted(base.iterdir(), reverse=True):
        if path.name.startswith(".") or not (path / "manifest.json").is_file():
            continue
        try:
            meta = json.loads((path / "manifest.json").read_text()).get("metadata", {})
        except ValueError:
            continue
        if meta.get("setup_key") == key:
            try:
                return load_retrieval(path)
            except ArtifactError:
                continue
    return None


def catalog_config(config: PolicyTrainConfig, catalog: CatalogSettings) -> PolicyTrainConfig:
    """``config`` on the catalog of ``catalog`` (items, topics, seed; the population is the
    training population whatever ``catalog.num_users`` says)."""
    return replace(
        config, num_items=catalog.num_items, num_topics=catalog.num_topics, world_seed=catalog.seed
    )


def setup_config(config: PolicyTrainConfig, setup: PolicyTrainConfig) -> PolicyTrainConfig:
    """``config``'s algorithm and budget on ``setup``'s simulator (:data:`SETUP_FIELDS`)."""
    return replace(config, **{name: getattr(setup, name) for name in SETUP_FIELDS})


def train_simulator_retrieval(
    config: PolicyTrainConfig,
    root: Path,
    *,
    candidates: CandidateSettings | None = None,
    progress: bool = False,
) -> LoadedRetrieval:
    """Only the retriever of ``config``'s setup (logs, then the two-tower model), reused when
    one for the same setup exists under ``root``."""
    cand = candidates or CandidateSettings()
    key = setup_key(config, cand)
    existing = _existing_retrieval(root, key)
    if existing is not None:
        return existing
    world = make_world(config.catalog())
    log = log_random_sessions(
        world,
        config.simulator_settings(),
        make_fold(world_item_table(world)),
        users=np.arange(config.log_users, dtype=np.int64),
        max_steps=config.log_max_steps,
        seed=config.seed + 17,
    )
    return train_retrieval(
        log,
        world,
        root,
        settings=cand,
        seed=config.seed,
        metadata={"catalog": config.catalog().model_dump(), "setup_key": key},
        progress=progress,
    )


def build_simulator_setup(
    config: PolicyTrainConfig,
    root: Path,
    *,
    candidates: CandidateSettings | None = None,
    progress: bool = False,
) -> SimulatorSetup:
    """World, logged random sessions, the retriever, item statistics and the learned reward,
    for every run of ``config``'s simulator.

    The retriever is published under ``root``; an existing one built for the same setup
    (:func:`setup_key`) is reused, so policies trained one after the other all serve with
    the retrieval artifact they were trained against.
    """
    cand = candidates or CandidateSettings()
    key = setup_key(config, cand)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    world = make_world(config.catalog())
    settings = config.simulator_settings()
    fold = make_fold(world_item_table(world))
    log = log_random_sessions(
        world,
        settings,
        fold,
        users=np.arange(config.log_users, dtype=np.int64),
        max_steps=config.log_max_steps,
        seed=config.seed + 17,
    )
    times["log"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    retrieval = _existing_retrieval(root, key) or train_retrieval(
        log,
        world,
        root,
        settings=cand,
        seed=config.seed,
        metadata={"catalog": config.catalog().model_dump(), "setup_key": key},
        progress=progress,
    )
    times["retrieval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = item_statistics(log, world.item_length_s) if config.item_statistics else None
    fit = fit_learned_reward(log, seed=config.seed, objective=config.reward_objective)
    times["reward"] = time.perf_counter() - t0
    return SimulatorSetup(
        config=config,
        world=world,
        settings=settings,
        fold=fold,
        log=log,
        retrieval=retrieval,
        statistics=stats,
        reward_tensors=reward_model_tensors(fit.model),
        reward_report=dict(fit.report),
        seconds=times,
    )


@dataclass(frozen=True)
class SimulatorEnvFactory:
    """Builds worker ``k``'s simulator env: its own slice of the population, its own seed.

    A picklable dataclass rather than a closure, so Ray ships it to actors cheaply: the world
    is re-drawn from its seed and the retriever loaded from its artifact on the worker.
    """

    catalog: dict[str, Any]
    settings: dict[str, Any]
    first_user: int
    users: int
    seed: int
    kind: FeatureKind
    num_ads: int
    retrieval_path: str
    spec: dict[str, Any]
    statistics: FloatArray | None = None
    cross: bool = True

    def __call__(self, worker_index: int) -> SimulatorSlateEnv:
        world = make_world(CatalogSettings(**self.catalog))
        start = self.first_user + worker_index * self.users
        population = world.select_users(np.arange(start, start + self.users, dtype=np.int64))
        table = world_item_table(world)
        spec = FeatureSpec.from_dict(self.spec)
        retrieval = load_retrieval(Path(self.retrieval_path))
        features = policy_features(
            table,
            spec,
            self.kind,
            statistics=self.statistics,
            retrieval=retrieval,
            num_ads=self.num_ads,
            cross=self.cross,
        )
        users = SimulatedUsers(
            population,
            SimulatorSettings(**self.settings),
            seed=self.seed + 7919 * worker_index,
            fold=make_fold(table, spec),
            candidates=retrieval.retriever,
            items=features.items,
            features=self.kind,
            num_ads=self.num_ads,
        )
        return SimulatorSlateEnv(users)


def simulator_env_factory(
    setup: SimulatorSetup, config: PolicyTrainConfig, seed: int
) -> SimulatorEnvFactory:
    """Training envs: the ``workers * users`` users right after the logging users."""
    config.check_population()
    return SimulatorEnvFactory(
        catalog=config.catalog().model_dump(),
        settings=config.simulator_settings().model_dump(),
        first_user=config.log_users,
        users=config.users,
        seed=seed,
        kind=config.features,
        num_ads=config.num_ads,
        retrieval_path=str(setup.retrieval.artifact.path),
        spec=setup.fold.spec.to_dict(),
        statistics=setup.statistics,
        cross=config.cross_features,
    )


def train_simulator_policy(
    config: PolicyTrainConfig,
    setup: SimulatorSetup,
    *,
    checkpoints: Path | None = None,
    resume: Path | None = None,
    progress: bool = False,
    output_dir: Path | None = None,
    on_iteration: Callable[..., None] | None = None,
    ray_address: str | None = None,
) -> TrainResult:
    """Train ``config`` on the setup's simulated users (retriever candidates, ``config.features``
    user features), SlateQ mixing the logs into its minibatches; rollout actors on the Ray
    cluster at ``ray_address`` (``RAY_ADDRESS``, or a local Ray, by default)."""
    features = setup.features(config.features)
    spec = RewardSpec(
        config.reward,
        config.revenue_weight,
        setup.reward_tensors if config.reward == "learned" else None,
    )
    start = 0 if resume is None else load_policy_checkpoint(resume).iteration
    replay = LogReplay(setup.log, features.items, config.features, setup.table.is_ad, spec.build())
    return train_policy(
        config,
        env_factory=simulator_env_factory(setup, config, seed=config.seed + 101 * start),
        artifacts_root=checkpoints,
        resume=resume,
        progress=progress,
        output_dir=output_dir,
        reward_tensors=setup.reward_tensors,
        reward_report=setup.reward_report,
        log_replay=replay,
        features=features,
        on_iteration=on_iteration,
        ray_address=ray_address,
    )


def publish_policy(
    root: Path,
    name: str,
    policy: Any,
    config: PolicyTrainConfig,
    setup: SimulatorSetup,
    *,
    kind: FeatureKind | None = None,
    iteration: int = 0,
    reward_scale: float = 1.0,
    curve: Sequence[Mapping[str, float]] = (),
    evaluation: Mapping[str, Any] | None = None,
    serve_as: str | None = None,
) -> Artifact:
    """Write a servable ``policy-<name>`` artifact: weights, the learned reward, how the
    policy observes (feature spec, item table, retrieval version), config and evaluation.

    ``serve_as="myopic_greedy"`` marks a ``gamma = 0`` SlateQ served through the greedy
    slate optimiser (the myopic baseline)."""
    features = setup.features(kind or config.features)
    user_dim = features.spec.user_dim if features.kind == "event" else _latent_dim(setup)
    extra: dict[str, Any] = {"evaluation": dict(evaluation or {})}
    if serve_as is not None:
        extra["serve_as"] = serve_as
    return save_policy_checkpoint(
        root,
        policy,
        config,
        iteration=iteration,
        dims=(user_dim, features.items.dim, config.slate_size),
        reward_scale=reward_scale,
        features=features,
        reward_tensors=setup.reward_tensors,
        curve=curve,
        reward_report=setup.reward_report,
        extra_metadata=extra,
        name=f"policy-{name}",
    )


def _latent_dim(setup: SimulatorSetup) -> int:
    return 3 * setup.world.num_topics + 5


def myopic_config(config: PolicyTrainConfig) -> PolicyTrainConfig:
    """The training config a published myopic baseline is described by (a ``gamma = 0``
    SlateQ without the immediate head, like :data:`MYOPIC_CONFIG`)."""
    return replace(
        config,
        algo="slateq",
        gamma=MYOPIC_CONFIG.gamma,
        hidden=MYOPIC_CONFIG.hidden,
        lr=MYOPIC_CONFIG.lr,
        immediate_head=False,
    )


def publish_trained(
    root: Path,
    name: str,
    result: TrainResult,
    setup: SimulatorSetup,
    *,
    evaluation: Mapping[str, Any] | None = None,
) -> Artifact:
    """Publish a finished training run (:func:`train_simulator_policy`) as ``policy-<name>``,
    with its config, iteration, reward scale and learning curve."""
    return publish_policy(
        root,
        name,
        result.policy,
        result.config,
        setup,
        iteration=result.iterations,
        reward_scale=result.reward_scale,
        curve=result.curve,
        evaluation=evaluation,
    )


def fit_myopic(
    config: PolicyTrainConfig, setup: SimulatorSetup
) -> tuple[BatchSlatePolicy, SlateQPolicy]:
    """The dwell-greedy myopic baseline fit from the setup's logs, as seen through
    ``config.features``: ``(policy, the gamma = 0 SlateQ model it serves through)``."""
    return train_myopic(
        setup.logged(config.features),
        None,
        slate_size=config.slate_size,
        sampler=config.sampler("greedy"),
        seed=config.seed,
    )


def publish_myopic(
    root: Path,
    model: SlateQPolicy,
    config: PolicyTrainConfig,
    setup: SimulatorSetup,
    *,
    name: str = "myopic",
    evaluation: Mapping[str, Any] | None = None,
) -> Artifact:
    """Publish :func:`fit_myopic`'s model as ``policy-<name>``, served through the greedy
    slate optimiser."""
    return publish_policy(
        root,
        name,
        model,
        myopic_config(config),
        setup,
        evaluation=evaluation,
        serve_as="myopic_greedy",
    )


def served_policy(ckpt: PolicyCheckpoint) -> BatchSlatePolicy:
    """The policy a checkpoint serves (the myopic greedy wrapper for ``serve_as``)."""
    if ckpt.artifact.metadata.get("serve_as") == "myopic_greedy":
        assert isinstance(ckpt.policy, SlateQPolicy)
        return myopic_policy(ckpt.policy, ckpt.config.sampler("greedy"), "myopic")
    return ckpt.policy


@dataclass(frozen=True)
class PublishedPolicy:
    """A trained and published policy: its artifact, evaluation and training run."""

    artifact: Artifact
    evaluation: dict[str, Any]
    result: TrainResult | None = None


def train_and_publish(
    algo: str,
    config: PolicyTrainConfig,
    root: Path,
    *,
    resume: Path | None = None,
    progress: bool = False,
    output_dir: Path | None = None,
    candidates: CandidateSettings | None = None,
    eval_users: int = 300,
    eval_max_steps: int = 100,
    eval_seed: int = 2024,
    ray_address: str | None = None,
) -> PublishedPolicy:
    """What ``recsys train policy`` does: build (or reuse) the simulator setup under
    ``root``, train ``algo`` (``slateq``, ``reinforce``, or the ``myopic`` baseline from the
    logs), evaluate it on ``eval_users`` validation users and publish ``policy-<algo>``
    (``policy-<algo>-latent`` for a latent-feature policy: the simulator can evaluate it,
    a service cannot serve it, so it never takes the place of a servable one).

    Intermediate checkpoints go to ``checkpoint-<algo>`` under ``root`` (``resume`` takes
    one); only the finished, evaluated policy is published where serving looks. With
    ``config.workers >= 2`` the rollout actors run on the Ray cluster at ``ray_address``.
    """
    if algo not in (*ALGOS, "myopic"):
        raise ValueError(f"algo must be slateq, reinforce or myopic, got {algo!r}")
    if algo == "myopic" and resume is not None:
        raise ValueError("the myopic baseline is fit from the logs; there is nothing to resume")
    users = validation_users(eval_users)  # refused before the setup is built
    name = algo if config.features == "event" else f"{algo}-latent"
    setup = build_simulator_setup(config, root, candidates=candidates, progress=progress)
    make_users = setup.make_users(users)
    if algo == "myopic":
        policy, model = fit_myopic(config, setup)
        evaluation = evaluate_in_simulator(
            {"myopic": policy}, make_users=make_users, max_steps=eval_max_steps, seed=eval_seed
        )
        evaluation.pop("_per_user")
        art = publish_myopic(root, model, config, setup, name=name, evaluation=evaluation)
        return PublishedPolicy(art, evaluation)
    result = train_simulator_policy(
        replace(config, algo=algo),  # type: ignore[arg-type]  # checked against ALGOS
        setup,
        checkpoints=root,
        resume=resume,
        progress=progress,
        output_dir=output_dir,
        ray_address=ray_address,
    )
    evaluation = evaluate_in_simulator(
        {algo: result.policy}, make_users=make_users, max_steps=eval_max_steps, seed=eval_seed
    )
    evaluation.pop("_per_user")
    art = publish_trained(root, name, result, setup, evaluation=evaluation)
    return PublishedPolicy(art, evaluation, result)


# ---- evaluation of named policies (what `recsys evaluate sim` calls) -----------------------


def evaluate_sim_policies(
    names: Sequence[str],
    root: Path,
    *,
    users: int = 1000,
    max_steps: int = 200,
    seed: int = 2024,
    config: PolicyTrainConfig | None = None,
    candidates: CandidateSettings | None = None,
    checkpoints: Mapping[str, Path] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate named policies on ``users`` held-out simulator users (one life each).

    The setup (logs, retriever, statistics, learned reward) of ``config`` (default: the
    documented SlateQ config) is built under ``root``. Baselines are trained from its logs;
    ``slateq`` / ``reinforce`` come from ``checkpoints[name]``, else from the newest
    ``policy-<name>`` artifact under ``root`` (refused when its item features are not the
    setup's), else are trained on the fly: documented settings and budget of the algorithm,
    on this setup's simulator (:func:`setup_config`). JSON-ready; ratios of every policy's
    return to ``myopic`` and ``random`` (when evaluated) included.
    """
    unknown = [n for n in names if n not in SIM_POLICY_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(SIM_POLICY_NAMES)}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    eval_users = evaluation_users(users)
    base = config or documented_config("slateq")
    setup = build_simulator_setup(base, root, candidates=candidates, progress=progress)
    policies: dict[str, BatchSlatePolicy] = {}
    sources: dict[str, str] = {}
    if any(n not in ALGOS for n in names):
        baselines = build_baselines(
            setup.logged(),
            setup.reward_model,
            num_items=setup.world.num_items,
            slate_size=base.slate_size,
            sampler=base.sampler("greedy"),
            seed=base.seed,
        )
        policies.update({n: baselines[n] for n in names if n in baselines})
        sources.update({n: "trained from the logging policy's sessions" for n in policies})
    for algo in ALGOS:
        if algo not in names:
            continue
        path = (checkpoints or {}).get(algo)
        if path is None:
            try:
                path = latest_version(root, f"policy-{algo}")
            except ArtifactError:
                path = None
        if path is not None:
            ckpt = load_policy_checkpoint(path)
            mine = setup.features(ckpt.config.features)
            theirs = None if ckpt.features is None else ckpt.features.items.table
            if (
                theirs is None
                or theirs.shape != mine.items.table.shape
                or not np.allclose(theirs, mine.items.table)
            ):
                raise ValueError(
                    f"checkpoint {path} was trained on another simulator setup than the "
                    "evaluation's (item features differ)"
                )
            policies[algo] = served_policy(ckpt)
            sources[algo] = f"checkpoint {path} (iteration {ckpt.iteration})"
        else:
            cfg = setup_config(replace(documented_config(algo), reward="learned"), base)
            policies[algo] = train_simulator_policy(cfg, setup, progress=progress).policy
            sources[algo] = f"trained on the fly ({cfg.iterations} iterations)"
    ordered = {n: policies[n] for n in names}
    ratios = [(n, b) for b in ("myopic", "random") if b in ordered for n in ordered if n != b]
    out = evaluate_in_simulator(
        ordered,
        make_users=setup.make_users(eval_users),
        max_steps=max_steps,
        seed=seed,
        ratios=ratios,
    )
    out.pop("_per_user")
    out["sources"] = sources
    return out


# ---- sweeps on the simulator (`recsys tune policy` without --env) ---------------------------


@dataclass(eq=False)
class SimulatorSweepTask:
    """The project simulator as a sweep task (:class:`recsys.policy.tuning.SweepTask`).

    Trials train on the setup's training users exactly as ``recsys train policy`` does
    (:func:`train_simulator_policy`: retriever candidates, event features, the learned
    reward, SlateQ's log replay). Validation scores the last ``validation_users`` users of
    the population (:func:`validation_users`), test the first ``test_users`` above the
    training half (:func:`evaluation_users`, the docs' test users): one life each, at most
    ``max_steps`` steps, greedy slates, seeded by ``seed``, the return in hidden lifetime
    value, as in the experiments. The setup's fields (world, logs, retriever) are
    :data:`SETUP_FIELDS`, fixed for every trial.

    The setup is built once by the caller and shipped to every trial: pickling leaves out the
    retriever (its FAISS index does not pickle), which the trial reloads from its artifact.
    """

    setup: SimulatorSetup
    validation_users: int = 200
    test_users: int = 1000
    max_steps: int = 200
    seed: int = 2024
    fixed_fields: tuple[str, ...] = field(default=SETUP_FIELDS, init=False)

    def __post_init__(self) -> None:
        validation_users(self.validation_users)  # refused here, not in every trial
        evaluation_users(self.test_users)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        setup: SimulatorSetup = state.pop("setup")
        state["_setup"] = {
            f.name: getattr(setup, f.name) for f in fields(setup) if f.name != "retrieval"
        }
        # Absolute: Tune runs each trial in a folder of its own.
        state["_retrieval"] = str(Path(setup.retrieval.artifact.path).resolve())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        parts = state.pop("_setup")
        retrieval = load_retrieval(Path(state.pop("_retrieval")))
        state["setup"] = SimulatorSetup(**parts, retrieval=retrieval)
        self.__dict__.update(state)

    def _users(self, users: IntArray) -> dict[str, Any]:
        return {"users": [int(users[0]), int(users[-1]) + 1], "max_steps": self.max_steps}

    def describe(self) -> dict[str, Any]:
        """Where the trials train, validate and test (JSON-ready)."""
        config = self.setup.config
        return {
            "env": "project simulator",
            "training_users": [config.log_users, POPULATION // 2],
            "validation": self._users(validation_users(self.validation_users)),
            "test": self._users(evaluation_users(self.test_users)),
            "seed": self.seed,
            "retrieval": str(self.setup.retrieval.artifact.path),
            "return_definition": "hidden lifetime value: dwell minutes over one life (until "
            f"churn or max_steps={self.max_steps}), greedy slates",
        }

    def check(self, config: PolicyTrainConfig) -> None:
        """Training users within the training half; the setup's own simulator."""
        config.check_population()
        differ = [f for f in SETUP_FIELDS if getattr(config, f) != getattr(self.setup.config, f)]
        if differ:
            raise ValueError(f"{', '.join(differ)} differ from the shared simulator setup's")

    def train(
        self,
        config: PolicyTrainConfig,
        *,
        artifacts_root: Path,
        on_iteration: Callable[..., None],
    ) -> TrainResult:
        return train_simulator_policy(
            config, self.setup, checkpoints=artifacts_root, on_iteration=on_iteration
        )

    def _evaluate(self, policy: BatchSlatePolicy, users: IntArray) -> dict[str, Any]:
        result = evaluate_in_simulator(
            {"policy": policy},
            make_users=self.setup.make_users(users),
            max_steps=self.max_steps,
            seed=self.seed,
        )
        summary: dict[str, Any] = result["policies"]["policy"]
        return summary

    def validate(self, policy: BatchSlatePolicy) -> dict[str, Any]:
        """Mean return (and clicks, revenue, ...) on the validation users only."""
        return self._evaluate(policy, validation_users(self.validation_users))

    def test(self, policy: BatchSlatePolicy) -> dict[str, Any]:
        """The same on the test users (a sweep calls it once, for its winner)."""
        out = self._evaluate(policy, evaluation_users(self.test_users))
        return {**self._users(evaluation_users(self.test_users)), **out}


# ---- the demo ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkeletonModels:
    """What the demo serves: its world, the retrieval artifact and the policy artifacts."""

    world: SyntheticWorld
    retrieval: Artifact
    policies: dict[str, Artifact]


def demo_config(settings: Settings) -> PolicyTrainConfig:
    """A small SlateQ run on the demo's catalog: trained in seconds, served by the demo."""
    return replace(
        catalog_config(documented_config("slateq"), settings.catalog),
        log_users=1024,
        log_max_steps=60,
        users=512,
        iterations=6,
        steps_per_iteration=5,
        updates_per_iteration=10,
        pretrain_updates=60,
        batch_size=256,
        seed=settings.catalog.seed,
    )


def train_skeleton(
    settings: Settings, progress: bool = False, config: PolicyTrainConfig | None = None
) -> SkeletonModels:
    """Logs, retriever and a small SlateQ policy plus the myopic baseline for the demo's
    catalog (``config``, default :func:`demo_config`), all published under
    ``settings.artifacts.root``."""
    root = settings.artifacts.root
    config = config or demo_config(settings)
    setup = build_simulator_setup(config, root, candidates=settings.candidates, progress=progress)
    result = train_simulator_policy(config, setup, progress=progress)
    slateq = publish_trained(root, "slateq", result, setup)
    _, model = fit_myopic(config, setup)
    myopic = publish_myopic(root, model, config, setup)
    return SkeletonModels(
        world=make_world(settings.catalog),
        retrieval=setup.retrieval.artifact,
        policies={"slateq": slateq, "myopic": myopic},
    )
