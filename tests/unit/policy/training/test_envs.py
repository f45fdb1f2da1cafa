"""Env adapters: the project simulator seen through events, Gymnasium envs (project and
custom, with per-step item features or a static item table), the tiny MDP."""

from __future__ import annotations

from dataclasses import replace

import gymnasium
import numpy as np
import pytest
import torch

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world
from recsys.features import EventFold, ItemFeaturizer, StateArray, UserFeaturizer, session_key
from recsys.pipeline import SimulatorSetup, make_fold, world_item_table
from recsys.policy import SlateQPolicy
from recsys.policy.batch import SlateObs
from recsys.policy.observation import FeatureKind
from recsys.policy.testing import TinySlateEnv
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.envs import (
    BatchSlateEnv,
    GymSlateEnv,
    SimulatedUsers,
    SimulatorSlateEnv,
    TinyEnvAdapter,
    UniformCandidates,
    cross_blocks,
    simulated_session_keys,
)
from recsys.policy.training.trainer import train_policy
from recsys.simulator import SLATE_ENV_ID, SlateVectorEnv
from recsys.simulator.results import StepResult
from recsys.types import Event, EventType, FeedbackEvent, ImpressionEvent, SlateItem
from tests.unit.policy.custom_envs import (
    CatalogTopicEnv,
    catalog_table,
    make_catalog_env,
    make_env,
    make_whole_catalog_env,
)

SIM = SimulatorSettings(num_candidates=12, slate_size=3, max_episode_steps=30)
TOPICS = 5
#: Fields of the event state that hold keys of the session and request ids: the env and an
#: updater key the same ids differently (only equality matters to the fold).
KEY_FIELDS = ("session_key", "request", "prev_request")


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=150, num_users=40, num_topics=TOPICS, seed=1))


SMALL = PolicyTrainConfig(
    algo="slateq",
    reward="engagement",
    iterations=2,
    steps_per_iteration=3,
    users=8,
    batch_size=16,
    updates_per_iteration=2,
    hidden=(8,),
)


#: A short SlateQ run on a custom env's own reward (the docs' env learns its best slate).
CUSTOM_ENV_TRAINING = replace(
    SMALL,
    reward="env",
    iterations=25,
    steps_per_iteration=4,
    batch_size=64,
    epsilon=0.2,
    updates_per_iteration=5,
    lr=1e-2,
    gamma=0.0,
    hidden=(16,),
)


def _users(
    world: SyntheticWorld, features: FeatureKind = "event", num_ads: int = 2, seed: int = 0
) -> SimulatedUsers:
    """The whole population of ``world``, uniform candidates, catalog item features crossed
    with the user blocks of ``features``."""
    table = world_item_table(world)
    fold = make_fold(table)
    values, names = table.observable()
    blocks, block_names = cross_blocks(features, fold.spec)
    return SimulatedUsers(
        world,
        SIM,
        seed=seed,
        fold=fold,
        candidates=UniformCandidates(table.is_ad, seed=seed + 1),
        items=ItemFeaturizer(values, table.topics, names, blocks, block_names),
        features=features,
        num_ads=num_ads,
    )


def test_simulator_adapter_shapes_and_hidden_reward(world: SyntheticWorld) -> None:
    env = SimulatorSlateEnv(_users(world))
    assert isinstance(env, BatchSlateEnv)
    assert (env.batch_size, env.slate_size) == (40, 3)
    obs = env.reset(seed=1)
    obs.validate()
    assert obs.user_features.shape == (40, 4 * TOPICS + 10)
    # Catalog columns (topics, length, ad flag, bid, popularity) + one cross per event block.
    assert env.item_dim == TOPICS + 4 + 4
    assert obs.item_features.shape == (40, 12, env.item_dim)
    total, churned = np.zeros(40), 0
    for _ in range(20):
        step = env.step(np.tile(np.arange(3), (40, 1)))
        assert step.hidden_reward is not None
        # The hidden LTV increment is the step's dwell (minutes): the simulator defines LTV so,
        # also at a churn and in the next life, which starts from zero.
        np.testing.assert_allclose(
            step.hidden_reward, step.response.dwell_s.sum(axis=1) / 60.0, rtol=1e-4, atol=1e-5
        )
        total += step.hidden_reward
        churned += int(step.done.sum())
    assert total.sum() > 0
    assert churned > 0


class IndependentFold:
    """An online updater's view of the simulated users: one state per ``(user, life)`` (a
    churned user's next life is a new user), folded from event objects with
    :meth:`EventFold.fold_events`, keyed by string session and request ids."""

    def __init__(self, fold: EventFold) -> None:
        self.fold = fold
        self.index: dict[tuple[int, int], int] = {}
        self.states: StateArray = fold.codec.empty(0)

    def rows(self, users: np.ndarray, lives: np.ndarray) -> np.ndarray:
        out = []
        for user, life in zip(users.tolist(), lives.tolist(), strict=True):
            if (user, life) not in self.index:
                self.index[(user, life)] = len(self.index)
                self.states = np.concatenate([self.states, self.fold.codec.empty(1)])
            out.append(self.index[(user, life)])
        return np.asarray(out, dtype=np.int64)

    def fold_step(self, t: int, users: np.ndarray, rows: np.ndarray, result: StepResult) -> None:
        """The events a client would post for step ``t``: the impression, then the clicked
        item's click, dwell, like, conversion and skip."""
        o, info = result.observable, result.session
        events: list[Event] = []
        at: list[int] = []
        for i, user in enumerate(users.tolist()):
            request = f"{user}/{t}"
            slate = tuple(
                SlateItem(item_id=int(item), position=pos, score=0.0, propensity=1.0)
                for pos, item in enumerate(result.slates[i])
            )
            session = f"{info.life[i]}/{info.session[i]}"
            events.append(ImpressionEvent(request, str(user), float(t), "v", "p", slate, session))
            at.append(int(rows[i]))
            clicked = int(o.clicked_item[i])
            if clicked < 0:
                continue
            for kind, on, value in (
                (EventType.CLICK, True, 1.0),
                (EventType.DWELL, True, float(o.dwell_s[i])),
                (EventType.LIKE, bool(o.like[i]), 1.0),
                (EventType.CONVERSION, bool(o.conversion[i]), 1.0),
                (EventType.SKIP, bool(o.skip[i]), 1.0),
            ):
                if on:
                    events.append(FeedbackEvent(request, str(user), clicked, kind, value, t))
                    at.append(int(rows[i]))
        counts = self.fold.fold_events(self.states, at, events)
        assert counts.orphans == 0


def _same_state(env_state: StateArray, mine: StateArray) -> None:
    names = env_state.dtype.names
    assert names is not None
    for name in names:
        if name not in KEY_FIELDS:
            assert env_state[name].tobytes() == mine[name].tobytes(), name


def test_event_features_are_those_of_an_updater_folding_the_same_events(
    world: SyntheticWorld,
) -> None:
    """What a policy sees in the simulator is what the service would compute: the env's user
    features equal :meth:`UserFeaturizer.features_at` of an :class:`EventFold` folded
    independently, event object by event object, over the same simulated events, bit for bit
    (every step, for subsets of users and the whole population, across churn)."""
    users = _users(world)
    users.reset(seed=3)
    mine = IndependentFold(users.fold)
    featurizer = UserFeaturizer(users.fold.spec)
    rng = np.random.default_rng(0)
    n, c, s = users.num_users, SIM.num_candidates, SIM.slate_size
    new_lives = 0
    for t in range(30):
        rows = None if t % 3 == 0 else np.sort(rng.choice(n, size=n // 2, replace=False))
        served = np.arange(n) if rows is None else rows
        obs = users.observe(rows)
        slates = np.argsort(rng.random((served.size, c)), axis=1)[:, :s]
        items = np.take_along_axis(obs.candidate_ids, slates, axis=1)
        result = users.step(rows, items)
        at = mine.rows(served, result.session.life)
        new_lives += int((result.session.life > 0).sum())
        # The features shown before the step, at the step's time, in the step's session.
        sessions = [session_key(f"{li}/{se}") for li, se in zip(*result.session[:2], strict=True)]
        expected = featurizer.features_at(
            users.fold, mine.states[at], np.full(served.size, float(t)), sessions
        )
        np.testing.assert_array_equal(obs.user_features, expected)
        mine.fold_step(t, served, at, result)
        churned = result.session.terminated
        _same_state(users.states[served[~churned]], mine.states[at[~churned]])
        empty = users.fold.codec.empty(int(churned.sum()))
        assert users.states[served[churned]].tobytes() == empty.tobytes()
    assert new_lives > 0, "no churned user came back: the reset was not exercised"


def test_a_churned_user_starts_the_next_life_without_events(world: SyntheticWorld) -> None:
    env = SimulatorSlateEnv(_users(world))
    env.reset(seed=5)
    for _ in range(40):
        step = env.step(np.tile(np.arange(3), (40, 1)))
        if step.done.any():
            break
    assert step.done.any()
    gone = np.flatnonzero(step.done)
    life, session = env.users.core.upcoming_sessions(gone)
    assert (session == 0).all()
    fresh = env.users.fold.codec.empty(gone.size)
    assert env.users.states[gone].tobytes() == fresh.tobytes()
    # The observation of a churned row already shows the new user: a cold start.
    cold = env.users.users.features_at(
        env.users.fold, fresh, np.full(gone.size, 40.0), simulated_session_keys(life, session)
    )
    np.testing.assert_array_equal(step.next_obs.user_features[gone], cold)
    assert (step.next_obs.user_features[gone, -1] == 1.0).all()  # "cold"
    alive = np.flatnonzero(~step.done)
    assert (step.next_obs.user_features[alive, -1] == 0.0).all()


def test_latent_and_event_features(world: SyntheticWorld) -> None:
    event, latent = _users(world, "event"), _users(world, "latent")
    for users in (event, latent):
        users.reset(seed=0)
    assert (event.user_dim, event.item_dim) == (4 * TOPICS + 10, TOPICS + 4 + 4)
    # Latent: interests, fatigue, satiation per topic and 5 scalars; three crossed blocks.
    assert (latent.user_dim, latent.item_dim) == (3 * TOPICS + 5, TOPICS + 4 + 3)
    assert latent.user_dim == len(latent.core.user_feature_names)
    obs = latent.observe()
    np.testing.assert_array_equal(obs.user_features, latent.core.user_features())
    assert obs.item_features.shape == (40, 12, latent.item_dim)
    # Every user starts cold: the event features know nothing yet, the latent ones do.
    cold = event.observe().user_features
    assert (cold[:, -1] == 1.0).all()
    assert np.unique(cold, axis=0).shape[0] == 1
    assert np.unique(obs.user_features, axis=0).shape[0] == 40


def test_simulated_users_refuse_inconsistent_parts(world: SyntheticWorld) -> None:
    users = _users(world)
    with pytest.raises(ValueError, match="features must be event or latent"):
        _users(world, "vibes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_ads must be in"):
        _users(world, num_ads=SIM.num_candidates)
    other = make_fold(world_item_table(make_world(CatalogSettings(num_items=90, num_users=4))))
    with pytest.raises(ValueError, match="different catalogs"):
        SimulatedUsers(
            world, SIM, seed=0, fold=other, candidates=users.candidates, items=users.items
        )


def test_uniform_candidates_ignore_the_history(world: SyntheticWorld) -> None:
    is_ad = world_item_table(world).is_ad
    a, b = UniformCandidates(is_ad, seed=4), UniformCandidates(is_ad, seed=4)
    empty = np.full((500, 5), -1)
    clicked = np.tile(np.arange(5), (500, 1))
    batch = a.candidates_for_histories(empty, 9, 3)
    np.testing.assert_array_equal(
        batch.item_ids, b.candidates_for_histories(clicked, 9, 3).item_ids
    )
    assert batch.item_ids.shape == (500, 12)
    assert all(len(set(row)) == 12 for row in batch.item_ids.tolist())
    np.testing.assert_array_equal(batch.is_ad, is_ad[batch.item_ids])
    assert batch.mask.all()
    # Uniform over the catalog: every item turns up, none far more often than the others.
    counts = np.bincount(batch.item_ids.reshape(-1), minlength=150)
    expected = 500 * 12 / 150
    assert counts.min() > 0
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_simulated_users_take_the_retrievers_candidates_for_their_clicks(
    small_setup: SimulatorSetup,
) -> None:
    """With the retriever, a user's candidates are what serving would retrieve for the
    clicks in their event state: organic then ad blocks, recent clicks excluded."""
    config = small_setup.config
    users = small_setup.make_users(np.arange(64))(0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = users.observe()
        slates = np.argsort(rng.random(obs.candidate_ids.shape), axis=1)[:, : config.slate_size]
        users.step(None, np.take_along_axis(obs.candidate_ids, slates, axis=1))
    recent = users.states["recent"]
    assert (recent >= 0).any(), "nobody clicked: the history was not exercised"
    obs = users.observe()
    organic = config.num_candidates - config.num_ads
    want = small_setup.retrieval.retriever.candidates_for_histories(recent, organic, config.num_ads)
    np.testing.assert_array_equal(obs.candidate_ids, np.where(want.mask, want.item_ids, 0))
    assert obs.is_ad is not None
    np.testing.assert_array_equal(obs.is_ad, want.is_ad & want.mask)
    assert not obs.is_ad[:, :organic].any()
    for row, history in zip(obs.candidate_ids.tolist(), recent.tolist(), strict=True):
        assert not set(row) & {h for h in history if h >= 0}


def test_session_keys_change_with_life_or_session() -> None:
    life, session = np.meshgrid(np.arange(50), np.arange(200), indexing="ij")
    keys = simulated_session_keys(life.reshape(-1), session.reshape(-1))
    assert keys.dtype == np.uint32
    assert (keys % 2 == 1).all()  # never 0, which means "no session id"
    assert np.unique(keys).size == keys.size


def test_gymnasium_single_env_adapter_trains(world: SyntheticWorld) -> None:
    def factory(_: int) -> GymSlateEnv:
        return GymSlateEnv(gymnasium.make(SLATE_ENV_ID, world=world, settings=SIM))

    env = factory(0)
    obs = env.reset(seed=0)
    assert obs.item_features.shape == (1, 12, 9)
    assert obs.candidate_ids.shape == (1, 12)
    step = env.step(np.array([[0, 1, 2]]))
    assert step.env_reward is not None
    assert step.env_reward.sum() == pytest.approx(step.response.dwell_s.sum() / 60.0, rel=1e-5)
    result = train_policy(replace(SMALL, reward="env"), env_factory=factory)
    assert len(result.curve) == 2


def test_gymnasium_vector_env_adapter_marks_autoreset_rows(world: SyntheticWorld) -> None:
    env = GymSlateEnv(SlateVectorEnv(num_envs=6, world=world, settings=SIM))
    env.reset(seed=0)
    saw_done = False
    for _ in range(60):
        step = env.step(np.tile(np.arange(3), (6, 1)))
        if saw_done:
            assert step.valid is not None
        saw_done = saw_done or bool(step.done.any())
    assert saw_done
    result = train_policy(
        SMALL,
        env_factory=lambda _: GymSlateEnv(SlateVectorEnv(num_envs=6, world=world, settings=SIM)),
    )
    assert result.curve[-1]["user_steps"] > 0


def test_custom_gymnasium_env_is_learned_through_the_adapter() -> None:
    """docs/policy.md's custom env (``tests/unit/policy/custom_envs.py``)."""
    factory = make_env
    config = CUSTOM_ENV_TRAINING
    result = train_policy(config, env_factory=factory)
    env = factory(0)
    obs = env.reset(seed=123)
    action = result.policy.act(obs, 2, np.random.default_rng(0), explore=False)
    topic = obs.user_features.argmax(axis=1)
    shown = np.take_along_axis(obs.item_features[..., :].argmax(axis=2), action.slates, axis=1)
    assert (shown == topic[:, None]).any(axis=1).mean() > 0.9


def test_tiny_adapter_reports_planted_reward() -> None:
    env = TinyEnvAdapter(TinySlateEnv(batch_size=5))
    env.reset(seed=3)
    step = env.step(np.tile([0, 1], (5, 1)))
    assert step.env_reward is not None
    assert step.hidden_reward is not None
    np.testing.assert_allclose(step.env_reward.sum(axis=1), step.hidden_reward)


# ---- a static item table -------------------------------------------------------------------


def _catalog_vec(
    send_features: bool = False, declare_table: bool = True
) -> gymnasium.vector.SyncVectorEnv:
    """4 users of a 40-item :class:`CatalogTopicEnv`."""
    return gymnasium.vector.SyncVectorEnv(
        [lambda: CatalogTopicEnv(40, 8, send_features, declare_table) for _ in range(4)]
    )


def _assert_same_obs(a: SlateObs, b: SlateObs) -> None:
    for name in SlateObs._fields:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
        else:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_an_item_table_gives_the_observations_of_features_sent_every_step() -> None:
    vec = _catalog_vec()
    with_table = GymSlateEnv(vec, user_key="user", ids_key="candidate_ids")
    assert with_table.item_table is not None
    assert np.shares_memory(with_table.item_table, vec.envs[0].unwrapped.item_table)
    every_step = GymSlateEnv(
        _catalog_vec(send_features=True, declare_table=False), user_key="user", items_key="items"
    )
    assert every_step.item_table is None
    _assert_same_obs(with_table.reset(seed=3), every_step.reset(seed=3))
    rng = np.random.default_rng(0)
    for _ in range(20):
        slates = np.stack([rng.permutation(8)[:2] for _ in range(4)])
        a, b = with_table.step(slates), every_step.step(slates)
        _assert_same_obs(a.next_obs, b.next_obs)
        assert a.env_reward is not None
        assert b.env_reward is not None
        np.testing.assert_array_equal(a.env_reward, b.env_reward)
        np.testing.assert_array_equal(a.done, b.done)
    obs = with_table.reset(seed=4)
    assert obs.item_features.shape == (4, 8, 3)
    np.testing.assert_array_equal(obs.item_features, catalog_table(40)[obs.candidate_ids])


def test_a_single_env_declares_its_table_through_its_wrappers() -> None:
    env = GymSlateEnv(
        gymnasium.wrappers.TimeLimit(CatalogTopicEnv(), 50),
        user_key="user",
        ids_key="candidate_ids",
    )
    obs = env.reset(seed=0)
    assert obs.item_features.shape == (1, 8, 3)
    np.testing.assert_array_equal(obs.item_features[0], catalog_table(40)[obs.candidate_ids[0]])
    step = env.step(np.array([[0, 1]]))
    assert step.next_obs.candidate_ids.shape == (1, 8)


def test_the_table_argument_wins_over_the_attribute_and_items_key_none_reads_it() -> None:
    table = catalog_table(40) * 2.0
    env = GymSlateEnv(_catalog_vec(), user_key="user", item_table=table)
    obs = env.reset(seed=0)
    np.testing.assert_array_equal(obs.item_features, table[obs.candidate_ids])
    # Features and a table: items_key=None says "the table", and the features are ignored.
    both = GymSlateEnv(_catalog_vec(send_features=True), user_key="user", items_key=None)
    obs = both.reset(seed=0)
    np.testing.assert_array_equal(obs.item_features, catalog_table(40)[obs.candidate_ids])


def test_item_table_mistakes_are_clear_errors() -> None:
    ambiguous = GymSlateEnv(_catalog_vec(send_features=True), user_key="user", items_key="items")
    with pytest.raises(ValueError, match="holds item features 'items' and the env has an item"):
        ambiguous.reset(seed=0)
    neither = make_env(0)
    neither.keys = ("user", "features", None, None, None)
    with pytest.raises(ValueError, match="no item features 'features' and the env declares no"):
        neither.reset(seed=0)
    with pytest.raises(ValueError, match="ids_key must name them"):
        GymSlateEnv(_catalog_vec(), user_key="user", ids_key=None)
    with pytest.raises(ValueError, match=r"item_table must be \[num_items, item_dim\]"):
        GymSlateEnv(_catalog_vec(), user_key="user", item_table=np.zeros(40, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        GymSlateEnv(_catalog_vec(), user_key="user", item_table=np.full((40, 3), np.nan))
    short = GymSlateEnv(_catalog_vec(), user_key="user", item_table=catalog_table(10))
    with pytest.raises(ValueError, match=r"'candidate_ids' holds id \d+ .* has 10 items"):
        short.reset(seed=0)

    def other_catalog() -> CatalogTopicEnv:
        env = CatalogTopicEnv()
        env.item_table = env.table + 1.0
        return env

    mixed = gymnasium.vector.SyncVectorEnv([CatalogTopicEnv, other_catalog])
    with pytest.raises(ValueError, match="sub-env 1's item_table differs from sub-env 0's"):
        GymSlateEnv(mixed, user_key="user")


def test_a_catalog_env_trains_through_its_item_table_with_a_sampled_target() -> None:
    """Every step offers the whole 100-item catalog: more candidates than SlateQ's default
    ``target_candidates`` (64), so its Q-learning target maximises over a sample."""
    config = replace(CUSTOM_ENV_TRAINING, gamma=0.5)
    result = train_policy(config, env_factory=make_whole_catalog_env)
    policy = result.policy
    assert isinstance(policy, SlateQPolicy)
    assert policy.config.target_candidates == 64
    untouched = torch.Generator().manual_seed(config.seed).get_state()
    assert not torch.equal(policy.target_generator.get_state(), untouched)  # it sampled
    env = make_whole_catalog_env(0)
    obs = env.reset(seed=123)
    assert obs.num_candidates == 100
    action = policy.act(obs, 2, np.random.default_rng(0), explore=False)
    topic = obs.user_features.argmax(axis=1)
    shown = np.take_along_axis(obs.candidate_ids % 2, action.slates, axis=1)
    assert (shown == topic[:, None]).any(axis=1).mean() > 0.9
    assert make_catalog_env(0).reset(seed=0).item_features.shape == (16, 8, 3)
