#!/usr/bin/env bash
# `make loadtest`: replay a trace with Locust, headless, against a stack that is already running
# (`make run` in another terminal, or `docker compose up`), bounded in time. Writes
# $LOADTEST_OUT/{locust_stats.csv, locust_stats_history.csv, locust_failures.csv, report.html,
# summary.json} and exits non-zero when a job failed, expired or was lost (or none was submitted).
#
#   LOADTEST_TRACE     arrival_ms,prompt_id file (default: loadtest/traces/maf-peak-60s.csv, 60 s, 90 jobs)
#   LOADTEST_OUT       report folder (default: out/loadtest, or out/loadtest-http through the api)
#   LOADTEST_RUN_TIME  hard bound of the whole run (default: 300s; the test ends by itself once
#                      the trace is replayed and every job has finished or timed out)
# Further arguments go to locust, e.g. `bash scripts/loadtest.sh --namespace exp1 --slo 30`.
# The broker, store and namespace come from HADIS_AMQP_URL, HADIS_REDIS_URL, HADIS_NAMESPACE.
#
# Through the HTTP api instead of AMQP: `--http` (or `--via http`, or HADIS_LOADTEST_VIA=http, or
# `--http-route mixed`: the api's features mixed, loadtest/mixed.py), at
# HADIS_API_URL (default http://127.0.0.1:8080) with the key HADIS_API_KEY. Without a key this
# script makes one for the tenant `loadtest` with limits no trace reaches (in the store of
# HADIS_REDIS_URL and HADIS_NAMESPACE, the stack's) and revokes it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
HADIS=${HADIS:-.venv/bin/hadis}

via=${HADIS_LOADTEST_VIA:-amqp}
previous=""
for arg in "$@"; do
  case "$arg" in
    --http|--via=http|HttpJobUser) via=http ;;
    --via=amqp|JobUser) via=amqp ;;
    --http-route=mixed) via=http ;;
    *) [ "$previous" = "--via" ] && via=$arg
       [ "$previous" = "--http-route" ] && [ "$arg" = mixed ] && via=http ;;
  esac
  previous=$arg
done

# An `if`, not `$([ "$via" = http ] && echo -http)`: under set -e that substitution fails on the AMQP path.
default_out=out/loadtest
if [ "$via" = http ]; then default_out=out/loadtest-http; fi
OUT=${LOADTEST_OUT:-$default_out}
mkdir -p "$OUT"

key_id=""
if [ "$via" = http ] && [ -z "${HADIS_API_KEY:-}" ]; then
  created=$("$HADIS" api-key create --tenant loadtest --rate 100000 --burst 100000 --max-active 1000000 \
    --image-mb 1000000)
  HADIS_API_KEY=$(printf '%s' "$created" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["key"])')
  key_id=$(printf '%s' "$created" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["key_id"])')
  export HADIS_API_KEY
  echo "loadtest: made api key $key_id for tenant loadtest (revoked at the end)" >&2
fi

revoke() { [ -n "$key_id" ] && "$HADIS" api-key revoke "$key_id" >/dev/null || true; }
trap revoke EXIT

"$PYTHON" -m locust -f loadtest/locustfile.py --headless --only-summary \
  --trace "${LOADTEST_TRACE:-loadtest/traces/maf-peak-60s.csv}" \
  --run-time "${LOADTEST_RUN_TIME:-300s}" \
  --csv "$OUT/locust" --html "$OUT/report.html" --summary "$OUT/summary.json" "$@"
