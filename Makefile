# One target per job; CI runs the same commands (.ci/run calls `make test`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
N      ?= 5
PORT   ?= 12345
DATA   ?= demo

.PHONY: install run run-server run-clients test test-fast lint types format coverage bench screenshot clean
# Tests that start processes, build wheels or take seconds: `make test` runs them, test-fast not.
FAST   := not slow and not e2e and not packaging

# The venv is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	PYTHON=$(PYTHON) scripts/install
	@touch $@

install: $(VENV)/.installed

## make run: a whole demo round (server + 5 agencies), winners and bets/s
run: $(VENV)/.installed
	$(BIN)/python scripts/demo_round.py --data $(DATA)

## make run-server: the central server on 127.0.0.1:$(PORT) for N agencies; a finished
## round left in data/ is archived to data/archive/<id>/ (an unfinished one resumes)
run-server: $(VENV)/.installed
	$(BIN)/lottery server --host 127.0.0.1 --port $(PORT) --agencies $(N) --data-dir data \
		--new-round-if-finished

## make run-clients N=5: N agencies sending $(DATA)/agency-<id>.csv to 127.0.0.1:$(PORT)
run-clients: $(VENV)/.installed
	PORT=$(PORT) N=$(N) DATA=$(DATA) BIN=$(BIN) scripts/run_clients

## make test: ruff, then every test (unit, in-process, e2e, slow, packaging); what CI runs
test: $(VENV)/.installed
	BIN=$(BIN) scripts/test

## make test-fast: the quick tests only (no slow, e2e or packaging ones), for the edit loop
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "$(FAST)"

## make lint: ruff check, ruff format --check, and strict mypy on lottery/
lint: $(VENV)/.installed
	$(BIN)/ruff check lottery tests scripts benchmarks
	$(BIN)/ruff format --check lottery tests scripts benchmarks
	$(BIN)/mypy --strict lottery

## make types: strict mypy on lottery/ alone
types: $(VENV)/.installed
	$(BIN)/mypy --strict lottery

## make coverage: every test, with lottery's line and branch coverage (real processes included)
coverage: $(VENV)/.installed
	$(BIN)/python -m pytest -q --cov=lottery --cov-branch --cov-report=term

format: $(VENV)/.installed
	$(BIN)/ruff format lottery tests scripts benchmarks
	$(BIN)/ruff check --fix lottery tests scripts benchmarks

## make bench: 5 agencies x 200,000 bets, ours vs the threaded baseline vs server alone
bench: $(VENV)/.installed
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

## make screenshot: run the browser test's round and save its page to docs/img/round-page.png
screenshot: $(VENV)/.installed
	LOTTERY_SCREENSHOT=docs/img/round-page.png $(BIN)/python -m pytest -q \
		tests/test_web_browser.py -k whole_round

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis \
		.coverage .coverage.* data demo bench-data
