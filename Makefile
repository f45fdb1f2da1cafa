# The two commands a newcomer needs: `make demo` and `make test`. Both install on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=
RELIABILITY_ARGS ?=

.PHONY: install demo test lint format type unit integration bench bench-slateq-update reliability offline-from-logs clean

# torch==2.13.0 goes in first: the CPU wheel is on disk, and any looser spec would pull
# gigabytes of CUDA wheels. The project's torch range is satisfied by it, so pip keeps it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,load]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recsys demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check recsys tests benchmarks load_tests scripts
	$(BIN)/ruff format --check recsys tests benchmarks load_tests scripts

format: $(STAMP)
	$(BIN)/ruff check --fix recsys tests benchmarks load_tests scripts
	$(BIN)/ruff format recsys tests benchmarks load_tests scripts

type: $(STAMP)
	$(BIN)/mypy recsys

# pytest exits 5 when it collected nothing: that is a broken suite, so say so and fail.
test: lint type
	@set +e; $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as failure"; exit 1; fi; \
	exit $$rc

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

# The fault scenarios through real Ray Serve (Redis paused, Redis killed, a replica killed),
# about 3 minutes; writes benchmarks/results/reliability.json, exits 1 if one misses its
# criteria (docs/reliability.md).
reliability: $(STAMP)
	$(BIN)/python benchmarks/reliability.py $(RELIABILITY_ARGS)

# Offline RL from the service's own joined logs (docs/offline_from_logs.md), about 4 minutes;
# needs `python benchmarks/policy_experiments.py --publish .recsys/experiments` first. Writes
# benchmarks/results/offline_from_logs.json, docs/img/offline_from_logs.png and the docs block.
offline-from-logs: $(STAMP)
	$(BIN)/python benchmarks/offline_from_logs.py

# SlateQ update time on a batch of 256 whose candidates are a 100-, 1,000- and 10,000-item
# catalog, with the sampled Q-learning target and without (about 30 s); writes
# benchmarks/results/slateq_update.json, exits 1 if the 1,000/100 ratio misses 1.5.
bench-slateq-update: $(STAMP)
	$(BIN)/python benchmarks/bench_slateq_update.py

# A Ray Tune sweep of REINFORCE's gamma and budget on the project simulator (8 trials, two at
# a time; estimated 6-7 minutes on 2 idle cores, about 11 shared; docs/policy.md, "Sweeps
# with Ray Tune"). Writes benchmarks/results/tune_policy.json, docs/img/tune_policy.png and
# the docs block; reuses the retriever of .recsys/experiments when the policy experiments
# published one there.
.PHONY: tune-policy
tune-policy: $(STAMP)
	$(BIN)/python benchmarks/tune_policy.py

# REINFORCE with GAE against cut returns and SlateQ, on long simulated lives (about 15 minutes
# on 2 idle cores); writes benchmarks/results/long_horizon.json, docs/img/long_horizon.png and
# the long-horizon block of docs/policy.md.
.PHONY: long-horizon
long-horizon: $(STAMP)
	$(BIN)/python benchmarks/long_horizon.py

# Several clicks per slate: SlateQ (clicks="multi") and REINFORCE (GAE) on the
# multi-click simulator (1,000 items, 100-step episodes, boredom) against random and the greedy
# one-step oracle, plus SlateQ's update cost at 1,000 vs 100 items (about 10 minutes on the
# 2-core machine); writes benchmarks/results/multiclick.json and the docs/policy.md block.
.PHONY: multiclick
multiclick: $(STAMP)
	$(BIN)/python benchmarks/multiclick.py

clean:
	rm -rf $(VENV) .recsys .pytest_cache .mypy_cache .ruff_cache
