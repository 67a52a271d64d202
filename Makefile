# The two commands a newcomer needs: `make lab` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: lab test test-full lint faults bench clean realkube-lab

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/healer lab

test: $(STAMP) lint
	@./.ci/system-deps
	$(VENV)/bin/pytest --durations=20

# `make test` with every case of the exhaustive sweeps (docs/testing.md "The full sweeps"): a
# SIGKILL at every workflow, reboot and etcd step, before and after, on both state backends.
test-full: $(STAMP) lint
	@./.ci/system-deps
	HEALER_TESTS_FULL=1 $(VENV)/bin/pytest --durations=20

# The fault-injection suite in full (docs/faults.md): 200 SIGKILLs, broker and API server
# restarts, ... against real processes; `make test` runs its short version. Replay a random
# run with HEALER_FAULTS_SEED=<the seed it printed>.
faults: $(STAMP)
	@./.ci/system-deps
	HEALER_FAULTS_FULL=1 timeout 1800 $(VENV)/bin/pytest tests/faults -m faults -p no:cacheprovider -rA --timeout 1800

# The lab's node scenarios (crash, hang, partition, provider-outage) against a real
# kube-apiserver + kube-controller-manager + etcd (tests/realkube.py; binaries from
# $HEALER_KUBE_ASSETS or ../shared/kube-assets, docs/testing.md). A few minutes.
realkube-lab: $(STAMP)
	@./.ci/system-deps
	HEALER_REALKUBE_LAB=1 timeout 1800 $(VENV)/bin/pytest tests/test_realkube_lab.py -p no:cacheprovider -rA

# Static checks, also part of `make test`: style, one-way layers, types.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy --strict

# healer beside its baselines (docs/benchmarks.md); e.g. `make bench BENCH="--quick mqtt"`.
bench: $(STAMP)
	@./.ci/system-deps
	$(PY) -m benchmarks $(BENCH)

# Everything `make` made, the lab's saved state (lab-state/) too; `healer lab --reset` deletes
# only the lab state.
clean:
	rm -rf $(VENV) .pytest_cache lab-state
