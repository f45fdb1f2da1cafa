"""One contract suite for the checkpoint side of :class:`TrainableSlatePolicy`, run against
every implementation: ``weights()`` round-trips through ``load_weights`` into a fresh policy
of the same architecture, and ``optimizers()`` names the torch optimisers a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from recsys.policy import (
    ConditionalLogitChoiceModel,
    LinUCBPolicy,
    PopularityPolicy,
    ReinforceConfig,
    ReinforceTopKPolicy,
    SlateQConfig,
    SlateQPolicy,
    SlateSampler,
    TrainableSlatePolicy,
)
from recsys.policy.testing import TinySlateEnv, collect

ENV = TinySlateEnv(batch_size=32, seed=0)


def _slateq() -> SlateQPolicy:
    choice = ConditionalLogitChoiceModel(ENV.user_dim, ENV.item_dim, ENV.slate_size, seed=0)
    config = SlateQConfig(hidden=(8,), immediate_head=True, sampler=SlateSampler("epsilon"))
    return SlateQPolicy(ENV.user_dim, ENV.item_dim, choice, config, seed=0)


def _reinforce() -> ReinforceTopKPolicy:
    config = ReinforceConfig(hidden=(8,), state_dim=4)
    return ReinforceTopKPolicy(ENV.user_dim, ENV.item_dim, config, seed=0)


FACTORIES: dict[str, Callable[[], TrainableSlatePolicy]] = {
    "slateq": _slateq,
    "reinforce": _reinforce,
    "popularity": lambda: PopularityPolicy(ENV.num_items),
    "linucb": lambda: LinUCBPolicy(ENV.user_dim, ENV.item_dim),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_weights_round_trip_into_a_fresh_policy(name: str) -> None:
    trained, fresh = FACTORIES[name](), FACTORIES[name]()
    assert isinstance(trained, TrainableSlatePolicy)
    rollout, _ = collect(ENV, trained, ENV.reset(), 3, np.random.default_rng(0))
    trained.update(rollout)
    saved = trained.weights()
    assert saved
    assert all(isinstance(v, np.ndarray) for v in saved.values())
    fresh.load_weights(saved)
    restored = fresh.weights()
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    obs = ENV.observe(np.arange(ENV.num_types))
    a = trained.act(obs, ENV.slate_size, np.random.default_rng(1), explore=False)
    b = fresh.act(obs, ENV.slate_size, np.random.default_rng(1), explore=False)
    np.testing.assert_array_equal(a.slates, b.slates)


def test_weight_names_are_the_checkpoint_keys() -> None:
    """Names stay those of existing checkpoints: ``<module>/<param>`` plus ``updates`` for
    SlateQ, ``model/<param>`` for REINFORCE."""
    slateq = _slateq().weights()
    assert {k.split("/")[0] for k in slateq} == {
        "q_net",
        "null_net",
        "target_q",
        "target_null",
        "choice_model",
        "reward_net",
        "reward_null",
        "updates",
    }
    assert slateq["updates"].dtype == np.int64
    assert all(k.startswith("model/") for k in _reinforce().weights())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("slateq", {"optimizer", "choice_optimizer"}),
        ("reinforce", {"optimizer"}),
        ("popularity", set()),
        ("linucb", set()),
    ],
)
def test_optimizers_are_named(name: str, expected: set[str]) -> None:
    optimizers = FACTORIES[name]().optimizers()
    assert set(optimizers) == expected
    assert all(isinstance(o, torch.optim.Optimizer) for o in optimizers.values())
