# The two entry points README.md starts with. Each does all set-up first (scripts/setup.sh).
#   make run                      the node (cxr-node serve); MODEL=..., CONFIG=..., SPOOL=...
#   make test                     the whole test suite
#   make predict                  one-shot predict on a real radiograph into OUT (default out/)
VENV := .venv

.PHONY: setup run predict test lint

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run.sh serve

predict: setup
	@bash scripts/run.sh predict

test: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .
