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

.PHONY: setup demo test bench clean-results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The embedded comparison on the offline `sentiment` task: builds the task once (cached), trains
# each offline algorithm at its default setting, evaluates, and prints the table.
demo: setup
	$(BENCH) run --algo sft --task sentiment --results $(RESULTS)
	$(BENCH) run --algo preferred-ft --task sentiment --results $(RESULTS)
	$(BENCH) run --algo unlikelihood --task sentiment --results $(RESULTS)
	$(BENCH) run --algo dpo --task sentiment --results $(RESULTS)
	$(BENCH) table --task sentiment --results $(RESULTS)

test: setup
	$(VENV)/bin/pytest -q tests

# Speed comparisons against peers (TRL, transformers); ratios, never CI gates.
bench: setup
	$(VENV)/bin/pytest -q benchmarks --benchmark-enable -s

# The DPO paper's sentiment grid (DPO beta, PPO and PPO-GT target KL, unlikelihood alpha, best-of-N
# N, SFT, preferred-FT; 3 seeds; intermediate checkpoints on the frontier), then its report.
# Hours of compute: not part of CI. Interrupted? Run it again: complete runs are skipped.
# On a Slurm cluster: make paper SWEEP_FLAGS="--dispatch submitit --executor gpus_per_node=1"
.PHONY: paper
paper: setup
	$(BENCH) sweep --task sentiment --preset paper --results $(RESULTS) $(SWEEP_FLAGS)
	$(BENCH) report --task sentiment --results $(RESULTS) --out reports/sentiment
