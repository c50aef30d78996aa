# sinkflow: `make train`, `make test` and `make lint` create .venv and install the pinned CPU stack on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_SILENT ?= true

LMMS_VENV := .venv-lmms-eval
LMMS_STAMP := $(LMMS_VENV)/.installed

.PHONY: install lmms-eval train evaluate tiny-base test test-fast lint format bench clean

install: $(STAMP)

# torch is pinned in the lock and installed in the same command, so pip never picks a CUDA build.
$(STAMP): requirements/cpu.txt requirements/no-deps.txt requirements/lmms-eval.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-cache-dir --no-deps -r requirements/no-deps.txt -r requirements/lmms-eval.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# `lmms-eval --model sinkflow` runs from $(LMMS_VENV)/bin/lmms-eval: a venv layered over .venv (a .pth adds .venv's
# packages after its own) holding only what lmms-eval's evaluator needs otherwise (requirements/lmms-eval-venv.txt).
# Its own packages go in before the .pth, or pip would take .venv's lmms-eval for installed.
lmms-eval: $(LMMS_STAMP)

$(LMMS_STAMP): $(STAMP) requirements/lmms-eval-venv.txt
	rm -rf $(LMMS_VENV)
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install --quiet --no-cache-dir --no-deps -r requirements/lmms-eval-venv.txt
	echo "import site; site.addsitedir('$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" \
		> "$$($(LMMS_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/sinkflow-venv.pth"
	touch $(LMMS_STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

evaluate: $(STAMP)
	$(PY) evaluate.py $(ARGS)

# Rebuild the shipped pre-trained tiny base (sinkflow/models/tiny_llava_shapes/) from its recipe,
# conf/experiment/tiny_base.yaml: stage 0 + stage 1, then stage 2 continues stage 1's weights at a lower learning
# rate; about 50 minutes on 2 CPU cores (README "The tiny base").
TINY_BASE_RUN := logs/tiny_base
tiny-base: $(STAMP)
	rm -rf $(TINY_BASE_RUN)
	$(PY) train.py experiment=tiny_base hydra.run.dir=$(TINY_BASE_RUN)/stage1 $(ARGS)
	$(PY) train.py experiment=tiny_base init_from=$(TINY_BASE_RUN)/stage1 vision_pretraining=null \
		model.optim.lr=1e-3 model.optim.projector_lr=1e-3 hydra.run.dir=$(TINY_BASE_RUN)/stage2 $(ARGS)
	$(PY) -m sinkflow.models.tiny_base $(TINY_BASE_RUN)/stage2

# The whole suite (what CI runs), naming its 15 slowest tests; the lmms-eval venv runs its end-to-end test.
test: $(STAMP) $(LMMS_STAMP)
	$(PY) -m pytest --durations=15 $(ARGS)

# The unit tier, for the edit loop: no entry point end to end, no spawned processes, no long training.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

LINTED := sinkflow tests bench *.py

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format: $(STAMP)
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

bench: $(STAMP)
	$(PY) bench/train_step.py
	$(PY) bench/overhead.py
	$(PY) bench/methods.py
	$(PY) bench/packing.py
	$(PY) bench/scale.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/analysis_memory.py
	$(PY) bench/startup.py

clean:
	rm -rf $(VENV) $(LMMS_VENV) .pytest_cache logs outputs
