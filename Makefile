# ptq-eval: common flows. Every target creates/uses .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LADDER := tasks/ladders/demo

.PHONY: install test demo demo-llama ladder lint clean bench-gptq bench-gptq-llmcompressor fit gate report report-check compare \
	demo-lm-eval demo-sequential demo-shared-hessians demo-ray demo-formats bench-formats ladder-wide bench-eval bench-fit bench-fit-speed bench-scale bench stress \
	gpu-check gpu-check-prepare bench-gptq-shared bench-kld demo-methods bench-awq bench-rotation bench-artifacts bench-llama-cpp demo-kv bench-kv bench-kv-cost

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray,artifacts]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ptq_eval tests

demo: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo.yaml --report-dir reports/demo
	$(BIN)/ptq-eval report tasks/demo.yaml --out reports/demo

# The demo's grid on the Llama-architecture reference ladder -> reports/demo-llama/
demo-llama: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo-llama.yaml --report-dir reports/demo-llama
	$(BIN)/ptq-eval report tasks/demo-llama.yaml --out reports/demo-llama

# Perplexity beside lm-eval tasks (a local rolling-perplexity task, ARC-Easy from $PTQ_EVAL_DATA) on the demo
# ladder, RTN at 3/4/8 bits: δ with paired CIs for every metric -> reports/demo-lm-eval/
demo-lm-eval: $(STAMP)
	test -f "$(PTQ_EVAL_DATA)/eval/arc_easy.jsonl" || (echo "set PTQ_EVAL_DATA to the folder holding eval/arc_easy.jsonl" && false)
	$(BIN)/ptq-eval run tasks/demo-lm-eval.yaml --report-dir reports/demo-lm-eval

# GPTQ calibrated block by block (default) beside layer-sequential, 3 and 4 bits, on the demo ladder; the block jobs
# are the demo's own (same keys, same store), so run make demo first to reuse them
demo-sequential: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo-sequential.yaml --store runs/demo.sqlite --report-dir reports/demo-sequential

# GPTQ with every Hessian from one full-precision pass per checkpoint (sequential: none) beside the sequential
# default, 3 and 4 bits, per channel and group 32; the default's jobs are the demo's own (run make demo first)
demo-shared-hessians: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo-shared-hessians.yaml --store runs/demo.sqlite --report-dir reports/demo-shared-hessians

# The wide ladder (tasks/ladders/wide.yaml) trained on a GPU, then its study (tasks/wide.yaml) -> reports/ladders/wide/
# (needs PTQ_EVAL_DATA with tokenizers/gpt2; not committed: ladders/ is large)
ladder-wide: $(STAMP)
	$(BIN)/ptq-eval ladder train --preset wide --device cuda --out ladders/wide
	$(BIN)/ptq-eval run tasks/wide.yaml --report-dir reports/ladders/wide
	$(BIN)/ptq-eval report tasks/wide.yaml --out reports/ladders/wide

# Number formats (INT4 per channel and g32, FP4 e2m1 g32, MXFP4, NVFP4, FP8 e4m3; RTN and GPTQ) on the demo
# ladder: γ_D per format and which degrades least at D/N 320 -> reports/demo-formats/
demo-formats: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo-formats.yaml --report-dir reports/demo-formats
	$(BIN)/ptq-eval report tasks/demo-formats.yaml --out reports/demo-formats

# Methods: RTN, GPTQ, AWQ, RTN and GPTQ after a Hadamard rotation, 3 and 4 bits, per channel and g32, on the
# GPT-NeoX and the Llama demo ladders: γ_D per method, which grows slowest, which loses least at D/N 320
# -> reports/demo-methods/, reports/demo-methods-llama/ (the RTN and GPTQ jobs are make demo's and make
# demo-llama's own: run in their stores, so either order reuses them)
demo-methods: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo-methods.yaml --store runs/demo.sqlite --report-dir reports/demo-methods
	$(BIN)/ptq-eval report tasks/demo-methods.yaml --store runs/demo.sqlite --out reports/demo-methods
	$(BIN)/ptq-eval run tasks/demo-methods-llama.yaml --store runs/demo-llama.sqlite --report-dir reports/demo-methods-llama
	$(BIN)/ptq-eval report tasks/demo-methods-llama.yaml --store runs/demo-llama.sqlite --out reports/demo-methods-llama

# KV cache alone (int 8/4/3 asymmetric per token, fp8 per layer), activations alone (int 8/6/4 per token), W8A8
# and W4A8 (RTN), RTN weights alone, on the GPT-NeoX and the Llama demo ladders: each component's law with P its
# own bits, whose damage grows fastest with D/N -> reports/demo-kv/, reports/demo-kv-llama/
demo-kv: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo-kv.yaml --store runs/demo-kv.sqlite --report-dir reports/demo-kv
	$(BIN)/ptq-eval report tasks/demo-kv.yaml --store runs/demo-kv.sqlite --out reports/demo-kv
	$(BIN)/ptq-eval run tasks/demo-kv-llama.yaml --store runs/demo-kv-llama.sqlite --report-dir reports/demo-kv-llama
	$(BIN)/ptq-eval report tasks/demo-kv-llama.yaml --store runs/demo-kv-llama.sqlite --out reports/demo-kv-llama

# The demo study on a local Ray instance (2 CPUs: one checkpoint group per CPU), into its own store
demo-ray: $(STAMP)
	$(BIN)/ptq-eval run tasks/demo.yaml --executor ray --ray-cpus 2 --store runs/demo-ray.sqlite --report-dir reports/demo-ray

# Scaling-law fits of a study's stored results (run the study first): make fit STUDY=tasks/demo.yaml
STUDY ?= tasks/demo.yaml
fit: $(STAMP)
	$(BIN)/ptq-eval fit $(STUDY) --budget 0.05 --params 1e5 --bits 4

# Markdown + self-contained HTML report of a study's stored results: make report STUDY=tasks/demo.yaml
report: $(STAMP)
	$(BIN)/ptq-eval report $(STUDY)

# The report as a reader sees it: headless Chromium (Debian's package, installed if missing) renders it to
# reports/<study>/report.png and the check fails if a figure or table row is missing.
report-check: $(STAMP)
	command -v chromium > /dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/ptq-eval report $(STUDY) --screenshot

# Two studies side by side (make compare A=a.yaml B=b.yaml), or two checkpoints of one
# (make compare A=tasks/demo.yaml CHECKPOINTS="n100k/tpp10 n100k/tpp320")
compare: $(STAMP)
	$(BIN)/ptq-eval compare $(A) $(B) $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS))

# Release gate against tasks/release-policy.yaml. `make gate` gates a lightly trained demo checkpoint (must pass,
# exit 0) and an over-trained one (must fail, exit 1), after making sure the demo study's results (which the
# policy's forecast fits on) are stored; `make gate CHECKPOINT=DIR [POLICY=FILE]` gates one (fails unless it passes).
POLICY ?= tasks/release-policy.yaml
gate: $(STAMP)
ifdef CHECKPOINT
	$(BIN)/ptq-eval gate $(CHECKPOINT) --policy $(POLICY)
else
	$(BIN)/ptq-eval run tasks/demo.yaml > /dev/null
	$(BIN)/ptq-eval gate $(LADDER)/n100k/tpp10 --policy $(POLICY); test $$? -eq 0
	$(BIN)/ptq-eval gate $(LADDER)/n100k/tpp320 --policy $(POLICY); test $$? -eq 1
endif

# Retrain the committed reference ladders from their configs in tasks/ladders/ (deterministic for their seed;
# on 2 CPU cores about 40 min for demo, 45 each for demo-cosine and demo-llama at one thread).
LADDERS := demo demo-cosine demo-llama
ladder: $(STAMP)
	for name in $(LADDERS); do \
	  rm -rf tasks/ladders/$$name && \
	  $(BIN)/ptq-eval ladder train --config tasks/ladders/$$name.yaml --out tasks/ladders/$$name --threads 2 || exit 1; \
	done

# Our GPTQ beside GPTQModel 7.6.0 (a throwaway venv; never a project dependency) -> reports/bench/gptq.md
BENCH_GPTQ_VENV := .venv-bench-gptq
bench-gptq:
	$(PYTHON) -m venv $(BENCH_GPTQ_VENV)
	$(BENCH_GPTQ_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_GPTQ_VENV)/bin/pip install --quiet gptqmodel==7.6.0 -e .
	GPTQMODEL_CPU_WORKERS=2 $(BENCH_GPTQ_VENV)/bin/python tests/bench/gptq_peers.py --out reports/bench/gptq.md

# KV-cache and activation rounding against the script's own arithmetic (every layer through the cache, whole-model
# loss) and W8A8 against torchao's Int8DynamicActivationInt8WeightConfig, in bench-formats' throwaway torchao venv
# (under a minute on the 2-core CPU when idle) -> reports/bench/kv_activations.md
bench-kv:
	$(PYTHON) -m venv $(BENCH_FORMATS_VENV)
	$(BENCH_FORMATS_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_FORMATS_VENV)/bin/pip install --quiet torchao==0.18.0 -e .
	nice -n 10 $(BENCH_FORMATS_VENV)/bin/python tests/bench/kv_activations.py --out reports/bench/kv_activations.md

# What rounding activations and the KV cache as the model runs adds to a perplexity eval (Pythia-14m's shape,
# 2 threads) -> reports/bench/kv_cost.md
bench-kv-cost: $(STAMP)
	nice -n 10 $(BIN)/python tests/bench/kv_cost.py --out reports/bench/kv_cost.md

# Our GPTQ beside llm-compressor 0.14.0.1 (a throwaway venv: it pins transformers <= 5.17, so it is never a
# project dependency) -> reports/bench/gptq_llmcompressor.md
BENCH_LLMC_VENV := .venv-bench-llmc
bench-gptq-llmcompressor:
	$(PYTHON) -m venv $(BENCH_LLMC_VENV)
	$(BENCH_LLMC_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_LLMC_VENV)/bin/pip install --quiet torch==2.13.0 llmcompressor==0.14.0.1 -e .
	$(BENCH_LLMC_VENV)/bin/python tests/bench/gptq_peers.py --peer llmcompressor --out reports/bench/gptq_llmcompressor.md

# Our number formats beside torchao 0.18's MX and NVFP4 reference quantizers, value for value (a throwaway venv;
# never a project dependency) -> reports/bench/formats.md
BENCH_FORMATS_VENV := .venv-bench-formats
bench-formats:
	$(PYTHON) -m venv $(BENCH_FORMATS_VENV)
	$(BENCH_FORMATS_VENV)/bin/pip install --quiet torch==2.13.0
	$(BENCH_FORMATS_VENV)/bin/pip install --quiet torchao==0.18.0 -e .
	$(BENCH_FORMATS_VENV)/bin/python tests/bench/formats_reference.py --data-dir "$(DATA_DIR)" --out reports/bench/formats.md

# The sweep's ten GPTQ configs of a Pythia-160m-shaped model under sequential: none, each alone and all from one
# solve (seconds, identical weights; about 13 minutes on the 2-core CPU) -> reports/bench/gptq_shared.md
bench-gptq-shared: $(STAMP)
	OMP_NUM_THREADS=2 nice -n 5 $(BIN)/python tests/bench/gptq_shared.py --size 160m --samples 8 --length 512

# Our rolling-window perplexity beside lm-eval's loglikelihood_rolling (tokens/s, peak memory, agreement) on a demo
# checkpoint, 100k+ tokens of the reference corpus and of WikiText-2 when DATA_DIR holds it -> reports/bench/eval.md;
# then on a 50k-vocabulary model, where logits dominate memory -> reports/bench/eval_wide.md; then lm-eval tasks
# (ARC-Easy, HellaSwag, PIQA, LAMBADA, WinoGrande) through our backend beside HFLM -> reports/bench/eval_tasks.md
DATA_DIR ?= $(PTQ_EVAL_DATA)
bench-eval: $(STAMP)
	nice -n 10 $(BIN)/python tests/bench/eval_speed.py $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --out reports/bench/eval.md
	nice -n 10 $(BIN)/python tests/bench/eval_speed.py --wide-vocabulary --tokens 30000 --batch-size 8 \
		--out reports/bench/eval_wide.md
	nice -n 10 $(BIN)/python tests/bench/task_speed.py --data-dir $(or $(DATA_DIR),$(SHARED_DATA)) \
		--out reports/bench/eval_tasks.md

# KLD, top-1 agreement and Δp against float64 references (a demo checkpoint, a 50k-vocabulary model), and their
# cost with and without them (2 threads) -> reports/bench/kld.md
bench-kld: $(STAMP)
	nice -n 10 $(BIN)/python tests/bench/kld.py --out reports/bench/kld.md

# llama.cpp's own quantizer (built from the source llama-cpp-python 0.3.36 vendors: a throwaway build, never a
# dependency) against the simulation of its types -> reports/bench/llama_cpp.md
LLAMA_CPP := .bench-llama-cpp
LLAMA_CPP_VERSION := 0.3.36
$(LLAMA_CPP)/build/bin/llama-quantize:
	mkdir -p $(LLAMA_CPP)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(LLAMA_CPP)
	tar xzf $(LLAMA_CPP)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_CPP)
	cmake -S $(LLAMA_CPP)/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp -B $(LLAMA_CPP)/build \
		-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
	cmake --build $(LLAMA_CPP)/build --target llama-quantize -j2

bench-llama-cpp: $(STAMP) $(LLAMA_CPP)/build/bin/llama-quantize
	nice -n 10 $(BIN)/python tests/bench/llama_cpp_peer.py --quantize $(LLAMA_CPP)/build/bin/llama-quantize \
		--out reports/bench/llama_cpp.md

# Quantized files (GGUF by the gguf package, compressed-tensors by its package, a GPTQ export) read back and
# paired with their bases beside the simulation of the same config -> reports/bench/artifacts.md
bench-artifacts: $(STAMP)
	nice -n 10 $(BIN)/python tests/bench/artifacts.py --out reports/bench/artifacts.md

# Bias and 95%-interval coverage of the fitter on synthetic data whose high-bit CIs reach zero, censored vs
# excluded (48 s on the 2-core machine with the batched fitter, 2026-12-06; 47 min before) -> reports/bench/fit_recovery.md
bench-fit: $(STAMP)
	mkdir -p reports/bench
	nice -n 10 $(BIN)/python tests/bench/fit_recovery.py --seeds 100 --resamples 200 | tee reports/bench/fit_recovery.md
	nice -n 10 $(BIN)/python tests/bench/break_recovery.py --seeds 30 --resamples 100 | tee reports/bench/break_recovery.md

# How long fits take as whole processes: `ptq-eval fit` cold and warm, a cold report, `make gate`, on the demo
# study (run make demo first; cold runs use copies of its store without estimates) -> reports/bench/fit_speed.md
bench-fit-speed: $(STAMP)
	$(BIN)/python tests/bench/fit_speed.py --runs 3 --out reports/bench/fit_speed.md

# What a full ladder study costs: per-job times and peak memory of Pythia-shaped GPT-NeoX models (random weights;
# 70m and 160m on CPU), extrapolated to a 6-size x 16-revision sweep over 1-8 workers -> reports/bench/scale.md.
# On a GPU: make bench-scale SCALE_ARGS="--device cuda --sizes 410m 1.4b 2.8b --eval-tokens 65536 --eval-len 2048
# --calibration 32 128 --calibration-len 2048"
SCALE_ARGS ?=
bench-scale: $(STAMP)
	OMP_NUM_THREADS=2 nice -n 10 $(BIN)/python tests/bench/scale.py $(SCALE_ARGS) --out reports/bench/scale.md

# Fault injection: a study SIGKILLed at 12 random moments resumes to the rows of an uninterrupted run
stress: $(STAMP)
	$(BIN)/python tests/bench/stress.py --kills 12

# Every benchmark (peers in throwaway venvs): speed and agreement tables under reports/bench/
bench: bench-eval bench-gptq bench-gptq-llmcompressor bench-awq bench-rotation bench-gptq-shared bench-formats bench-fit bench-fit-speed bench-kld bench-scale bench-artifacts

# The GPU path in one command (about 9 minutes on one H100/H200 by estimate, under the device's 10-minute call;
# run it first whenever a CUDA machine is at hand): CUDA tests, RTN/GPTQ weights CPU vs CUDA, GPTQ's fused column
# loop vs the eager one, GPTQ time per size, the stories260K study on both devices in float32 and bfloat16,
# evaluation speed (ours / lm-eval HFLM / bare forward), and last the sweep's cost (scale.py) -> reports/bench/gpu.md
# (rewritten after each section, so a run cut short keeps the sections before; GPU_CHECK_ARGS="--only GPTQ" runs
# only the sections with that word in their title). Without CUDA
# it runs its CPU parts and says what it skipped. A bare GPU machine has torch and transformers but no network:
# `make gpu-check-prepare` (here) copies what the check reads from ../shared/data and downloads the wheels it
# lacks into .gpu-check/ (about 30 MiB; carry it), and `make gpu-check` there installs them from it.
GPU_CHECK := .gpu-check
GPU_CHECK_DATA := models/stories260K-hf text/tinystories/tinystories_val_sample.txt text/gutenberg/war_and_peace.txt \
	tokenizers/gpt2/encoder.json tokenizers/gpt2/vocab.bpe eval/arc_easy.jsonl eval/piqa.jsonl eval/hellaswag/hellaswag_val.jsonl
GPU_CHECK_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	lm-eval==0.4.13 dill==0.4.1
SHARED_DATA ?= ../shared/data
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check-prepare:
	for path in $(GPU_CHECK_DATA); do mkdir -p $(GPU_CHECK)/data/$$(dirname $$path) && \
	  cp -r $(SHARED_DATA)/$$path $(GPU_CHECK)/data/$$path || exit 1; done
	chmod -R u+w $(GPU_CHECK)/data
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_CHECK)/wheels $(GPU_CHECK_WHEELS)

gpu-check:
	if [ -d $(GPU_CHECK)/wheels ] && ! $(GPU_PYTHON) -c "import pydantic, lm_eval" 2> /dev/null; then \
	  $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target $(GPU_CHECK)/site $(GPU_CHECK)/wheels/*.whl; fi
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(GPU_CHECK)/site PYTHONUNBUFFERED=1 $(GPU_PYTHON) tests/bench/gpu_check.py \
		--data $(GPU_CHECK)/data --out reports/bench/gpu.md $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs reports
