#!/usr/bin/env bash
# `make test`: the unit tier and the integration tier side by side, as CI's lanes run beside each other
# (each test in a namespace of its own; neither stops a server the other uses). Most of the integration
# tier waits on its services, so the unit tier's CPU work fits in its waits. The unit tier's output is
# printed after the integration tier's; the exit status is 1 when either failed.
#     PY=.venv/bin/python bash scripts/test_tiers.sh [pytest options]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MARK="not deploy and not faults and not hostile"
unit_log=$(mktemp -t hadis-unit-XXXXXX.log)
"$PY" -m pytest -q -m "$MARK" --ignore=tests/integration "$@" > "$unit_log" 2>&1 &
unit=$!
"$PY" -m pytest -q -m "$MARK" tests/integration "$@"
integration=$?
wait "$unit"
unit_status=$?
echo "---- the unit tier (tests/ outside tests/integration) ----"
cat "$unit_log"
rm -f "$unit_log"
echo "make test: integration tier exit $integration, unit tier exit $unit_status"
[ "$integration" -eq 0 ] && [ "$unit_status" -eq 0 ]
