# The two commands: `make demo` and `make test`. Each creates .venv and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit ray e2e bench-prepare gpu-check gpu-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geomoe run jobs/quickstart.yaml

lint: $(STAMP)
	$(BIN)/ruff check platform tests
	$(BIN)/ruff format --check platform tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy platform/geomoe

test: lint typecheck
	$(BIN)/pytest tests -m "not slow" --durations=25 --tb=native

bench-prepare: $(STAMP)
	$(BIN)/geomoe bench prepare

# Real-size GPU numbers in one JSON (bench_results/gpu.json); on a machine without a GPU: one line, exit 0.
gpu-check: $(STAMP)
	$(BIN)/geomoe bench gpu

# Every GPU path through Ray on one GPU (both quickstart jobs with resources.use_gpu=true, the Serve app with GPU
# replicas, then gpu-check): one line per part, logs in bench_results/gpu_smoke; without a GPU: one line, exit 0.
gpu-smoke: $(STAMP)
	$(BIN)/python -m geomoe.bench.gpu_smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
