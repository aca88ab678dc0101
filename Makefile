# The two commands of the quick start: `make run` and `make test`. Both install what is
# missing into .venv and start RabbitMQ and Redis when none is reachable.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install services run test test-faults chaos bench-pipeline bench-planner bench-worker loadtest lock schema clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[models,dev]'
	touch $(STAMP)

services:
	bash scripts/ensure_services.sh

run: install services
	$(VENV)/bin/hadis serve all

test: install services
	$(PY) -m pytest -q -m "not slow"

# Fault tests: kill -9 each service, SIGTERM, restart RabbitMQ and Redis, under load (minutes).
test-faults: install services
	$(PY) -m pytest -q -m slow

# Random kill -9 of services under load; last line lost=<n> duplicated=<n> failed=<n> of <submitted>.
chaos: install services
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

bench-pipeline: install services
	$(PY) scripts/bench_pipeline.py

# Bare generation loop vs queue -> worker -> store, tiny on the CPU and emulated; last line worker_efficiency.
bench-worker: install services
	$(PY) scripts/bench_worker.py

bench-planner: install
	$(PY) scripts/bench_planner.py

# Locust against a running stack (default: make run's): a 60 s trace; reports in out/loadtest/.
loadtest: install
	bash scripts/loadtest.sh $(LOADTEST_ARGS)

# The pinned requirements of the container images, from this venv.
lock: install
	$(PY) docker/lock.py

schema: install
	$(VENV)/bin/hadis schema > docs/job.schema.json

clean:
	rm -rf $(VENV) .pytest_cache
