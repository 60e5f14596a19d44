# VeloLLM: install, run, test, benchmark. Everything the project needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
CONFIG ?= etc/velollm.toml
PYTEST_ARGS ?=

.PHONY: install run test bench llama-server clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime install: the package (with its CFFI extension built in place) and its runtime deps.
$(VENV)/.installed: $(PY) setup.cfg setup.py pyproject.toml $(wildcard velollmd/sched/*.c velollmd/sched/_kvblocks_build.py)
	$(PIP) install -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PIP) install -r requirements-test.txt
	touch $@

$(VENV)/.bench-installed: $(VENV)/.test-installed requirements-bench.txt
	$(PIP) install -r requirements-bench.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/velollmd --config $(CONFIG)

# The real llama-server is built once into ~/.cache/velollm (outside the repo) and reused.
llama-server:
	@tools/llama-server

test: $(VENV)/.test-installed
	@tools/llama-server >/dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

# wrk is the load generator of benchmarks/http_server.py (a separate C process).
/usr/bin/wrk:
	(apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null

bench: $(VENV)/.bench-installed /usr/bin/wrk
	@tools/llama-server >/dev/null
	@for script in $(filter-out benchmarks/common.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info velollmd/sched/_kvblocks*.so velollmd/sched/_kvblocks.c
