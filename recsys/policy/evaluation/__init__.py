"""Evaluating slate policies: on-policy in the simulator (:mod:`.simulator`) and off-policy
from logs (:mod:`.ope` estimators, :mod:`.ope_policies` targets re-run on logged requests,
:mod:`.ope_file` for a logged-feedback file)."""
