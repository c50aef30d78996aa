# sinkflow: `make train` and `make test` create .venv and install the pinned CPU stack on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_SILENT ?= true

.PHONY: install train evaluate test test-all bench clean

install: $(STAMP)

# torch is pinned in the lock and installed in the same command, so pip never picks a CUDA build.
$(STAMP): requirements/cpu.txt requirements/no-deps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-cache-dir --no-deps -r requirements/no-deps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

evaluate: $(STAMP)
	$(PY) evaluate.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) bench/train_step.py
	$(PY) bench/overhead.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/analysis_memory.py

clean:
	rm -rf $(VENV) .pytest_cache logs outputs
