# Tide: one entry point for the demo, the tests, the benchmarks.
#   make demo        a whole pool on this machine: jobs run; the controller scales workers up and down
#   make demo-down   remove every lab container, volume and file the demo made
#   make test        lint + unit + fault simulator + Molecule scenarios on a real lab pool (what CI runs)
#   make simulation  the controller's fault simulator: 5,000 seeded schedules (about 2-3 min)
#   make quick       lint + unit + the integration tests on the running lab (inner loop)
#   make bench       measure, write benchmarks/results/*.json
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
STATE := $(or $(TIDE_STATE_DIR),$(CURDIR)/.lab)
export TIDE_STATE_DIR := $(STATE)
export TIDE_TOP := $(CURDIR)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
COLLECTION_LINK := $(STATE)/collections/ansible_collections/tide/pool

.PHONY: help venv wheelhouse engine images collection lab demo demo-down lint unit simulation integration quick test bench clean

help:
	@sed -n 's/^#   //p' Makefile

# The venv, pinned: pyproject.toml pins what we use, requirements.lock the rest.
$(VENV)/.installed: pyproject.toml requirements.lock
	@echo "[venv] creating $(VENV) with pinned dependencies"
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "[venv] installing python3-venv"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $@
venv: $(VENV)/.installed

# The controller's wheels for the lab hosts' Python (Debian trixie: 3.13),
# pinned by requirements.lock, so the controller role installs it there with
# no package index (controller_wheelhouse): pip, setuptools (to build the
# project from the collection's source) and every dependency of the project
# and of its docker sites. The project's own wheel is built only to resolve
# its dependencies: the role installs the source itself.
WHEELHOUSE := $(STATE)/wheelhouse
WHEEL_PYTHON := 3.13
WHEEL_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64
$(WHEELHOUSE)/.complete: pyproject.toml requirements.lock | $(VENV)/.installed
	@echo "[wheelhouse] downloading the controller's wheels for Python $(WHEEL_PYTHON) to $(WHEELHOUSE)"
	@rm -rf $(WHEELHOUSE).tmp && mkdir -p $(WHEELHOUSE).tmp/project/src
	@tar -c --exclude='__pycache__' --exclude='*.egg-info' pyproject.toml README.md controller roles images/condor \
		| tar -x -C $(WHEELHOUSE).tmp/project/src
	@$(VENV)/bin/pip wheel -q --disable-pip-version-check --no-deps \
		-w $(WHEELHOUSE).tmp/project $(WHEELHOUSE).tmp/project/src
	@$(VENV)/bin/pip download -q --disable-pip-version-check --only-binary=:all: \
		--python-version $(WHEEL_PYTHON) --implementation cp \
		$(addprefix --platform ,$(WHEEL_PLATFORMS)) -c requirements.lock \
		-d $(WHEELHOUSE).tmp/wheels $(WHEELHOUSE).tmp/project/tide-*.whl docker pip 'setuptools>=68'
	@rm -f $(WHEELHOUSE).tmp/wheels/tide-*.whl
	@rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).tmp/wheels $(WHEELHOUSE) && rm -rf $(WHEELHOUSE).tmp
	@touch $@
wheelhouse: $(WHEELHOUSE)/.complete

engine:
	@images/engine.sh

images: engine
	@images/build.sh

# This checkout, seen by ansible as the installed collection tide.pool.
collection:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

lab: venv wheelhouse images collection
	@tests/bin/lab-hosts up

demo: lab
	ansible-playbook playbooks/site.yml
	@tests/bin/demo-jobs
	@tests/bin/demo-controller

demo-down: venv
	@tests/bin/lab-hosts down
	@rm -rf $(STATE)
	@echo "[lab] removed lab hosts, their volumes and $(STATE) (images stay in Docker: make clean removes them)"

lint: venv collection
	@echo "[lint] started at $$(date -u +%T)"
	ruff check controller tests benchmarks images/autoheal
	ruff format --check controller tests benchmarks images/autoheal
	mypy
	ansible-lint --profile production

unit: venv
	@echo "[unit] started at $$(date -u +%T)"
	pytest -q tests/unit

# The real controller (observe, decide, act, store) against simulated sites,
# pool and owners on a virtual clock, with crashes, hung calls and races;
# a failing seed is printed with the command that replays it.
simulation: venv
	@echo "[simulation] started at $$(date -u +%T)"
	pytest -q -s tests/simulation

# Molecule drives the lab: each scenario (molecule/*) starts fresh lab hosts,
# converges them, checks that a second run changes nothing, verifies
# behaviour with tests/integration and tests/autoheal, and removes them.
integration: venv wheelhouse images collection
	@echo "[integration] started at $$(date -u +%T)"
	@rm -f $(STATE)/verify.xml
	@molecule test --all || { python tests/bin/test-failures $(STATE)/verify.xml; exit 1; }
	@echo "[integration] done at $$(date -u +%T)"

# Inner loop, no Molecule: the same tests on the running lab (reused, and
# converged again first).
quick: lint unit lab
	TIDE_TEST_REUSE_LAB=1 pytest -q tests/integration tests/autoheal

test: lint unit simulation integration

bench: lab
	python -m benchmarks.pool
	python -m benchmarks.recipe
	python -m benchmarks.controller_decide
	python -m benchmarks.controller_cycle
	python -m benchmarks.controller_loop
	python -m benchmarks.evacuation
	python -m benchmarks.crash_soak
	python -m benchmarks.onboard

clean: demo-down
	@docker images --format '{{.Repository}}:{{.Tag}}' | grep '^tide/' | xargs -r docker rmi -f >/dev/null
	@rm -rf $(VENV)
