# amoc: see README.md. Every target runs from a fresh Debian 12 machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
REL    := _rel/amoc

.PHONY: help deps dev echarts rel local-console lint test test-unit test-fast demo bench bench-tsung clean

help:
	@echo "make rel        build the release in $(REL)"
	@echo "make local-console  build the release and open a local node's console"
	@echo "make demo       the main job: an XMPP load test against a local ejabberd"
	@echo "make demo-capacity  the load a local ejabberd holds within a TTD limit (find-capacity)"
	@echo "make find-capacity  the same on a deployed cluster (SCENARIO, USERS, THRESHOLDS)"
	@echo "make test       lint and every test (installs what they need)"
	@echo "make test-unit  the fast tests only (no servers)"
	@echo "make bench      the benchmarks in bench/"
	@echo "make bench-tsung  Tsung, the floor and amoc, CPU per message (installs Tsung; about 20 min)"

# System packages the tests, the demo and the benchmarks use (Debian).
DEBS := ejabberd prosody graphite-carbon tmux chromium openssh-server prometheus \
        prometheus-node-exporter
deps:
	tools/deps.sh $(DEBS)

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

dev: $(VENV)/.stamp

# The report's charting library (Apache ECharts from the npm registry, pinned and checked;
# cached in _build/echarts). tools/release.sh runs it too.
echarts:
	$(PYTHON) tools/fetch_echarts.py

rel:
	tools/release.sh

local-console: rel
	$(REL)/bin/amoc console

lint: dev lint-ansible
	$(VENV)/bin/ruff check amoc tests bench scenarios tools
	$(VENV)/bin/ruff format --check amoc tests bench scenarios tools
	$(VENV)/bin/mypy amoc

test-unit: dev
	$(VENV)/bin/pytest -m unit -q

test: deps dev rel lint
	$(VENV)/bin/pytest -q

bench: deps dev rel
	$(PY) bench/bench_runner.py
	$(PY) bench/bench_xmpp.py
	$(PY) bench/bench_cluster.py

# Long (N = 1000, 5000, 10000 for Tsung, amoc over slixmpp and the lean client).
bench-tsung: deps dev
	$(PY) bench/bench_tsung.py

clean:
	rm -rf _rel _build build *.egg-info

-include mk/*.mk
