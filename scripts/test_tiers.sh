#!/usr/bin/env bash
# `make test`: the unit and integration tiers (every test outside tests/deploy, tests/faults and
# tests/hostile) in one pytest run, whole files handed to two pytest-xdist workers (--dist loadfile:
# a module's stack and fixtures stay in one process), the integration files first (tests/conftest.py).
# Alone on this machine kind: 464 s and 603 CPU-s, against 448 s and 760 CPU-s with three workers,
# which oversubscribed the two cores; in CI before, the two tiers side by side took 715 s (unit) and
# 970 s (integration), the one waiting on the other's end. HADIS_TEST_WORKERS sets the workers (0: none).
#     PY=.venv/bin/python bash scripts/test_tiers.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${HADIS_TEST_WORKERS:-2}
MARK="not deploy and not faults and not hostile"
if [ "$WORKERS" -gt 0 ]; then
    exec "$PY" -m pytest -q -n "$WORKERS" --dist loadfile -m "$MARK" tests "$@"
fi
exec "$PY" -m pytest -q -m "$MARK" tests "$@"
