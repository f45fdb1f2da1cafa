"""Slate policies: learned reward and choice models, SlateQ, REINFORCE top-K, baselines.

Every policy speaks the batch contract :class:`BatchSlatePolicy` (``act`` over ``[B, C]``
candidates with exact per-slot propensities); :class:`recsys.serving.policies.ServedPolicy`
serves a published one through the one-request :class:`recsys.protocols.SlatePolicy`. The
Plackett-Luce :class:`MyopicPolicy` over retrieval scores is the serving fallback.

Ads: every policy builds its slate through a :class:`SlateSampler` (or a slate optimiser fed
its ``max_ads``), so ``max_ads`` caps sponsored items per slate everywhere; the revenue
objective enters through the per-slot reward the policies learn from,
``LearnedRewardModel.slate_rewards(response, revenue_weight)`` = learned engagement reward
+ ``revenue_weight * revenue``. Ad fatigue is the simulator's business.

Layout: the contract and shared machinery at the top (:mod:`.base`, :mod:`.batch`,
:mod:`.exploration`, :mod:`.slate_optimization`, :mod:`.choice_model`); one module per
algorithm in :mod:`.algorithms`; the learned reward in :mod:`.reward`; the trainer, its
environments, rollout workers and checkpoints in :mod:`.training`; on-policy (simulator) and
off-policy evaluation in :mod:`.evaluation`.
"""

from recsys.policy.algorithms.baselines import (
    LinUCBPolicy,
    MyopicGreedyPolicy,
    PopularityPolicy,
    RandomPolicy,
)
from recsys.policy.algorithms.myopic import MyopicPolicy
from recsys.policy.algorithms.reinforce import (
    ReinforceConfig,
    ReinforceTopKPolicy,
    capped_importance_weights,
    top_k_multiplier,
)
from recsys.policy.algorithms.slateq import SlateQConfig, SlateQPolicy
from recsys.policy.base import (
    BatchSlatePolicy,
    SlateSampler,
    TrainableSlatePolicy,
)
from recsys.policy.batch import (
    SIGNAL_NAMES,
    SlateAction,
    SlateObs,
    SlateResponse,
    Transition,
    concat_transitions,
)
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.policy.exploration import (
    epsilon_greedy_log_propensities_batch,
    epsilon_greedy_sample_batch,
    greedy_slate_batch,
    plackett_luce_log_propensities_batch,
    plackett_luce_propensities,
    plackett_luce_sample,
    plackett_luce_sample_batch,
    slate_log_probability,
    slot_log_probs_after_prefix,
)
from recsys.policy.reward.model import LearnedRewardModel, rank_correlation
from recsys.policy.slate_optimization import optimize_slates, slate_values

__all__ = [
    "SIGNAL_NAMES",
    "BatchSlatePolicy",
    "ConditionalLogitChoiceModel",
    "LearnedRewardModel",
    "LinUCBPolicy",
    "MyopicGreedyPolicy",
    "MyopicPolicy",
    "PopularityPolicy",
    "RandomPolicy",
    "ReinforceConfig",
    "ReinforceTopKPolicy",
    "SlateAction",
    "SlateObs",
    "SlateQConfig",
    "SlateQPolicy",
    "SlateResponse",
    "SlateSampler",
    "TrainableSlatePolicy",
    "Transition",
    "capped_importance_weights",
    "concat_transitions",
    "epsilon_greedy_log_propensities_batch",
    "epsilon_greedy_sample_batch",
    "greedy_slate_batch",
    "optimize_slates",
    "plackett_luce_log_propensities_batch",
    "plackett_luce_propensities",
    "plackett_luce_sample",
    "plackett_luce_sample_batch",
    "rank_correlation",
    "slate_log_probability",
    "slate_values",
    "slot_log_probs_after_prefix",
    "top_k_multiplier",
]
