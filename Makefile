# make train:     set up .venv, train the default model, then evaluate its last checkpoint.
# make test:      set up .venv and run the whole test suite (real-data tests read $(CIFAR10_DATA)).
# make test-fast: the unit tier alone (no real data, no processes, no whole stage runs).
# make classify IMAGES="a.jpg b.png": set up .venv and classify image files with $(SOURCE)
#                 (the best model in pretrained/).
# make deploy-deps: add the optional packages of requirements-deploy.txt to .venv (tf2onnx and
#                 ONNX Runtime: cifar10_export.py --onnx and the latency benchmark; make test
#                 installs them too, for their tests).
# make profile-plugin: TensorBoard's profile plugin in .venv, to view --profile_steps's profiles.
# make sweep-deps: add Optuna (requirements-sweep.txt) to .venv for cifar10_sweep.py (make test
#                 and make test-fast install it too: the sweep's tests import it).
# make tfmot-venv: a separate venv, .venv-tfmot, with TensorFlow Model Optimization and tf-keras
#                 for bench/tfmot_prune.py (never needed by the project itself).
# make deep-compression SOURCE_RUN=runs/budget1 OUT=runs/budget1_deep: Deep Compression in
#             three stages (prune to $(SPARSITY), QAT at $(WEIGHT_BITS)-bit weights with the
#             masks held, quantize with entropy coding) into $(OUT)_pruned, $(OUT) and
#             $(OUT)/int8/model_int8.npz.xz, the one file the NumPy runner executes (resumable).
# make zoo:   train and evaluate every model of $(ZOO) in $(ZOO_DIR)/<model>, then write
#             docs/results.md and docs/results.png (about 21-49 min per model here, resumable).
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= data
MODEL ?= tutorial
MAX_STEPS ?= 10000
CONV ?= auto
TRAIN_DIR ?= runs/$(MODEL)
CIFAR10_DATA ?= $(DATA_DIR)
SOURCE ?= pretrained/budget1_int8.npz
ZOO ?= tutorial alex0 alex1 alex2 alex3 alex4 nin0 nin1 squeeze0 squeeze1 inception0 inception1
ZOO_DIR ?= runs/zoo
SOURCE_RUN ?= runs/budget1
OUT ?= $(SOURCE_RUN)_deep
SPARSITY ?= 0.9
WEIGHT_BITS ?= 4
# pytest-xdist workers of make test and make test-fast (the machines here have 2 cores).
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
comma := ,
empty :=
space := $(empty) $(empty)

.PHONY: train eval test test-fast classify zoo deep-compression deploy-deps profile-plugin sweep-deps tfmot-venv clean-venv

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/deploy-installed: $(VENV)/installed requirements-deploy.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-deploy.txt
	touch $@

deploy-deps: $(VENV)/deploy-installed

$(VENV)/profile-installed: $(VENV)/installed requirements-profile.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-profile.txt
	touch $@

profile-plugin: $(VENV)/profile-installed

$(VENV)/sweep-installed: $(VENV)/installed requirements-sweep.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-sweep.txt
	touch $@

sweep-deps: $(VENV)/sweep-installed

TFMOT_VENV ?= .venv-tfmot
$(TFMOT_VENV)/installed: requirements.txt requirements-tfmot.txt
	$(PYTHON) -m venv $(TFMOT_VENV)
	$(TFMOT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-tfmot.txt
	$(TFMOT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps tensorflow-model-optimization==0.8.1
	touch $@

tfmot-venv: $(TFMOT_VENV)/installed

train: $(VENV)/installed
	$(PY) cifar10_train.py --model=$(MODEL) --data_dir=$(DATA_DIR) --train_dir=$(TRAIN_DIR) --max_steps=$(MAX_STEPS) --conv=$(CONV)
	$(PY) cifar10_eval.py --checkpoint_dir=$(TRAIN_DIR) --data_dir=$(DATA_DIR) --run_once

deep-compression: $(VENV)/installed
	$(PY) compress/prune.py --source_dir=$(SOURCE_RUN) --train_dir=$(OUT)_pruned --target_sparsity=$(SPARSITY) --data_dir=$(DATA_DIR)
	$(PY) compress/qat.py --source_dir=$(OUT)_pruned --train_dir=$(OUT) --weight_bits=$(WEIGHT_BITS) --data_dir=$(DATA_DIR)
	$(PY) compress/quantize.py --checkpoint_dir=$(OUT) --coding=lzma --data_dir=$(DATA_DIR)

eval: $(VENV)/installed
	$(PY) cifar10_eval.py --checkpoint_dir=$(TRAIN_DIR) --data_dir=$(DATA_DIR) --run_once

test: $(VENV)/installed $(VENV)/deploy-installed $(VENV)/sweep-installed
	CIFAR10_DATA=$(CIFAR10_DATA) $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

test-fast: $(VENV)/installed $(VENV)/sweep-installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m unit tests

classify: $(VENV)/installed
	$(PY) cifar10_classify.py --source=$(SOURCE) $(IMAGES)

zoo: $(VENV)/installed
	for model in $(ZOO); do \
	  $(PY) cifar10_train.py --model=$$model --data_dir=$(DATA_DIR) --train_dir=$(ZOO_DIR)/$$model --max_steps=$(MAX_STEPS) --conv=$(CONV) && \
	  $(PY) cifar10_eval.py --checkpoint_dir=$(ZOO_DIR)/$$model --data_dir=$(DATA_DIR) --run_once || exit 1; \
	done
	$(PY) cifar10_results.py --runs=$(subst $(space),$(comma),$(addprefix $(ZOO_DIR)/,$(ZOO))) --out_dir=docs

clean-venv:
	rm -rf $(VENV) $(TFMOT_VENV)
