# The two set-up commands of the README:  `make serve`  and  `make test`.
PY ?= python3
CONFIG ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo serve_config.yaml || echo serve_config.cpu.yaml)
# Serve's default latency buckets stop at a few seconds; diffusion requests take seconds to minutes.
export RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS ?= 10,25,50,100,250,500,750,1000,1500,2000,3000,5000,7500,10000,15000,20000,30000,45000,60000,90000,120000,300000

.PHONY: install serve test lint
# k8s/requirements.lock (the image's pins) constrains what is installed here too; checkov (k8s/scan.py) gets its own
# venv: its pins would downgrade packages torch and Ray use.
CHECKOV_VENV ?= $(HOME)/.cache/zimage-serve/checkov-venv
install:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -c k8s/requirements.lock -e ".[dev]"
	@test -x $(CHECKOV_VENV)/bin/checkov || ($(PY) -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q "checkov==3.3.30")

# `serve run` starts a local Ray cluster with token auth on: from another shell use `RAY_AUTH_MODE=token serve status`
# (README, "Ray's token authentication").
serve: install  ## start the service on :8000 (GPU: serve_config.yaml; no GPU: tiny random model, noise images)
	serve run $(CONFIG)

# -X faulthandler: a native crash prints every thread's stack, even one in the interpreter's teardown.
test: install  ## run the test suite on CPU, 16-18 min on 2 cores after the install (installs Debian's prometheus for the monitoring tests if missing)
	@command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus >/dev/null) || \
	  echo "warning: could not install prometheus; monitoring integration tests will fail"
	$(PY) -X faulthandler -m pytest -q -ra

lint:
	ruff check . && ruff format --check .
