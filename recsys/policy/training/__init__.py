"""Training slate policies: the run's config (:mod:`.config`), environments (:mod:`.envs`),
logged sessions (:mod:`.sessions`), rollout workers (:mod:`.rollout`), the learner loop
(:mod:`.trainer`), its checkpoints (:mod:`.checkpoint`) and offline training from logged
feedback (:mod:`.offline`)."""
