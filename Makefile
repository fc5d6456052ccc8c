# liquid_control: set up, test, benchmark and demo. Everything runs in .venv (ROS 2 Kilted wheels);
# `make test` also runs the ROS tests in .venv-jazzy (ROS 2 Jazzy wheels, no training stack).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_JAZZY ?= .venv-jazzy
PY_JAZZY := $(VENV_JAZZY)/bin/python
STAMP_JAZZY := $(VENV_JAZZY)/.installed
# torch 2.13.0 installs as a CPU build on these machines (an unpinned torch pulls a CUDA build).
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=
# `make demo ROBOT=cartpole`: any robot of the robot registry (liquid_control/robots.py)
ROBOT ?= rover

.PHONY: venv venv-jazzy native native-jazzy test test-fallback test-kilted test-jazzy test-fast bench demo train-demo lint format clean

venv: $(STAMP)

venv-jazzy: $(STAMP_JAZZY)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[ros,sim,train,test,scale,go2,panda]" "$(TORCH_PIN)"
	touch $(STAMP)

$(STAMP_JAZZY): setup.py
	$(PYTHON) -m venv $(VENV_JAZZY)
	$(PY_JAZZY) -m pip install --quiet --upgrade pip
	$(PY_JAZZY) -m pip install --quiet -e ".[ros-jazzy,sim,test-ros]"
	touch $(STAMP_JAZZY)

# Everything on Kilted, then every ROS test (-m ros) again on Jazzy, then the policy node's tests
# with the compiled core switched off (LIQUID_CONTROL_NATIVE=0: the numpy runtime and the Python
# tick, the fallback where no compiler or ROS headers exist).
test: test-kilted test-jazzy test-fallback

# The compiled LTC core and the compiled control tick, built in place (a no-op when up to date;
# without a compiler the package runs on its numpy and torch paths and the Python tick). The tick
# links to the ROS install of the venv's Python: one build per venv (Kilted, Jazzy), side by side.
native: venv
	$(PY) setup.py -q build_ext --inplace

native-jazzy: venv-jazzy
	$(PY_JAZZY) setup.py -q build_ext --inplace

test-kilted: venv native
	$(PY) -m pytest test $(PYTEST_ARGS)

test-jazzy: venv-jazzy native native-jazzy
	$(PY_JAZZY) -m pytest test -m ros $(PYTEST_ARGS)

test-fallback: venv
	LIQUID_CONTROL_NATIVE=0 $(PY) -m pytest test/test_policy_node.py test/test_policy_node_safety.py test/test_native.py $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest test -m "not slow" $(PYTEST_ARGS)

bench: venv native
	$(PY) benchmarks/deploy_step.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/ros_loop.py

demo: venv native
	$(PY) -m liquid_control.cli demo --robot $(ROBOT)

train-demo: venv
	$(PY) -m liquid_control.cli train config/train/cartpole_tiny.yaml --out runs/train-demo --resume

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(VENV_JAZZY) build *.egg-info .pytest_cache
