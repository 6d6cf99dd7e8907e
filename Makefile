# The two commands: `make demo` (set-up + main job on the embedded default) and
# `make test` (set-up + the whole test suite). Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# DDS stays on this machine: discovery on loopback only, a domain of our own.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 57
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export PYTHONUNBUFFERED := 1

.PHONY: all install demo test test-fast bench clean
all: install

$(VENV)/.deps-installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.interfaces-installed: $(VENV)/.deps-installed msg/*.msg srv/*.srv CMakeLists.txt compat/tf2_msgs/msg/*.msg
	scripts/build_interfaces.sh $(VENV)
	touch $@

$(VENV)/.match-ros-installed: $(VENV)/.interfaces-installed setup.py scripts/executables.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Debian data packages (real camera sequences, benchmark photos) where apt-get is there: scripts/install_system_data.sh
$(VENV)/.system-data-installed: scripts/install_system_data.sh | $(VENV)/.deps-installed
	scripts/install_system_data.sh
	touch $@

install: $(VENV)/.match-ros-installed $(VENV)/.system-data-installed

demo: install
	$(VENV)/bin/match_ros_demo

test: install
	$(PY) -m pytest test

# pure core and in-process tests, no other processes (about 1 min on 2 cores)
test-fast: install
	$(PY) -m pytest test -m "not slow"

bench: install
	$(VENV)/bin/match_ros_bench

clean:
	rm -rf build $(VENV)
