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
# The torch build `make setup` installs (torch 2.13.0 of requirements.lock in every case):
#   TORCH_CUDA=     (empty) the default index's wheel: CUDA 12.x on Linux x86-64 from PyPI, whatever lies on disk here
#   TORCH_CUDA=cu126 | cu128 | cu130 | cpu   the wheel built for that CUDA (or none) from $(TORCH_INDEX)/<build>
# Pick the CUDA build the GPU nodes' driver supports (`nvidia-smi` on a node: "CUDA Version"), then check a node with
# `srun --gpus=1 make gpu-check GPUCHECK=--node`.  Changing it reinstalls torch; the build is in $(VENV)/torch-build
# and every shard (v_torch, torch_cuda).
TORCH_CUDA ?=
TORCH_INDEX ?= https://download.pytorch.org/whl
TORCH_PIN := $(shell sed -n 's/^torch==//p' requirements.lock)
TORCH_WANT := $(VENV)/.torch-cuda

.PHONY: FORCE help setup hosts demo demo-full tune drift dry-run run sweep fetch status resume merge summary report test test-fast \
        bench bench-smoke bench-compare gpu-check mutate lint slurm-up slurm-down clean spec-doc demo-llm

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

# rewritten only when TORCH_CUDA changes, so that a change reinstalls torch and nothing else does
$(TORCH_WANT): FORCE
	@case "$(TORCH_CUDA)" in ""|cpu|cu[0-9][0-9]|cu[0-9][0-9][0-9]|rocm[0-9]*) ;; \
	 *) echo "error: TORCH_CUDA=$(TORCH_CUDA): expected cu126, cu128, cu130, cpu (or empty: the default index)" >&2; exit 2;; esac
	@mkdir -p $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != "build=$(TORCH_CUDA)" ]; then echo "build=$(TORCH_CUDA)" > $@; fi

$(STAMP): requirements.lock requirements-data.lock pyproject.toml $(TORCH_WANT)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ "$$(cat $(VENV)/.torch-installed 2>/dev/null)" != "build=$(TORCH_CUDA)" ]; then \
	  $(BIN)/python -m pip uninstall -q -y torch 2>/dev/null; \
	  if [ -n "$(TORCH_CUDA)" ]; then \
	    echo "torch $(TORCH_PIN), build $(TORCH_CUDA), from $(TORCH_INDEX)/$(TORCH_CUDA)"; \
	    $(BIN)/python -m pip install -q "torch==$(TORCH_PIN)" --index-url $(TORCH_INDEX)/$(TORCH_CUDA) \
	      --extra-index-url https://pypi.org/simple || exit 1; \
	  fi; \
	  echo "build=$(TORCH_CUDA)" > $(VENV)/.torch-installed; \
	fi
	$(BIN)/python -m pip install -q -r requirements.lock
	@set -o pipefail; $(BIN)/python -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda or "none (a CPU build)")' | tee $(VENV)/torch-build
	$(BIN)/python -m pip install -q --no-deps -r requirements-data.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP) ## create .venv with the pinned stack (reused when up to date); TORCH_CUDA=cu126|cu128|cu130|cpu picks the torch build

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

REF    ?=
ONLY   ?= train pack overhead
ROUNDS ?= 3
bench-compare: $(STAMP) ## REF=<commit>: ONLY's benchmarks on REF and HEAD, alternating fresh processes (ROUNDS each), each figure's change with its range
	@test -n "$(REF)" || { echo "usage: make bench-compare REF=<commit> [ONLY='train pack overhead'] [ROUNDS=3]" >&2; exit 2; }
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benches.compare $(REF) --only $(ONLY) --rounds $(ROUNDS)

gpu-check: $(STAMP) ## for a GPU node (srun --gpus=1 make gpu-check): a node line (driver, torch build, bf16; GPUCHECK=--node: only it), then MiniLM, T5-v1.1-base, 0.5B Qwen2 shapes x 4 techniques on their study precision path: samples/s vs Trainer, MFU, peaks, ported dtypes, a pack through runner.execute (exit 2 without CUDA; GPUCHECK=--tiny on CPU)
	$(BIN)/python -m benches.gpu_check $(GPUCHECK)

mutate: $(STAMP) ## mutation check of the guarantee modules (~40 min on 2 cores; not CI): killed/survived per module, survivors; score into BENCHMARKS.md. MUTATE='--module shards' narrows it
	OMP_WAIT_POLICY=PASSIVE nice -n 19 $(BIN)/python -m benches.mutate --write $(MUTATE)

spec-doc: $(STAMP) ## regenerate the spec reference in docs/spec.md from pipeline/spec.py (a test fails when it is stale)
	$(BIN)/python -m pipeline.specdoc
