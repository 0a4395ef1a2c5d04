# Two entry points: `make demo` and `make test`. Everything they need is installed
# from this repository's own files into .venv (python3 with venv is all it assumes).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
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

test: lint test-deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Tools the suite needs beyond .venv: systemd-analyze verifies the unit files (Debian's
# systemd package; it does not need systemd running). Installed when missing and root.
test-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	  else \
	    echo "make: systemd-analyze is missing; install the systemd package" \
	         "(tests/integration/test_packaging.py will fail without it)" >&2; \
	  fi; }

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
