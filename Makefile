# The two commands: `make demo` and `make test`. Each creates .venv and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit ray e2e bench-prepare gpu-check gpu-smoke mlflow-ui clean

# The MLflow UI, for the store jobs and sweeps track into (runs/mlflow.db). The pinned stack has mlflow-skinny, which
# ships no web UI (the full `mlflow` package pins pyarrow<26): the same version of `mlflow` goes, without its
# dependencies, into its own folder, and `mlflow ui` runs from there on this environment's packages.
MLFLOW_VERSION := $(shell sed -n 's/.*"mlflow-skinny==\([0-9.]*\)".*/\1/p' pyproject.toml)
MLFLOW_UI := .mlflow-ui/$(MLFLOW_VERSION)
MLFLOW_UI_INDEX := $(MLFLOW_UI)/mlflow/server/js/build/index.html
MLFLOW_STORE ?= sqlite:///runs/mlflow.db
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000

# uv installs the same pins as pip (the same 188 packages, checked) in a fraction of the time, which keeps
# `make test` in a fresh clone under 20 minutes. --compile-bytecode as pip does: without it every module is compiled
# on first import, by the dozens of Ray worker processes that start at once in the first tests.
UV_VERSION := 0.13.9

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geomoe run jobs/quickstart.yaml

lint: $(STAMP)
	$(BIN)/ruff check platform tests
	$(BIN)/ruff format --check platform tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy platform/geomoe

test: lint typecheck $(MLFLOW_UI_INDEX)
	$(BIN)/pytest tests -m "not slow" --durations=25 --tb=native

bench-prepare: $(STAMP)
	$(BIN)/geomoe bench prepare

# Real-size GPU numbers in one JSON (bench_results/gpu.json); on a machine without a GPU: one line, exit 0.
gpu-check: $(STAMP)
	$(BIN)/geomoe bench gpu

# Every GPU path through Ray on one GPU (both quickstart jobs with resources.use_gpu=true, the Serve app with GPU
# replicas, then gpu-check): one line per part, logs in bench_results/gpu_smoke; without a GPU: one line, exit 0.
gpu-smoke: $(STAMP)
	$(BIN)/python -m geomoe.on_ray.bench.gpu_smoke

$(MLFLOW_UI_INDEX): $(STAMP)
	@test -n "$(MLFLOW_VERSION)" || { echo "mlflow-ui: no mlflow-skinny pin found in pyproject.toml"; exit 2; }
	$(BIN)/pip install --quiet --no-deps --target $(MLFLOW_UI) mlflow==$(MLFLOW_VERSION)

# The UI on http://$(MLFLOW_HOST):$(MLFLOW_PORT) (another store: make mlflow-ui MLFLOW_STORE=sqlite:///path/mlflow.db).
mlflow-ui: $(MLFLOW_UI_INDEX)
	@case "$(MLFLOW_STORE)" in sqlite:///*) test -f "$(MLFLOW_STORE:sqlite:///%=%)" || \
	  { echo "mlflow-ui: no store at $(MLFLOW_STORE:sqlite:///%=%) yet: make demo (or any job) writes it"; exit 2; };; esac
	PYTHONPATH=$(MLFLOW_UI) $(BIN)/python -m mlflow ui --backend-store-uri $(MLFLOW_STORE) \
	  --host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .mlflow-ui
