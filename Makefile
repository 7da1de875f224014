# make train: set up .venv, train the default model, then evaluate its last checkpoint.
# make test:  set up .venv and run the test suite (real-data tests read $(CIFAR10_DATA)).
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= data
MODEL ?= tutorial
MAX_STEPS ?= 10000
TRAIN_DIR ?= runs/$(MODEL)
CIFAR10_DATA ?= $(DATA_DIR)
PY := $(VENV)/bin/python

.PHONY: train eval test clean-venv

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

train: $(VENV)/installed
	$(PY) cifar10_train.py --model=$(MODEL) --data_dir=$(DATA_DIR) --train_dir=$(TRAIN_DIR) --max_steps=$(MAX_STEPS)
	$(PY) cifar10_eval.py --checkpoint_dir=$(TRAIN_DIR) --data_dir=$(DATA_DIR) --run_once

eval: $(VENV)/installed
	$(PY) cifar10_eval.py --checkpoint_dir=$(TRAIN_DIR) --data_dir=$(DATA_DIR) --run_once

test: $(VENV)/installed
	CIFAR10_DATA=$(CIFAR10_DATA) $(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
