# Two entry points: `make demo` and `make test`. Everything they need is installed
# from this repository's own files into .venv (python3 with venv is all it assumes).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PROMTOOL := $(VENV)/bin/promtool
STAMP   := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench install clean test-deps install-service uninstall-service

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tests/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Two processes (pytest-xdist): the daemon tests run once per store (SQLite and
# PostgreSQL) and mostly wait on their daemons, so two at a time keep the whole suite
# near its 10-minute budget on 2 cores. PYTEST_XDIST=0 runs them one at a time.
PYTEST_XDIST ?= 2
test: lint test-deps
	$(VENV)/bin/pytest -q -n $(PYTEST_XDIST) $(PYTEST_ARGS)

# Tools the suite needs beyond .venv, from Debian's packages: systemd-analyze verifies
# the unit files (systemd; it does not need systemd running); chromium and
# chromium-driver run the dashboard's browser test. Installed when missing and root.
test-deps: $(PROMTOOL)
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else \
	    echo "make: chromium or chromedriver is missing; install Debian's chromium and" \
	         "chromium-driver packages (tests/http/test_browser.py fails without them)" >&2; \
	  fi; }
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	  else \
	    echo "make: systemd-analyze is missing; install the systemd package" \
	         "(tests/integration/test_packaging.py will fail without it)" >&2; \
	  fi; }

# promtool checks the shipped Prometheus rules. Debian's prometheus package would also
# install (and its postinst start) a Prometheus server; only promtool is wanted, so it is
# taken out of the package file into .venv/bin, with no root and no service.
$(PROMTOOL): | $(STAMP)
	@tmp=$$(mktemp -d) && cd "$$tmp" && \
	{ apt-get download -qq prometheus >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq prometheus >/dev/null 2>&1; }; } && \
	dpkg-deb -x prometheus_*.deb root && install -m 0755 root/usr/bin/promtool "$(CURDIR)/$@"; \
	rc=$$?; rm -rf "$$tmp"; [ $$rc = 0 ] || \
	echo "make: could not get promtool from Debian's prometheus package" \
	     "(tests/http/test_prometheus.py fails without it)" >&2

# Run queuectld as a system service: the `queuectl` user, a release in /opt/queuectl,
# the units, /etc/queuectl/queuectld.toml; then start it (docs/operations.md).
install-service:
	packaging/install.sh

uninstall-service:
	packaging/install.sh --uninstall

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
