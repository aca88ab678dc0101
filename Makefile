# The two commands of the quick start: `make run` and `make test`. Both install what is
# missing into .venv and start RabbitMQ and Redis when none is reachable.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install services run test test-deploy ci test-hostile test-compose test-wheel test-wheel-extras test-faults test-cluster chaos soak drill bench-pipeline bench-api bench-planner bench-worker bench-simulator experiments simulations loadtest lock schema clean device-wheels

install: $(STAMP)

# Every command make runs writes bytecode for what it imports. With PYTHONDONTWRITEBYTECODE set (as in
# this machine kind's sessions) and the venv installed --no-compile (below), nothing ever wrote any:
# every process compiled what it imported from source. A tiny worker's model process spent 24 CPU-s
# importing torch and diffusers instead of 9, a service 2.8 instead of 0.8, and CI's time rose from
# 1,394 s to 1,815 s at the landing that added --no-compile.
unexport PYTHONDONTWRITEBYTECODE

# The venv is filled by uv (pip installs uv into it first, a 20 MB wheel): the same versions pip resolves,
# in 7 s of wall and 3 CPU-s from a warm cache (its files hard-linked from ~/.cache/uv) and 18 s cold,
# where pip took 94-117 CPU-s on CI's serial first step. uv compiles no bytecode (Python writes each
# module's the first time it is imported) and reads UV_INDEX_URL, UV_EXTRA_INDEX_URL and UV_FIND_LINKS,
# not pip's configuration: set those for a private index. UV= (empty) installs with pip instead.
UV ?= $(VENV)/bin/uv
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(UV),)
	$(PY) -m pip install --quiet 'pip>=21.3'
	$(PY) -m pip install --quiet --no-compile -e '.[serve,models,experiments,dev]'
else
	test -x $(UV) || $(PY) -m pip install --quiet 'uv>=0.5'
	$(UV) pip install --quiet --python $(PY) -e '.[serve,models,experiments,dev]'
endif
	touch $(STAMP)

services:
	bash scripts/ensure_services.sh

# make run: `hadis serve all` until Ctrl-C. When a `prometheus` binary is on PATH (or PROMETHEUS names one;
# PROMETHEUS= for none), the services also serve metrics from HADIS_METRICS_PORT (9100) on and a Prometheus on
# 127.0.0.1:PROMETHEUS_PORT (9090) scrapes them with docker/prometheus/'s rules and alerts (scripts/run.sh;
# docs/observability.md). Without one, nothing changes.
PROMETHEUS ?= $(shell command -v prometheus 2>/dev/null)
PROMETHEUS_PORT ?= 9090
run: install services
	PROMETHEUS="$(PROMETHEUS)" PROMETHEUS_PORT="$(PROMETHEUS_PORT)" VENV="$(VENV)" bash scripts/run.sh

# The tiers are the folders of tests/ (tests/conftest.py marks each test with its folder's tier):
# `make test` runs unit and integration (tests/*.py, policies, backends, experiments, integration);
# test-deploy, test-faults and test-hostile run the others; `make ci` runs them all as CI does. `make test`
# hands whole files to two pytest-xdist workers (scripts/test_tiers.sh; HADIS_TEST_WORKERS=0 for none);
# TEST_ARGS passes pytest options.
test: install services
	PY=$(PY) bash scripts/test_tiers.sh $(TEST_ARGS)

# The documented commands and artefacts as given (tests/deploy; a few minutes): make loadtest against make run's
# stack, the compose files and Dockerfiles, the HTTP, shell and Node examples, and the README's other make targets,
# shortened through the knobs below (tests/deploy/test_make_targets.py, about 3 minutes).
test-deploy: install services
	$(PY) -m pytest -q -m deploy tests/deploy

# What CI runs (.ci/run): lint and typecheck first, then the tiers in three lanes side by side
# (scripts/ci.py; each step's log in out/ci/, a table of their times at the end).
ci:
	bash .ci/run

# Issue 29's hostile tenants: the cases (pytest -m hostile tests/hostile), then the fairness run through
# `hadis serve all` on emulated GPUs: tenant B's load alone, then beside tenant A flooding at 20x its rate
# limit with n=10 at 2048x2048 (scripts/hostile.py; about 3 minutes). Last line:
# hostile cases=N passed=N; fairness B within_slo=X (alone Y) api_peak_mb=M lost=0; exit 1 when a case
# fails, a job is lost, X is over 1 pp below Y or the api's peak RSS is over its bound. HOSTILE_ARGS passes options.
test-hostile: install services
	$(PY) scripts/hostile.py $(HOSTILE_ARGS)

# What `pip install hadis` gives: the sdist and wheel built, the wheel alone installed into a fresh venv
# outside the checkout (no torch), then plan, simulate, schema, the client's imports, and submit against
# `hadis serve all` from this venv in a namespace of its own (about a minute).
test-wheel: install services
	$(PY) scripts/test_wheel.py

# The README's other installs: the sdist alone, and the wheel with [models] (torch from this machine's wheels;
# a tiny pipeline generates, the CLIP judge scores). About 3 minutes and 6 GB of disk, freed at the end.
test-wheel-extras: install
	$(PY) scripts/test_wheel.py --extras

# The compose stack for real (root, Debian): engine and stand-in base images when missing, project images,
# `docker compose --profile cpu up --wait`, load with docker kill of a worker, the judge and RabbitMQ and a
# Redis restart; last line compose_test healthy=<n>/<n> done=<n> of <n> lost=<n> (scripts/compose/).
test-compose: install
	PY=$(abspath $(PY)) bash scripts/compose/test_compose.sh

# Static checks, configured in pyproject.toml: ruff over the code, scripts and tests; mypy over shared/, services/, hadis/.
.PHONY: lint typecheck
lint: install
	$(VENV)/bin/ruff check shared services hadis scripts tests docker

# mypy's incremental cache lives outside the checkout (MYPY_CACHE_DIR), so that a clean clone (CI) starts warm.
typecheck: install
	MYPY_CACHE_DIR=$${MYPY_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/hadis-mypy} $(VENV)/bin/mypy

# Fault tests: kill -9 each service, SIGTERM, restart RabbitMQ and Redis, under load (minutes).
test-faults: install services
	$(PY) -m pytest -q -m faults tests/faults

# Redis with a replica and three Sentinels (the primary killed mid-write: what a failover loses, with and
# without WAIT), then three RabbitMQ nodes, Redis with Sentinel and two of each control-plane service, with
# the quorum leader's node, the Redis primary, a router, a judge and the planning controller killed under
# load (tests/faults/test_cluster.py; about 3 minutes; also part of test-faults).
# Last line: cluster_test nodes=3 kills=<n> done=<n> of <n> lost=<n> duplicated=<n>.
test-cluster: SHELL := /bin/bash
test-cluster: .SHELLFLAGS := -o pipefail -c
test-cluster: install services
	$(PY) -m pytest -q -s tests/faults/test_sentinel.py tests/faults/test_cluster.py 2>&1 | tee $(VENV)/test-cluster.log
	@grep '^cluster_test ' $(VENV)/test-cluster.log | tail -1

# Random kill -9 of services, a RabbitMQ restart and a kill -9 of the run's own Redis, under load (minutes);
# last line lost=<n> duplicated=<n> failed=<n> of <submitted>. CHAOS_ARGS passes options ("--jobs 20 --kills 2"
# for a short one). chaos, soak and drill restart the machine's RabbitMQ; to restart another, point
# HADIS_AMQP_URL at it and set RABBITMQCTL to the command that reaches it ("env HOME=DIR rabbitmqctl -n NODE").
chaos: install services
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

# Ten minutes of steady load, RabbitMQ restarted every two minutes; every job must end done.
# Last line lost=<n> duplicated=<n> failed=<n> of <submitted>. SOAK_ARGS="--minutes 2" for a short one
# (RABBITMQCTL: as for chaos).
soak: install services
	$(PY) scripts/soak.py $(SOAK_ARGS)

# The acceptance drill against `hadis serve all` (make run's stack): 400 jobs at 8/s, kill -9 of a service
# every 4 s, a broker restart; last line drill done=<n> of <n> lost=<n> duplicated=<n> ... kills=<n>.
# DRILL_ARGS passes options ("--jobs 24 --rate 4 --kill-every 2" for a short one; RABBITMQCTL: as for chaos).
drill: install services
	$(PY) scripts/drill.py $(DRILL_ARGS)

# The services' overhead against the raw broker, on asyncio and uvloop and with two routers and judges; last lines
# broker_use <ratio> and pipeline_jobs_per_s <n>. BENCH_ARGS="--profile out/profile" prints where each service's CPU goes;
# BENCH_ARGS="--jobs 300 --raw-messages 1000 --seconds 2" makes a short run.
bench-pipeline: install services
	$(PY) scripts/bench_pipeline.py $(BENCH_ARGS)

# The HTTP api's front door vs AMQP's (accepted jobs/s, added latency at 100 jobs/s) and bench-pipeline's rate, one run;
# last lines api_accept_jobs_per_s, amqp_accept_jobs_per_s, api_ratio, pipeline_jobs_per_s, http_hop_p50_ms and
# http_hop_p99_ms. BENCH_API_ARGS passes options ("--seconds 2 --paced-seconds 2 --pipeline-jobs 300": a short one).
bench-api: install services
	$(PY) scripts/bench_api.py $(BENCH_API_ARGS)

# Bare generation loop vs queue -> worker -> store, tiny on the CPU and emulated; last line worker_efficiency.
bench-worker: install services
	$(PY) scripts/bench_worker.py

# Wheels for scripts/device/profile.sh on a GPU machine of the device tool (Python 3.12 there).
device-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl -r scripts/device/carry.txt

# The planner's solve times, 16 and 1,024 GPUs at seven demands each; last lines worst p99 at <gpus> GPUs: <ms> ms.
# BENCH_PLANNER_ARGS passes options ("--calls 50": fewer solves per demand).
bench-planner: install
	$(PY) scripts/bench_planner.py $(BENCH_PLANNER_ARGS)

# The simulator at scale: 1,024 GPUs and trace_1to40qps at 64x its rate (about 495,000 jobs). The run goes to
# BENCH_SIMULATOR_OUT; BENCH_SIMULATOR_ARGS adds options of `hadis simulate` ("--head 10": the trace's first 10 s).
BENCH_SIMULATOR_OUT ?= out/bench-simulator
bench-simulator: install
	$(VENV)/bin/hadis simulate --trace traces/trace_1to40qps.txt --policy hadis --gpus 1024 --scale 64 \
		--profile paper-l40s-x10 --slo 6 --out $(BENCH_SIMULATOR_OUT) $(BENCH_SIMULATOR_ARGS) \
		| grep -E '"(submitted|lost|slo_violation_ratio|mean_fid|wall_s)"'

# The four compared policies on every trace through the real services on 16 emulated GPUs, each
# beside the simulator's run of the same and its band (differences.md: does each agree;
# shared/experiments/band.py): out/experiments/. About 7 minutes per
# run on the three 347 s traces, one run at a time (1.5 hours); trace_1_6qps is real time (58 min,
# 60 s SLO) at about 1 job/s, so its four runs go at once (an hour more):
# EXPERIMENT_TRACES="1to40 1to20 1to58" leaves it out. A run with a report.json is kept (rm to redo).
# EXPERIMENTS_OUT is the folder (default out/experiments); EXPERIMENTS_ARGS adds options of `hadis experiment`
# and `hadis simulate` to every run ("--head 15": the traces' first 15 s, tests/deploy/test_make_targets.py).
EXPERIMENT_TRACES ?= 1to40 1to20 1to58 1_6
EXPERIMENT_POLICIES ?= hadis,diffserve,hadis-paper,proteus
EXPERIMENTS_OUT ?= out/experiments
experiments: install services
	for t in $(EXPERIMENT_TRACES); do \
		if [ $$t = 1_6 ]; then setup="--profile paper-l40s --slo 60 --jobs 4"; else setup="--profile paper-l40s-x10 --slo 6"; fi; \
		for mode in simulate experiment; do \
			band=; if [ $$mode = simulate ]; then band=--band; fi; \
			$(PY) scripts/compare.py --mode $$mode --trace traces/trace_$${t}qps.txt $$setup --gpus 16 \
				--policies $(EXPERIMENT_POLICIES) --skip-done --out $(EXPERIMENTS_OUT)/trace_$${t}qps-$$mode $$band \
				$(EXPERIMENTS_ARGS) || exit 1; \
		done; \
		$(VENV)/bin/hadis compare $(EXPERIMENTS_OUT)/trace_$${t}qps-experiment \
			--against $(EXPERIMENTS_OUT)/trace_$${t}qps-simulate > /dev/null || exit 1; \
	done

# Every policy in the simulator, on both comparison traces and the held-out ones (minutes), into SIMULATIONS_OUT.
# SIMULATIONS_ARGS adds options of scripts/compare.py and `hadis simulate` to each trace's run
# ("--policies hadis,diffserve --head 20": two policies on the traces' first 20 s).
SIMULATIONS_OUT ?= out/simulations
simulations: install
	$(PY) scripts/compare.py --mode simulate --trace traces/trace_1to40qps.txt --profile paper-l40s-x10 \
		--gpus 16 --slo 6 --out $(SIMULATIONS_OUT)/trace_1to40qps $(SIMULATIONS_ARGS)
	$(PY) scripts/compare.py --mode simulate --trace traces/trace_1_6qps.txt --profile paper-l40s \
		--gpus 16 --slo 60 --out $(SIMULATIONS_OUT)/trace_1_6qps $(SIMULATIONS_ARGS)
	for t in 1to20 1to58; do $(PY) scripts/compare.py --mode simulate --trace traces/trace_$${t}qps.txt \
		--profile paper-l40s-x10 --gpus 16 --slo 6 --out $(SIMULATIONS_OUT)/heldout_$${t}qps $(SIMULATIONS_ARGS) \
		|| exit 1; done

# Locust against a running stack (default: make run's): a 60 s trace; reports in out/loadtest/.
# LOADTEST_ARGS=--http: the same trace through the HTTP api (a key made if HADIS_API_KEY is unset), out/loadtest-http/.
loadtest: install
	bash scripts/loadtest.sh $(LOADTEST_ARGS)

# The pinned requirements of the container images, from this venv.
lock: install
	$(PY) docker/lock.py

schema: install
	$(VENV)/bin/hadis schema > docs/job.schema.json

clean:
	rm -rf $(VENV) .pytest_cache
