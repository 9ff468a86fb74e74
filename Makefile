# prune_lab: every target creates / refreshes the virtual environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: install test test-fast demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	mkdir -p $(DEMO_OUT)
	$(BIN)/prunelab blocks --model sd-v1 --format table
	$(BIN)/prunelab presets --model sd-v1
	$(BIN)/prunelab presets --model sdxl
	$(BIN)/prunelab plan --model sd-v1 --preset bk-small -o $(DEMO_OUT)/bk-small.json
	$(BIN)/prunelab report --model sd-v1 --compare bk-base bk-small bk-tiny mid-removal
	$(BIN)/prunelab report --model sd-v1 --keep $(DEMO_OUT)/bk-small.json --per-unit --format csv > $(DEMO_OUT)/bk-small-units.csv

lint: $(STAMP)
	$(BIN)/ruff check prune_lab tests benchmarks
	$(BIN)/ruff format --check prune_lab tests benchmarks

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
