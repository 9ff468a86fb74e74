# prune_lab: every target creates / refreshes the virtual environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
DEMO_REPORT ?= reports/demo
DEMO_WORK ?= .cache/demo-run

.PHONY: install test test-slow test-all demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The default suite: every test not marked slow, on two worker processes (one per core; each runs torch on one
# thread). ~10 min on the 2-core machine. The 30 slowest tests are listed at the end.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=30

# The tests marked slow: full-size architectures, every-plan sweeps, notebooks' long paths (CI runs them after `test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m slow --durations=30

test-all: test test-slow

# The whole workflow on the trained demo model (report: $(DEMO_REPORT)/README.md; resumable, ~15 min on 2 cores),
# then the BK-SDM presets at full SD-v1 size (structure only, meta weights).
demo: $(STAMP)
	$(BIN)/prunelab demo-run --out $(DEMO_REPORT) --work $(DEMO_WORK)
	mkdir -p $(DEMO_OUT)
	$(BIN)/prunelab plan --model sd-v1 --preset bk-small -o $(DEMO_OUT)/bk-small.json
	$(BIN)/prunelab report --model sd-v1 --compare bk-base bk-small bk-tiny mid-removal

lint: $(STAMP)
	$(BIN)/ruff check prune_lab tests benchmarks
	$(BIN)/ruff format --check prune_lab tests benchmarks

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
