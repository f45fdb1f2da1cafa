"""Policies evaluated on any slate environment: episode returns, paired, on unseen seeds.

:func:`evaluate_on_env` is the evaluation for an environment that is not the project's
simulator (``recsys evaluate env --env module:factory``; the simulator has its own,
:func:`~recsys.policy.evaluation.simulator.evaluate_in_simulator`, on held-out users). It
needs only the :class:`~recsys.policy.training.envs.BatchSlateEnv` Protocol:

- **Episodes.** Each round resets the env with one seed and follows every row through its
  first episode, until ``done`` or ``max_steps`` (then it counts as truncated); ``episodes``
  rows over as many rounds as it takes. Per episode: the return (the env's own reward by
  default), the length in steps and the clicks.
- **Seeds disjoint from training, by construction.** The reset seeds come from
  :func:`~recsys.policy.seeds.evaluation_reset_seeds`, a range no training worker draws
  from (:mod:`recsys.policy.seeds`), and the result says so.
- **Paired.** Every policy plays the same rounds from the same reset seeds, with the same
  policy generator (common random numbers), so differences between policies are paired per
  episode: the difference of mean returns with a paired t-interval, and the ratio with a
  bootstrap CI over episodes resampled jointly (:func:`paired_ratio`). Whether the env's
  ``reset(seed)`` really reproduces its first observation is checked and reported: without
  it, pairs are not the same episodes.
- **Greedy or exploring**: ``explore=False`` serves each policy's deterministic slate,
  ``True`` its behaviour distribution (as in training).

:func:`env_policies` turns names into policies: ``random`` (uniform slates) or a checkpoint
directory from ``recsys train policy`` (checked to fit the env's feature widths and slate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import torch

from recsys.artifacts import MANIFEST, latest_version
from recsys.policy.algorithms.baselines import RandomPolicy
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.batch import SlateObs
from recsys.policy.evaluation.simulator import mean_ci, paired_ratio
from recsys.policy.reward.spec import RewardFunction, RewardKind, RewardSpec
from recsys.policy.seeds import EVALUATION_SEEDS, TRAINING_SEEDS, evaluation_reset_seeds
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.envs import BatchSlateEnv, EnvStep

F64 = npt.NDArray[np.float64]

__all__ = [
    "ENV_REWARDS",
    "EpisodeOutcomes",
    "env_policies",
    "evaluate_on_env",
    "run_episodes",
]

#: Returns an episode can be measured in on any env (``learned`` needs a reward model).
ENV_REWARDS: tuple[RewardKind, ...] = tuple(k for k in get_args(RewardKind) if k != "learned")


@dataclass(frozen=True)
class EpisodeOutcomes:
    """Per-episode outcomes of one policy (arrays ``[episodes]``, in seed order)."""

    returns: F64
    lengths: F64
    clicks: F64
    truncated: npt.NDArray[np.bool_]
    seconds: float

    def summary(self, confidence: float = 0.95) -> dict[str, Any]:
        """JSON-ready means with t-intervals over episodes."""
        return {
            "return": mean_ci(self.returns, confidence),
            "length": mean_ci(self.lengths, confidence),
            "clicks": mean_ci(self.clicks, confidence),
            "truncated_fraction": float(self.truncated.mean()),
            "seconds": self.seconds,
        }


def _reward_kind(step: EnvStep) -> RewardKind:
    """The default return: the env's own reward, else its hidden reward, else clicks."""
    if step.env_reward is not None:
        return "env"
    if step.hidden_reward is not None:
        return "hidden"
    return "clicks"


def run_episodes(
    policy: BatchSlatePolicy,
    env: BatchSlateEnv,
    *,
    seeds: Sequence[int],
    max_steps: int,
    explore: bool,
    reward: RewardFunction,
    policy_seed: int,
    episodes: int | None = None,
) -> EpisodeOutcomes:
    """Play ``policy`` on ``env`` from each reset seed: every row's first episode, at most
    ``max_steps`` steps; the first ``episodes`` rows (all by default), in order."""
    b, s = env.batch_size, env.slate_size
    rng = np.random.default_rng(policy_seed)
    parts: list[F64] = []
    start = time.perf_counter()
    with torch.no_grad():
        for seed in seeds:
            obs = env.reset(seed=int(seed))
            totals = np.zeros((3, b))  # return, length, clicks
            running = np.ones(b, dtype=np.bool_)
            for _ in range(max_steps):  # a loop over time; each step is batched over rows
                step = env.step(policy.act(obs, s, rng, explore=explore).slates)
                live = running if step.valid is None else running & step.valid
                totals[0, live] += reward(step).sum(axis=1, dtype=np.float64)[live]
                totals[1, live] += 1.0
                totals[2, live] += np.asarray(step.response.click, np.float64).sum(axis=1)[live]
                running &= ~(np.asarray(step.episode_end(), np.bool_) & live)
                obs = step.next_obs
                if not running.any():
                    break
            parts.append(np.vstack([totals, running[None].astype(np.float64)]))
    out = np.concatenate(parts, axis=1)[:, :episodes]
    return EpisodeOutcomes(
        returns=out[0],
        lengths=out[1],
        clicks=out[2],
        truncated=out[3] > 0,
        seconds=time.perf_counter() - start,
    )


def _same_obs(a: SlateObs, b: SlateObs) -> bool:
    return all(
        (x is None and y is None)
        or (x is not None and y is not None and np.array_equal(np.asarray(x), np.asarray(y)))
        for x, y in zip(a, b, strict=True)
    )


def evaluate_on_env(
    policies: Mapping[str, BatchSlatePolicy],
    env: BatchSlateEnv,
    *,
    episodes: int,
    max_steps: int = 1000,
    seed: int = 0,
    explore: bool = False,
    reward: RewardKind | None = None,
    reference: str | None = None,
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
) -> dict[str, Any]:
    """Evaluate every policy on the same ``episodes`` episodes of ``env``; JSON-ready.

    ``reward``: what an episode's return sums (``env``, ``hidden``, ``clicks`` or
    ``engagement``; default the env's own reward, else its hidden reward, else clicks).
    ``reference`` (default: the first policy) is what every other policy is compared with,
    under ``"paired"`` as ``"<name> - <reference>"`` (difference of mean returns, paired
    t-interval) and ``"<name>/<reference>"`` (ratio, paired bootstrap; null when the
    reference's mean return is not positive). Per-episode outcomes are kept under
    ``"_episodes"`` (not JSON; pop it before dumping).
    """
    if not policies:
        raise ValueError("no policies to evaluate")
    if episodes < 2 or max_steps < 1:
        raise ValueError(f"need episodes >= 2 and max_steps >= 1, got {episodes}, {max_steps}")
    if reward is not None and reward not in ENV_REWARDS:
        raise ValueError(f"reward must be one of {', '.join(ENV_REWARDS)}, got {reward!r}")
    names = list(policies)
    reference = names[0] if reference is None else reference
    if reference not in policies:
        raise ValueError(f"reference {reference!r} is not one of the policies {names}")
    b = int(env.batch_size)
    seeds = evaluation_reset_seeds(seed, math.ceil(episodes / b), b)
    if seeds[0] < TRAINING_SEEDS.stop + b:  # never a training episode, even as seed + i
        raise AssertionError("evaluation seeds overlap the training range")
    # Paired only if a seed fixes the episode: the first observation must come back alike.
    reproducible = _same_obs(env.reset(seed=seeds[0]), env.reset(seed=seeds[0]))
    if reward is None:  # one step of the reference policy shows what the env reports
        obs = env.reset(seed=seeds[0])
        action = policies[reference].act(obs, env.slate_size, np.random.default_rng(0), False)
        reward = _reward_kind(env.step(action.slates))
    reward_fn = RewardSpec(reward).build()
    policy_seed = int(np.random.default_rng([seed, 0x5EED]).integers(2**63))
    outcomes = {
        name: run_episodes(
            policy,
            env,
            seeds=seeds,
            max_steps=max_steps,
            explore=explore,
            reward=reward_fn,
            policy_seed=policy_seed,
            episodes=episodes,
        )
        for name, policy in policies.items()
    }
    base = outcomes[reference].returns
    paired: dict[str, Any] = {}
    for name in names:
        if name == reference:
            continue
        ret = outcomes[name].returns
        paired[f"{name} - {reference}"] = mean_ci(ret - base, confidence)
        paired[f"{name}/{reference}"] = (
            paired_ratio(ret, base, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
            if base.mean() > 0
            else None
        )
    return {
        "config": {
            "episodes": episodes,
            "max_steps": max_steps,
            "explore": explore,
            "mode": "explore" if explore else "greedy",
            "seed": seed,
            "confidence": confidence,
            "reward": reward,
            "return_definition": f"sum of the per-step '{reward}' reward over one episode "
            f"(until done or max_steps={max_steps})",
            "batch_size": b,
            "slate_size": int(env.slate_size),
            "reference": reference,
        },
        "seeds": {
            "reset_seeds": seeds,
            "episode_seed_range": [seeds[0], seeds[-1] + b],
            "evaluation_range": [EVALUATION_SEEDS.start, EVALUATION_SEEDS.stop],
            "training_range": [TRAINING_SEEDS.start, TRAINING_SEEDS.stop],
            "disjoint_from_training": seeds[0] >= TRAINING_SEEDS.stop + b,
            "reset_reproducible": reproducible,
        },
        "policies": {name: ev.summary(confidence) for name, ev in outcomes.items()},
        "paired": paired,
        "_episodes": outcomes,
    }


def env_policies(names: Sequence[str], env: BatchSlateEnv) -> dict[str, BatchSlatePolicy]:
    """``random`` or checkpoint directories (a version, or an artifact's newest version) as
    policies for ``env``, named as given or ``label=directory``; a checkpoint must fit the
    env's feature widths and slate size."""
    if not names:
        raise ValueError("no policies given (random or checkpoint directories)")
    obs = env.reset(seed=EVALUATION_SEEDS.start)
    dims = (int(obs.user_features.shape[1]), int(obs.item_features.shape[2]), env.slate_size)
    out: dict[str, BatchSlatePolicy] = {}
    for given in names:
        label, sep, where = given.partition("=")
        name, where = (label, where) if sep else (given, given)
        if not name:
            raise ValueError(f"policy {given!r}: the label before '=' is empty")
        if name in out:
            raise ValueError(f"policy {name!r} is given twice")
        if where == "random":
            out[name] = RandomPolicy()
            continue
        path = Path(where)
        if not path.is_dir():
            raise ValueError(
                f"unknown policy {given!r}: give random or a checkpoint directory "
                "(recsys train policy writes them)"
            )
        if not (path / MANIFEST).is_file():
            path = latest_version(path.parent, path.name)
        ckpt = load_policy_checkpoint(path)
        have = (ckpt.user_dim, ckpt.item_dim, ckpt.slate_size)
        if have != dims:
            raise ValueError(
                f"checkpoint {path} does not fit this env: it was trained on (user features, "
                f"item features, slate size) = {have}, the env has {dims}"
            )
        out[name] = ckpt.policy
    return out
