# One verb per target. `make up` and `make test` do all set-up on a fresh Debian machine.
.PHONY: up test unit integration bench lint setup stack clean

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

up: setup
	@$(VENV)/python -m launcher.up

test: setup
	@$(VENV)/python -m pytest -q

unit: setup
	@$(VENV)/python -m pytest -q tests/unit

integration: setup
	@$(VENV)/python -m pytest -q tests/integration

bench: setup
	@$(VENV)/python bench/push.py
	@$(VENV)/python bench/runtime.py
	@$(VENV)/python bench/logs.py
	@$(VENV)/python bench/router.py

lint: setup
	@$(VENV)/ruff check .

clean:
	rm -rf .venv .paas-data .pytest_cache .ruff_cache
