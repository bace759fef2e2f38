# The two commands a newcomer needs: `make run` and `make test`. Both set up everything first.
# `make run` as root also installs the Debian packages the suite needs (`make system`); as
# another user it names them and runs the suite without the experiments that need them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system run test test-fast lint notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian packages the tests and experiments use (installed only when missing).
system:
	bash scripts/setup-system.sh

run: setup
	bash scripts/setup-system.sh --or-advise
	$(VENV)/bin/pushlab report

# The notebooks in JupyterLab (an optional extra, installed on first use), on loopback only.
# Jupyter refuses to start as root without --allow-root; the dev machines and CI are root.
notebooks: setup
	$(PY) -m pip install --quiet -e '.[test,notebooks]'
	$(VENV)/bin/jupyter lab experiments/notebooks --ip 127.0.0.1 \
		$(if $(filter 0,$(shell id -u)),--allow-root)

test: setup system lint
	$(PY) -m pytest

# The fast lane: every room, without the tests marked slow (see README.md).
test-fast: setup system lint
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
