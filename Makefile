# nesop-deb — build, test and demo targets. Every target installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
DIST := dist
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ARCH := $(shell dpkg --print-architecture)
EXAMPLE_REPO := build/example-repo

# A hermetic environment for everything the tests run: no user config leaks in.
TEST_ENV := HOME=$(CURDIR)/build/home LC_ALL=C.UTF-8 LANG=C.UTF-8 TZ=UTC PYTHONHASHSEED=0 \
	PYTHONDONTWRITEBYTECODE=1 GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
	NESOP_DEB_TOOLCHAIN_DEB=$(CURDIR)/$(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb

.PHONY: help deps venv lint test test-fast test-e2e reliability package deb demo bench clean

help:
	@echo "make demo     build the example store, boot it in a container, update it, fail, roll back"
	@echo "make test     lint, then unit, integration and end-to-end tests"
	@echo "make package  build the toolchain package into $(DIST)/"
	@echo "make deb      build the example store's update package into $(DIST)/"
	@echo "make bench    run the benchmarks and write docs/benchmarks.md"

deps:
	@scripts/install-deps

$(VENV)/.stamp: requirements/runtime.txt requirements/dev.txt pyproject.toml | deps
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --no-cache-dir -r requirements/dev.txt
	$(VPY) -m pip install -q --no-cache-dir --no-deps -e .
	touch $@

venv: $(VENV)/.stamp

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint package
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) -m pytest tests

test-fast: venv
	$(TEST_ENV) $(VPY) -m pytest tests -m "not e2e"

# the fault matrix cells, writing what each ended as into docs/reliability.md
reliability: venv package
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 NESOP_RELIABILITY_REPORT=$(CURDIR)/docs/reliability.md \
		$(VPY) -m pytest tests/e2e -m fault

test-e2e: venv package
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) -m pytest tests -m e2e

# The toolchain package, built with dh-virtualenv from a copy of the working tree (so the
# build products stay out of the source tree and the parent directory).
$(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb: $(shell git ls-files -co --exclude-standard 2>/dev/null | grep -v -e '^tests/' -e '^docs/' -e '^bench/' -e '^examples/')
	@scripts/install-deps
	scripts/build-toolchain-package $(DIST)

package: $(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb

$(EXAMPLE_REPO)/.stamp: $(shell find examples/nesop-store -type f 2>/dev/null)
	rm -rf $(EXAMPLE_REPO)
	examples/nesop-store/make-release-repo $(EXAMPLE_REPO)
	touch $@

deb: venv $(EXAMPLE_REPO)/.stamp
	$(VENV)/bin/nesop-deb build -C $(EXAMPLE_REPO) --output $(DIST)

demo: venv package
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) scripts/demo.py --toolchain $(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb

# The benchmark's own pins (matplotlib for the plot) on top of the dev venv; a rebuilt venv
# loses this stamp with everything else, so they come back.
$(VENV)/.bench-stamp: requirements/bench.txt $(VENV)/.stamp
	$(VPY) -m pip install -q --no-cache-dir -r requirements/bench.txt
	touch $@

bench: venv package $(VENV)/.bench-stamp
	$(TEST_ENV) $(VPY) bench/run.py --output docs/benchmarks.md $(BENCH_ARGS)

clean:
	rm -rf build $(DIST) .mypy_cache .pytest_cache .ruff_cache
