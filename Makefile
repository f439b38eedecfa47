# The two entry points of the README: `make quickstart` and `make test`. Both work on a fresh Debian machine
# as root (or with sudo): they install what they need and nothing by hand is assumed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEB_PACKAGES := docker.io openssh-server busybox-static iproute2 git tmux
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test quickstart system-deps venv lint schemas bench clean

## Debian packages the integration tests use: a private dockerd, sshd instances, a static busybox for images,
## tmux (a real terminal for the `aimactl watch` live view).
system-deps:
	@if ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
		echo "Installing Debian packages: $(DEB_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEB_PACKAGES) >/dev/null; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

## The whole test suite: unit, CLI, schema freshness, lint/type checks, and integration tests on real
## dockerd and sshd started by the suite itself.
test: system-deps venv $(VENV)/.llama
	$(BIN)/pytest -q

## llama.cpp's Python server (compiled from source: several minutes on 2 cores, once).
$(VENV)/.llama: | $(VENV)/.installed
	@echo "Building llama-cpp-python[server] (compiles llama.cpp: several minutes on 2 cores, only once)..."
	$(BIN)/pip install -q 'llama-cpp-python[server]'
	touch $@

## The quickstart stack on this machine, offline: a tiny llama.cpp model served as a native process.
QUICKSTART := -f examples/quickstart/stack.yaml --stack quickstart --var python=$(abspath $(BIN))/python
quickstart: venv $(VENV)/.llama
	$(BIN)/python scripts/make_tiny_gguf.py
	$(BIN)/aimactl apply $(QUICKSTART) --auto-approve
	$(BIN)/aimactl get services $(QUICKSTART)
	$(BIN)/python scripts/quickstart_chat.py http://127.0.0.1:9010

lint: venv
	$(BIN)/ruff check aimactl tests bench
	$(BIN)/mypy

schemas: venv
	$(BIN)/aimactl schema --out schemas

bench: venv
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
