# lowssl: `make install` sets up everything (idempotent: a second run does no work),
# `make test` runs the test suite (installing first if needed).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMPS := $(VENV)/.lowssl-stamps

# The values a user gives the targets below (paths, names, lists) reach the recipes as environment
# variables, read there as "$$NAME": the shell never parses them as text, so a CKPT of
# 'dir`id`/ck.pth' is a file name, not a command. $(value ...) keeps make itself from expanding a
# '$(shell ...)' in a value given on the command line or in the environment. (PYTHON and PY name
# programs to run, as CC does.)
USER_VALUES := CKPT FORMAT PROTOCOLS QUICK IMAGENET GPUS SCALE SEEDS NNODES RDZV IMAGES EPOCHS JOBS
$(foreach name,$(USER_VALUES),$(if $(filter command line environment,$(origin $(name))),$(eval override $(name) := $$(value $(name)))))

.PHONY: install test lint clean-venv reproduce-table5 reproduce-gains bench evaluate-checkpoint figures

install: $(STAMPS)/deps $(STAMPS)/detectron2 $(STAMPS)/fashion-mnist

$(PY):
	$(PYTHON) -m venv $(VENV)

# lowssl itself (editable) with its dev, detection and cluster extras, at the tested versions of
# constraints.txt (pyproject.toml holds the ranges). torch/torchvision come from this machine's
# local files through plain pip (see README, "Set-up").
$(STAMPS)/deps: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,detection,cluster]'
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/detectron2: tools/install_detectron2.sh $(STAMPS)/deps
	PYTHON=$(PY) tools/install_detectron2.sh
	@touch $@

$(STAMPS)/fashion-mnist: tools/install_fashion_mnist.sh
	tools/install_fashion_mnist.sh
	@mkdir -p $(STAMPS) && touch $@

# pytest exits 5 when it collected no tests: a suite that tests nothing fails, with a message.
test: install
	@$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Table 5 at a chosen scale: SCALE=tiny (default without IMAGENET: Fashion-MNIST, 2 CPU cores) or
# SCALE=paper IMAGENET=/path/to/imagenet [GPUS=8] (the paper's configs through torchrun); SEEDS=N (default 3 tiny, 1 paper);
# several machines: NNODES=N RDZV=HOST:PORT (torchrun c10d rendezvous on the first), run on every machine.
IMAGENET ?=
GPUS     ?= 8
SCALE    ?= $(if $(IMAGENET),paper,tiny)
reproduce-table5: install
	$(PY) -m lowssl.results.reproduce table5 --scale "$$SCALE" --gpus "$$GPUS" $${IMAGENET:+--imagenet "$$IMAGENET"} $${SEEDS:+--seeds "$$SEEDS"} $${NNODES:+--nnodes "$$NNODES"} $${RDZV:+--rdzv-endpoint "$$RDZV"}

# The recipe's gain as the paper reports it (Table 2: DINO / SwAV / MoCo-v2* on MobileNetV2, Table 3's
# ResNet18 row) at tiny scale: paired ours - baseline over seeds, beside the paper's gains.
#   make reproduce-gains [IMAGES=2000] [EPOCHS=1] [SEEDS=3]
reproduce-gains: install
	$(PY) -m lowssl.results.gains $${IMAGES:+--images "$$IMAGES"} $${EPOCHS:+--epochs "$$EPOCHS"} $${SEEDS:+--seeds "$$SEEDS"}

# The view-sampling sweeps of Figs. 1-3 (PNG + CSV under results/figures/<scale>/):
#   make figures [SEEDS=2] [JOBS=<usable cores>] (tiny: ~54 min on 2 cores, docs/tiny-scale.md)
figures: install
	$(PY) -m lowssl.results.figures --scale "$$SCALE" --gpus "$$GPUS" $${IMAGENET:+--imagenet "$$IMAGENET"} $${SEEDS:+--seeds "$$SEEDS"} $${JOBS:+--jobs "$$JOBS"}

# Any checkpoint through the chosen stages, then the leaderboard. CKPT is a file, or a released
# checkpoint's name (python -m lowssl.released list; docs/released.md), fetched into the cache:
#   make evaluate-checkpoint CKPT=path|name [FORMAT=auto] [PROTOCOLS=linear,knn,semisup,detection] [QUICK=1]
#   (QUICK=1: smaller probe subsets, fewer fine-tuning evaluation images and detection iterations)
FORMAT    ?= auto
PROTOCOLS ?= linear,knn,semisup,detection
evaluate-checkpoint: install
	@test -n "$$CKPT" || { echo "usage: make evaluate-checkpoint CKPT=path|name [FORMAT=auto] [PROTOCOLS=...] (names: python -m lowssl.released list)" >&2; exit 2; }
	$(PY) -m lowssl.results.evaluate_checkpoint "$$CKPT" --format "$$FORMAT" --protocols "$$PROTOCOLS" $${QUICK:+--quick}

# Benchmarks (not tests): JSON + a markdown summary under benchmarks/results/.
bench: install
	$(PY) -m lowssl.benchmarks.run

clean-venv:
	rm -rf $(VENV)

# Exported last: an export of a variable not yet set defines it empty, and the ?= defaults above
# would then never apply.
export $(USER_VALUES)
