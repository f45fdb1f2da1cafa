"""Reference slate policies over candidate matrices, batched over users.

These are baselines and *oracles* for evaluating the simulator and learned policies, not
serving policies (those implement :class:`recsys.protocols.SlatePolicy`). The oracles read
hidden ground truth (clickbait scores, quality, latent appeal) on purpose: they mark what the
extreme strategies achieve, e.g. that maximizing immediate clicks is not maximizing
long-term value. Each maps ``(env, users [B], candidates [B, C], slate_size, rng)`` to slates
``[B, S]`` of item ids, best first, with no Python loop over users.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsys.simulator.env import SlateEnv
from recsys.types import FloatArray, IntArray

ReferencePolicy = Callable[[SlateEnv, IntArray, IntArray, int, np.random.Generator], IntArray]
"""``(env, users [B], candidates [B, C], slate_size, rng) -> slates [B, S]`` of item ids."""


def top_k_slates(candidates: IntArray, scores: FloatArray, slate_size: int) -> IntArray:
    """Per row, the ``slate_size`` candidates with the highest scores, best first.

    ``argpartition`` then a sort of only the ``S`` winners: O(B * C) rather than a full sort.
    """
    if candidates.shape != scores.shape:
        raise ValueError(f"candidates {candidates.shape} and scores {scores.shape} disagree")
    if not 1 <= slate_size <= candidates.shape[1]:
        raise ValueError(
            f"slate_size must be in [1, num_candidates={candidates.shape[1]}], got {slate_size}"
        )
    width = candidates.shape[1]
    top = np.argpartition(scores, width - slate_size, axis=1)[:, width - slate_size :]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    cols = np.take_along_axis(top, order, axis=1)
    out: IntArray = np.take_along_axis(candidates, cols, axis=1)
    return out


def relevance_scores(env: SlateEnv, user_features: FloatArray, candidates: IntArray) -> FloatArray:
    """Myopic relevance ``interests · topics`` from observable features only: ``[B, C]``.

    ``user_features`` start with a ``T``-wide block of topic interests: the event fold's
    ``interest_*`` columns (what ``recsys simulate`` logs) or the simulator's latent
    interests. The score of ``recsys simulate``'s Boltzmann logging policy; off-policy
    evaluation of a ``boltzmann:T`` target recomputes it from logged user features and
    candidate ids, so both must use this one definition.
    """
    t = env.world.num_topics
    topics = env.item_features(candidates)[..., :t]
    scores: FloatArray = np.einsum("bt,bct->bc", user_features[:, :t], topics).astype(np.float32)
    return scores


def random_policy(
    env: SlateEnv, users: IntArray, candidates: IntArray, slate_size: int, rng: np.random.Generator
) -> IntArray:
    """Uniformly random ordered slate from each row's candidates."""
    keys = rng.random(candidates.shape, dtype=np.float32)
    return top_k_slates(candidates, keys, slate_size)


def clickbait_policy(
    env: SlateEnv, users: IntArray, candidates: IntArray, slate_size: int, rng: np.random.Generator
) -> IntArray:
    """Oracle "always clickbait": the candidates with the highest (hidden) clickbait score.

    Ties (most items have score 0) are broken at random.
    """
    scores = np.take(env.world.item_clickbait, candidates)
    scores = scores + np.float32(1e-3) * rng.random(candidates.shape, dtype=np.float32)
    return top_k_slates(candidates, scores, slate_size)


def quality_policy(
    env: SlateEnv, users: IntArray, candidates: IntArray, slate_size: int, rng: np.random.Generator
) -> IntArray:
    """Oracle "always quality": highest intrinsic satisfaction (quality, clickbait penalized).

    Not personalized: it ignores topics, so it shows what is good, not what this user likes.
    """
    scores = np.take(env.user_model.static_satisfaction, candidates)
    return top_k_slates(candidates, scores, slate_size)


def greedy_click_policy(
    env: SlateEnv, users: IntArray, candidates: IntArray, slate_size: int, rng: np.random.Generator
) -> IntArray:
    """Oracle myopic click maximizer: the candidates with the highest hidden click appeal."""
    return top_k_slates(candidates, env.appeal(users, candidates), slate_size)


def greedy_satisfaction_policy(
    env: SlateEnv, users: IntArray, candidates: IntArray, slate_size: int, rng: np.random.Generator
) -> IntArray:
    """Oracle personalized quality: highest expected satisfaction for this user right now.

    Expected satisfaction is the appeal with the clickbait and ad appeal replaced by the
    satisfaction terms (quality, clickbait penalty) and satiation weighed as satisfaction
    weighs it, i.e. what the user will be glad to have clicked.
    """
    model = env.user_model
    view = env.slate_view(users, candidates)
    delta = model.static_satisfaction - model.static_appeal
    scores = view.appeal + np.take(delta, candidates)
    if view.satiation is not None:
        s = env.settings
        extra = np.float32(s.satiation_satisfaction_weight - s.satiation_appeal_weight)
        topics = np.take(model.topics, candidates, axis=0)  # [B, C, T]
        scores -= extra * np.matmul(topics, view.satiation[:, :, None])[:, :, 0]
    return top_k_slates(candidates, scores, slate_size)


REFERENCE_POLICIES: dict[str, ReferencePolicy] = {
    "random": random_policy,
    "clickbait": clickbait_policy,
    "quality": quality_policy,
    "greedy_click": greedy_click_policy,
    "greedy_satisfaction": greedy_satisfaction_policy,
}
