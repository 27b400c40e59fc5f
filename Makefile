# Two commands do all the set-up: `make train` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/sasrec_ml1m.py
WORKDIR ?= runs/sasrec_ml1m
ARGS ?=

.PHONY: train test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Trains the default config (SASRec on ML-1M) and prints its test metrics; resumes if interrupted.
train: $(STAMP)
	$(PY) train.py --config $(CONFIG) --workdir $(WORKDIR) --resume $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests $(ARGS)

clean:
	rm -rf $(VENV) runs
