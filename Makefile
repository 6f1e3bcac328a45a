# Tide: one entry point for the demo, the tests, the benchmarks.
#   make demo        a whole pool on this machine, jobs run, output shown
#   make demo-down   remove every lab container, volume and file the demo made
#   make test        lint + unit + Molecule scenarios on a real lab pool (what CI runs)
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

.PHONY: help venv engine images collection lab demo demo-down lint unit integration quick test bench clean

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

engine:
	@images/engine.sh

images: engine
	@images/build.sh

# This checkout, seen by ansible as the installed collection tide.pool.
collection:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

lab: venv images collection
	@tests/bin/lab-hosts up

demo: lab
	ansible-playbook playbooks/central_manager.yml
	ansible-playbook playbooks/provider.yml
	@tests/bin/demo-jobs

demo-down: venv
	@tests/bin/lab-hosts down
	@rm -rf $(STATE)
	@echo "[lab] removed lab hosts, their volumes and $(STATE) (images stay in Docker: make clean removes them)"

lint: venv collection
	ruff check controller tests benchmarks images/autoheal
	ruff format --check controller tests benchmarks images/autoheal
	mypy
	ansible-lint --profile production

unit: venv
	pytest -q tests/unit

# Molecule drives the lab: each scenario (molecule/*) starts fresh lab hosts,
# converges them, checks that a second run changes nothing, verifies
# behaviour with tests/integration and tests/autoheal, and removes them.
integration: venv images collection
	molecule test --all

# Inner loop, no Molecule: the same tests on the running lab (reused, and
# converged again first).
quick: lint unit lab
	TIDE_TEST_REUSE_LAB=1 pytest -q tests/integration tests/autoheal

test: lint unit integration

bench: lab
	python -m benchmarks.pool
	python -m benchmarks.recipe
	python -m benchmarks.controller_decide

clean: demo-down
	@docker images --format '{{.Repository}}:{{.Tag}}' | grep '^tide/' | xargs -r docker rmi -f >/dev/null
	@rm -rf $(VENV)
