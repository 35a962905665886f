# The two commands: `make run` and `make test`. Everything else is optional.
# Each target creates the environment first if it is missing or out of date.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready
STEP ?=
PORT ?= 8000
DIR ?=
# The tests mostly wait on live servers, so more run at once than the machine
# has cores: three times as many, up to eight. Measured on two cores, make test
# STEP=03 took 81 s with four at once, 70 s with six and 78 s with eight.
CORES := $(shell $(PYTHON) -c 'import os; print(os.cpu_count() or 1)')
PARALLEL := -n $(shell echo $$(( 3 * $(CORES) < 8 ? 3 * $(CORES) : 8 ))) --dist worksteal

.DEFAULT_GOAL := help
.PHONY: help run test check workspace diff lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(READY): requirements.txt
	@$(PYTHON) -m tools.check_python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

venv: $(READY) ## create the environment from the lock file

run: $(READY) ## serve the final step (or STEP=02, or your copy: DIR=workspace; PORT=8001) on http://127.0.0.1:8000
	@$(BIN)/python -m tools.run "$(STEP)" "$(PORT)" "$(DIR)"

test: $(READY) ## run every test CI runs (or one step's: STEP=02)
	@$(BIN)/python -m tools.test $(PARALLEL) $(if $(STEP),--step=$(STEP))

check: $(READY) ## run a step's tests against your folder: make check STEP=02 DIR=workspace
	@test -n "$(STEP)" -a -n "$(DIR)" || { echo "usage: make check STEP=02 DIR=workspace"; exit 2; }
	@$(BIN)/python -m pytest tests/steps --step=$(STEP) --step-dir=$(DIR) $(PARALLEL)

workspace: ## copy a step into workspace/ to edit: make workspace STEP=01
	@test -n "$(STEP)" || { echo "usage: make workspace STEP=01"; exit 2; }
	@test ! -e workspace || { echo "workspace/ exists already, maybe your copy of an earlier step: keep it under another name first (mv workspace workspace-old)"; exit 2; }
	@src=$$($(PYTHON) -m tools.step_path $(STEP)) && cp -R "$$src" workspace && \
		rm -rf workspace/__pycache__ && echo "Copied $$src to workspace/. Test it with: make check STEP=$(STEP) DIR=workspace"

diff: ## show what a step changed since the one before, as its page does: make diff STEP=02
	@test -n "$(STEP)" || { echo "usage: make diff STEP=02"; exit 2; }
	@new=$$($(PYTHON) -m tools.step_path $(STEP)) && old=$$($(PYTHON) -m tools.step_path --previous $(STEP)) && \
		diff -ruN -x README.md -x __pycache__ -x .ipynb_checkpoints "$$old" "$$new" || true

lint: $(READY) ## check style with ruff
	$(BIN)/ruff check steps tests harness tools

.PHONY: screenshots
screenshots: $(READY) ## regenerate the UI pictures of the docs
	$(BIN)/python -m tools.screenshot

clean: ## remove the environment and test outputs
	rm -rf $(VENV) test-output site .coverage .coverage.* htmlcov

# --- the tutorial site and the workshop kit ---
.PHONY: docs docs-outputs doctor wheelhouse offline-venv
# make docs takes 8010, away from make run's 8000 and the 8001-8002 the pages use for a
# second server, unless given PORT= itself.
DOCS_PORT ?= $(if $(filter command line,$(origin PORT)),$(PORT),8010)
REQUIREMENTS ?= requirements.txt
WHEELHOUSE ?= wheelhouse

docs: $(READY) ## serve the tutorial site with live reload on http://127.0.0.1:8010 (or PORT=8011)
	$(BIN)/python -m mkdocs serve -a 127.0.0.1:$(DOCS_PORT)

docs-outputs: $(READY) ## run the pages' commands and write the outputs they show (docs/generated/outputs)
	$(BIN)/python -m tools.docs_outputs

doctor: ## check this machine is ready for the workshop (runs before the environment exists)
	@$(PYTHON) -m tools.doctor --port $(PORT)

wheelhouse: ## download every wheel of the lock file into wheelhouse/, for installs without internet
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m pip download --quiet -r $(REQUIREMENTS) -d $(WHEELHOUSE)

offline-venv: ## create the environment from wheelhouse/ only, without internet
	@test -d $(WHEELHOUSE) || { echo "no $(WHEELHOUSE)/ here: copy it from the instructor, or run make wheelhouse with internet"; exit 2; }
	@$(PYTHON) -m tools.check_python
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --no-index --find-links $(WHEELHOUSE) -r $(REQUIREMENTS)
	@touch $(VENV)/.ready

.PHONY: notebooks
notebooks: $(READY) ## open notebooks/ in Jupyter Lab, on this environment's kernel (CHAT_URL=... to use your server)
	$(BIN)/jupyter lab --notebook-dir=notebooks

.PHONY: bench loop-times
bench: $(READY) ## measure capacity side by side (writes docs/generated/bench/)
	$(BIN)/python -m tools.bench

loop-times: $(READY) ## time make check (and make test) of every step as a learner waits for them (writes docs/generated/loop/)
	$(BIN)/python -m tools.loop_times --tests

# --- soak: a few minutes of steady load, not part of make test ---
.PHONY: soak

soak: $(READY) ## keep 16 streams going on 16 dirty workers, judge memory and sockets (STEP=04, SOAK_SECONDS=180)
	@$(BIN)/python -m tools.soak "$(STEP)"
