# Set-up on a fresh machine and the two everyday jobs. `make demo`, `make test`;
# `make gpu-check` where a GPU is.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/icn-rt demo --out icn-rt-demo

test: install
	$(BIN)/python -m pytest -q

# on a GPU machine: every GPU test and benchmark, all output under gpu-check/; installs nothing
# (the machine's python3 with the wheels of `scripts/gpu_wheels.sh` in .whl/; README)
gpu-check:
	bash scripts/gpu_check.sh gpu-check
