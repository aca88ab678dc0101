#!/usr/bin/env bash
# `make test`: the unit and integration tiers (every test outside tests/deploy, tests/faults and
# tests/hostile) in one pytest run, whole files handed to three pytest-xdist workers (--dist loadfile:
# a module's stack and fixtures stay in one process). Most of the integration tier waits on its
# services, so three workers on two cores finish it sooner than the two tiers side by side did
# (alone on this machine kind: 447 s for both, against 715 s for the unit tier and 970 s for the
# integration tier beside it in CI); tests/conftest.py starts the integration files first.
# HADIS_TEST_WORKERS sets the workers (0: none, the tests in this process).
#     PY=.venv/bin/python bash scripts/test_tiers.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${HADIS_TEST_WORKERS:-3}
MARK="not deploy and not faults and not hostile"
if [ "$WORKERS" -gt 0 ]; then
    exec "$PY" -m pytest -q -n "$WORKERS" --dist loadfile -m "$MARK" tests "$@"
fi
exec "$PY" -m pytest -q -m "$MARK" tests "$@"
