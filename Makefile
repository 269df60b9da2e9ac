# ptq-eval: common flows. Every target creates/uses .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LADDER := tasks/ladders/demo

.PHONY: install test demo ladder lint clean bench-gptq fit

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ptq_eval tests

demo: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo.yaml --report-dir reports/demo

# Scaling-law fits of a study's stored results (run the study first): make fit STUDY=tasks/demo.yaml
STUDY ?= tasks/demo.yaml
fit: $(STAMP)
	$(BIN)/ptq-eval fit $(STUDY) --budget 0.05 --params 1e5 --bits 4

# Retrain the committed demo ladder from scratch (deterministic for its seed; ~15 min on 2 cores).
ladder: $(STAMP)
	rm -rf $(LADDER)
	$(BIN)/ptq-eval ladder train --preset demo --out $(LADDER) --threads 2

# Our GPTQ beside GPTQModel 7.6.0 (a throwaway venv; never a project dependency) -> reports/bench/gptq.md
BENCH_GPTQ_VENV := .venv-bench-gptq
bench-gptq:
	$(PYTHON) -m venv $(BENCH_GPTQ_VENV)
	$(BENCH_GPTQ_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_GPTQ_VENV)/bin/pip install --quiet gptqmodel==7.6.0 -e .
	GPTQMODEL_CPU_WORKERS=2 $(BENCH_GPTQ_VENV)/bin/python tests/bench/gptq_peers.py --out reports/bench/gptq.md

clean:
	rm -rf $(VENV) runs reports
