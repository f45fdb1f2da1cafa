"""Training configurations shared by the policy tests."""

from __future__ import annotations

from recsys.policy.training.config import PolicyTrainConfig

#: The project simulator shrunk so a full setup (logs, learned reward, item statistics) and
#: two training iterations take a few seconds: enough to produce real checkpoints.
SMALL_SIMULATOR = PolicyTrainConfig(
    num_items=300,
    num_topics=6,
    num_candidates=15,
    slate_size=3,
    log_users=300,
    log_max_steps=20,
    users=64,
    iterations=2,
    steps_per_iteration=2,
    updates_per_iteration=2,
    pretrain_updates=2,
    batch_size=64,
    hidden=(8,),
)
