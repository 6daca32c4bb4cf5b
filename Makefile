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
# The toolchain package for a Debian release (make package SUITE=...): bookworm is 12, trixie 13.
DEBIAN_RELEASE_bookworm := 12
DEBIAN_RELEASE_trixie := 13
suite_deb = $(DIST)/$(1)/nesop-deb_$(VERSION)+deb$(DEBIAN_RELEASE_$(1))u1_$(ARCH).deb
# The tests boot both releases: the host's own toolchain is `make package`, the other one's is
# built in a root of that release.
HOST_SUITE := $(shell . /etc/os-release 2>/dev/null && echo $$VERSION_CODENAME)
OTHER_SUITE := $(if $(filter trixie,$(HOST_SUITE)),bookworm,trixie)
OTHER_SUITE_VAR := NESOP_DEB_TOOLCHAIN_DEB_$(if $(filter trixie,$(HOST_SUITE)),BOOKWORM,TRIXIE)

# A hermetic environment for everything the tests run: no user config leaks in.
TEST_ENV := HOME=$(CURDIR)/build/home LC_ALL=C.UTF-8 LANG=C.UTF-8 TZ=UTC PYTHONHASHSEED=0 \
	PYTHONDONTWRITEBYTECODE=1 GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
	NESOP_DEB_TOOLCHAIN_DEB=$(CURDIR)/$(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb \
	$(OTHER_SUITE_VAR)=$(CURDIR)/$(call suite_deb,$(OTHER_SUITE))

.PHONY: help deps venv lint test test-fast test-e2e reliability package deb demo fleet-demo bench clean

help:
	@echo "make demo     build the example store, boot Debian 13 in a container, update it, fail, roll back"
	@echo "              (SUITE=bookworm: Debian 12)"
	@echo "make fleet-demo  publish to a signed apt repository, roll out with Ansible to five booted containers:"
	@echo "              batches, a failure that halts on one host, a fleet rollback (docs/fleet.md)"
	@echo "make test     lint, then unit, integration and end-to-end tests"
	@echo "make package  build the toolchain package for this machine's Debian release into $(DIST)/"
	@echo "              (SUITE=bookworm|trixie: for Debian 12|13 into $(DIST)/<suite>/, version +deb12u1|+deb13u1)"
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

test: lint package $(call suite_deb,$(OTHER_SUITE))
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) -m pytest tests

test-fast: venv
	$(TEST_ENV) $(VPY) -m pytest tests -m "not e2e"

# the fault matrix cells, writing what each ended as into docs/reliability.md
reliability: venv package $(call suite_deb,$(OTHER_SUITE))
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 NESOP_RELIABILITY_REPORT=$(CURDIR)/docs/reliability.md \
		$(VPY) -m pytest tests/e2e -m fault

test-e2e: venv package $(call suite_deb,$(OTHER_SUITE))
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) -m pytest tests -m e2e

# The toolchain package, built with dh-virtualenv from a copy of the working tree (so the
# build products stay out of the source tree and the parent directory). Plain: for the host's
# Debian release, into $(DIST)/. SUITE=bookworm|trixie: for that release (in a root of it when it
# is not the host's), into $(DIST)/$(SUITE)/, the release in the version (0.1.0+deb13u1).
SUITE :=
TOOLCHAIN_SOURCES := $(shell git ls-files -co --exclude-standard 2>/dev/null | grep -v -e '^tests/' -e '^docs/' -e '^bench/' -e '^examples/')

$(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb: $(TOOLCHAIN_SOURCES)
	@scripts/install-deps
	scripts/build-toolchain-package $(DIST)

$(call suite_deb,bookworm) $(call suite_deb,trixie): $(TOOLCHAIN_SOURCES)
	@scripts/install-deps
	scripts/build-toolchain-package $(@D) $(notdir $(@D))

package: $(if $(SUITE),$(call suite_deb,$(SUITE)),$(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb)

$(EXAMPLE_REPO)/.stamp: $(shell find examples/nesop-store -type f 2>/dev/null)
	rm -rf $(EXAMPLE_REPO)
	examples/nesop-store/make-release-repo $(EXAMPLE_REPO)
	touch $@

deb: venv $(EXAMPLE_REPO)/.stamp
	$(VENV)/bin/nesop-deb build -C $(EXAMPLE_REPO) --output $(DIST)

# Debian 13 by default; make demo SUITE=bookworm for Debian 12.
DEMO_SUITE = $(or $(SUITE),trixie)
demo: venv $(call suite_deb,$(DEMO_SUITE))
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) scripts/demo.py --suite $(DEMO_SUITE) \
		--toolchain $(call suite_deb,$(DEMO_SUITE))

# Five booted containers (four Debian 13, one Debian 12) and Ansible: each release's toolchain.
fleet-demo: venv package $(call suite_deb,$(OTHER_SUITE))
	$(TEST_ENV) NESOP_TESTBED_PRIVATE_NETWORK=1 $(VPY) scripts/fleet-demo.py \
		--toolchain $(HOST_SUITE)=$(DIST)/nesop-deb_$(VERSION)_$(ARCH).deb \
		--toolchain $(OTHER_SUITE)=$(call suite_deb,$(OTHER_SUITE))

# The benchmark's own pins (matplotlib for the plot) on top of the dev venv; a rebuilt venv
# loses this stamp with everything else, so they come back.
$(VENV)/.bench-stamp: requirements/bench.txt $(VENV)/.stamp
	$(VPY) -m pip install -q --no-cache-dir -r requirements/bench.txt
	touch $@

# the dependency benchmark (bench/deps.py) runs the store's 1.1.x releases on Debian 13
bench: venv package $(call suite_deb,trixie) $(VENV)/.bench-stamp
	$(TEST_ENV) $(VPY) bench/run.py --output docs/benchmarks.md $(BENCH_ARGS)

clean:
	rm -rf build $(DIST) .mypy_cache .pytest_cache .ruff_cache
