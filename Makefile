# liquid_control: set up, test, benchmark and demo. Everything runs in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch 2.13.0 installs as a CPU build on these machines (an unpinned torch pulls a CUDA build).
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-fast bench demo train-demo lint format clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[ros,sim,train,test]" "$(TORCH_PIN)"
	touch $(STAMP)

test: venv
	$(PY) -m pytest test $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest test -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/deploy_step.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/ros_loop.py

demo: venv
	$(PY) -m liquid_control.cli demo

train-demo: venv
	$(PY) -m liquid_control.cli train config/train/cartpole_tiny.yaml --out runs/train-demo --resume

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
