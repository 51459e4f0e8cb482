# One command per task; CI (.ci/run) calls these same targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The versions installed, tested together (see its header); `make lock` writes it.
CONSTRAINTS := constraints.txt
LOCK_VENV := .lock-venv

.PHONY: install lock test lint format run sim bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The newest versions pyproject.toml allows, resolved in a venv of their own, as the new constraints
# (keeping the file's header); then `make install test lint` tries them.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	grep '^#' $(CONSTRAINTS) > $(CONSTRAINTS).new
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

# Two processes (tests/_xdist.py gives each its own Redis and PostgreSQL database).
test: $(STAMP)
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

run: $(STAMP)
	$(BIN)/routeq run examples/demo.jsonl

sim: $(STAMP)
	$(BIN)/routeq sim --port 8900

bench: $(STAMP)
	$(BIN)/python bench/router_micro.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
