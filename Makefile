# anomalib_btm — build, test and demo on a fresh machine: `make test`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-fast lint demo bench clean

venv: $(STAMP)

# open3d wheels need the system library libusb-1.0 to import.
$(STAMP): pyproject.toml constraints.txt _anomalib_btm_hook.py anomalib_btm.pth
	@if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then \
		echo "installing libusb-1.0-0 (needed by open3d)"; \
		if [ "$$(id -u)" = 0 ]; then (apt-get install -y -q libusb-1.0-0 || (apt-get update -q && apt-get install -y -q libusb-1.0-0)); \
		else sudo apt-get install -y -q libusb-1.0-0; fi; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[test,demo]"
	@touch $(STAMP)

test: venv
	$(PY) -m ruff check anomalib_btm tests benchmarks examples
	$(PY) -m pytest -q -ra --durations=15

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(PY) -m ruff check anomalib_btm tests benchmarks examples
	$(PY) -m ruff format --check anomalib_btm tests benchmarks examples

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/coreset.py
	$(PY) benchmarks/fpfh.py

clean:
	rm -rf $(VENV) results demo_output .pytest_cache .ruff_cache
