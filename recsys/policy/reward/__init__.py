"""The learned reward: the model (:mod:`.model`), its fit from logged sessions (:mod:`.fit`),
and the per-slot reward a rollout worker computes from each step (:mod:`.spec`)."""
