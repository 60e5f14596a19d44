# VeloLLM: install, run, test, benchmark. Everything the project needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# The daemon's state (the engine's models_dir, the cache's snapshots): /var/lib/velollm as in
# etc/velollm.toml where this user may write it (root, the service), else the user's own state
# folder, with a copy of etc/velollm.toml there whose paths point into it.
STATE_DIR ?= $(shell if [ -w /var/lib/velollm ] || { [ ! -e /var/lib/velollm ] && [ -w /var/lib ]; }; \
	then echo /var/lib/velollm; else echo "$${XDG_STATE_HOME:-$$HOME/.local/state}/velollm"; fi)
CONFIG ?= $(if $(filter /var/lib/velollm,$(STATE_DIR)),etc/velollm.toml,$(STATE_DIR)/velollm.toml)
# `make run` writes a demo model into models_dir when it holds no GGUF (random weights: its
# text is noise; see the README to serve a real model).
MODELS_DIR ?= $(STATE_DIR)/models
PYTEST_ARGS ?=

.PHONY: install run test bench soak llama-server clean demo-model

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime install: the package (with its CFFI extension built in place) and its runtime deps.
$(VENV)/.installed: $(PY) setup.cfg setup.py pyproject.toml $(wildcard velollmd/sched/*.c velollmd/sched/_kvblocks_build.py velollmd/engine/*.c velollmd/engine/*.h velollmd/engine/_matmul_build.py)
	$(PIP) install -e .
	touch $@

$(VENV)/.tools-installed: $(VENV)/.installed requirements-tools.txt
	$(PIP) install -r requirements-tools.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PIP) install -r requirements-test.txt
	touch $@

$(VENV)/.bench-installed: $(VENV)/.test-installed requirements-bench.txt
	$(PIP) install -r requirements-bench.txt
	touch $@

install: $(VENV)/.installed

demo-model: $(VENV)/.tools-installed
	@mkdir -p $(MODELS_DIR)
	@ls $(MODELS_DIR)/*.gguf >/dev/null 2>&1 || $(PY) tools/make_tiny_gguf.py $(MODELS_DIR)/velollm-demo.gguf

run: install demo-model $(CONFIG)
	$(VENV)/bin/velollmd --config $(CONFIG)

# The user's copy of the config (only when /var/lib/velollm is not theirs); an existing copy is
# the user's own and stays as it is.
$(STATE_DIR)/velollm.toml:
	@mkdir -p $(STATE_DIR)
	sed 's|/var/lib/velollm|$(STATE_DIR)|g' etc/velollm.toml > $@.tmp && mv $@.tmp $@

# The real llama-server is built once into ~/.cache/velollm (outside the repo) and reused.
llama-server:
	@tools/llama-server

test: $(VENV)/.test-installed /usr/bin/chromium /usr/bin/redis-server
	@tools/llama-server >/dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

# chromium (headless) runs the dashboard's page in tests/api/test_dashboard_browser.py.
/usr/bin/chromium:
	(apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null

# The soak (minutes; not part of `make test`, which runs tests/soak/ small): one table of
# unexpected statuses, leaked fds/tasks, RSS and p50/p99 per case. SOAK_ARGS="--requests 20000" etc.
SOAK_ARGS ?=
soak: $(VENV)/.test-installed
	@tools/llama-server >/dev/null
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

# wrk is the load generator of benchmarks/http_server.py (a separate C process).
/usr/bin/wrk:
	(apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null

# nginx is a peer row of benchmarks/proxy_overhead.py, which starts its own (own prefix and
# config, daemon off). The package's service must not start: a policy-rc.d that denies it is
# put in place for the install when the machine has none.
/usr/sbin/nginx:
	@denied=; if [ ! -e /usr/sbin/policy-rc.d ]; then denied=1; \
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	(apt-get install -y -qq nginx || (apt-get update -qq && apt-get install -y -qq nginx)) >/dev/null; rc=$$?; \
	if [ -n "$$denied" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc

# redis-server is the shared tier's real server in tests and benchmarks/cache.py, which start their
# own (random loopback port, no persistence). Its service must not start: as nginx below.
/usr/bin/redis-server:
	@denied=; if [ ! -e /usr/sbin/policy-rc.d ]; then denied=1; \
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	(apt-get install -y -qq redis-server || (apt-get update -qq && apt-get install -y -qq redis-server)) >/dev/null; rc=$$?; \
	if [ -n "$$denied" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc

bench: $(VENV)/.bench-installed /usr/bin/wrk /usr/sbin/nginx /usr/bin/redis-server
	@tools/llama-server >/dev/null
	@for script in $(filter-out benchmarks/common.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info velollmd/sched/_kvblocks*.so velollmd/sched/_kvblocks.c \
		velollmd/engine/_matmul*.so velollmd/engine/_matmul.c
