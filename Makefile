# The two entry points README.md starts with. Each does all set-up first (scripts/setup.sh).
VENV := .venv
# MODEL: a weights file or torchxrayvision named weights. Unset: an untrained demo model.
MODEL ?=
OUT ?= out

.PHONY: setup run test lint

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run.sh "$(MODEL)" "$(OUT)"

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .
